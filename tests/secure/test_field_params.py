import numpy as np
import pytest

from secpc import (
    DEFAULT_MODULI,
    ParameterError,
    PrimeField,
    SecureParams,
    ValueBoundError,
    WrapAroundError,
    check_no_wraparound,
    dequantize,
    max_intermediate_magnitude,
    quantize,
)
from secpc.field import inv_mod, is_prime, lagrange_matrix, matmul_mod


def test_default_moduli_are_primes_below_2_31():
    assert all(is_prime(m) and m < 2**31 for m in DEFAULT_MODULI)
    assert not is_prime(2147483641) and not is_prime(15) and is_prime(2)


def test_crt_round_trip_extremes():
    f = PrimeField(DEFAULT_MODULI)
    values = np.array([0, 1, -1, f.max_signed, -f.max_signed, 2**60, -(2**60)], dtype=np.int64)
    assert np.array_equal(f.to_signed(f.from_int(values)), values)
    single = PrimeField((2147483647,))
    v = np.array([0, -5, single.max_signed, -single.max_signed])
    assert np.array_equal(single.to_signed(single.from_int(v)), v)


def test_matmul_mod_matches_python_ints():
    rng = np.random.default_rng(1)
    p = DEFAULT_MODULI[0]
    a = rng.integers(0, p, (5, 40))
    b = rng.integers(0, p, (40, 7))
    expected = [
        [sum(int(a[i, k]) * int(b[k, j]) for k in range(40)) % p for j in range(7)]
        for i in range(5)
    ]
    assert matmul_mod(a, b, p).tolist() == expected


def test_inverse_and_lagrange():
    p = DEFAULT_MODULI[1]
    x = np.arange(1, 1000)
    assert np.all(x * inv_mod(x, p) % p == 1)
    with pytest.raises(ZeroDivisionError):
        inv_mod(np.array([0, 1]), p)
    # Interpolating a degree-2 polynomial from 3 points gives its value elsewhere.
    src, dst = (1, 2, 3), (10, -4)
    m = lagrange_matrix(src, dst, p)
    poly = lambda z: (3 * z * z - 5 * z + 7) % p  # noqa: E731
    vals = np.array([poly(s) for s in src])
    assert (m @ vals % p).tolist() == [poly(d) for d in dst]


def test_random_is_in_range_and_varies():
    f = PrimeField(DEFAULT_MODULI)
    r = f.random((1000,))
    assert r.shape == (1000, 2) and np.all(r >= 0) and np.all(r < f.p)
    assert not np.array_equal(r, f.random((1000,)))
    small = PrimeField((11,))
    counts = np.bincount(small.random((11000,))[:, 0], minlength=11)
    assert counts.min() > 800  # uniform over all 11 values, no value missing


def test_quantize_round_trip_and_signs():
    params = SecureParams(scale_bits=10, value_bound=2.0)
    x = np.array([-2.0, -0.5, 0.0, 0.3, 1.999])
    v = quantize(x, params)
    assert v.shape == (5, 2)
    assert v[0, 0] > DEFAULT_MODULI[0] // 2  # negatives in the upper half
    assert np.max(np.abs(dequantize(v, params) - x)) <= 2.0**-11
    # A degree-2 result carries scale 2^(2 * scale_bits).
    assert dequantize(params.field.from_int(np.array([4 * 2**20])), params, degree=2)[0] == 4.0


def test_quantize_refuses_out_of_bound_and_nan():
    params = SecureParams(value_bound=1.0)
    with pytest.raises(ValueBoundError, match="value_bound"):
        quantize(np.array([0.5, 1.5]), params)
    with pytest.raises(ValueBoundError):
        quantize(np.array([np.nan]), params)


def test_max_intermediate_magnitude_formula():
    assert max_intermediate_magnitude(10, 1.0, 4, 3, 1) == 3 * 16
    assert max_intermediate_magnitude(10, 1.0, 4, 3, 2) == 10 * (2 * 3 * 16) ** 2
    with pytest.raises(ParameterError):
        max_intermediate_magnitude(10, 1.0, 4, 3, 3)


def test_wraparound_error_names_scale_bits():
    params = SecureParams(scale_bits=30, moduli=(2147483647,))
    with pytest.raises(WrapAroundError, match="scale_bits") as info:
        check_no_wraparound(64, 100, 2, params)
    assert info.value.parameter == "scale_bits"
    fitted = SecureParams(scale_bits=info.value.suggestion, moduli=(2147483647,))
    assert check_no_wraparound(64, 100, 2, fitted) <= fitted.field.max_signed


def test_wraparound_error_names_dim_when_no_scale_fits():
    params = SecureParams(scale_bits=0, value_bound=1000.0, moduli=(2147483647,))
    with pytest.raises(WrapAroundError) as info:
        params.check_no_wraparound(10_000, 1000, 2)
    assert info.value.parameter == "dim"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"t": 0},
        {"k": 1.5},
        {"scale_bits": -1},
        {"scale_bits": 41},
        {"value_bound": 0.0},
        {"value_bound": float("inf")},
        {"moduli": (15,)},
        {"moduli": (2**31 + 11,)},
        {"moduli": (7, 7)},
        {"moduli": (3, 5, 7)},
        {"moduli": (11,), "k": 3, "t": 3},
    ],
)
def test_params_validation(kwargs):
    with pytest.raises(ParameterError):
        SecureParams(**kwargs)


def test_thresholds():
    params = SecureParams(k=3, t=2)
    assert params.linear_threshold == 5
    assert params.quadratic_threshold == 9
    assert params.threshold(1) == 5 and params.threshold(2) == 9
    with pytest.raises(ParameterError):
        params.threshold(3)
