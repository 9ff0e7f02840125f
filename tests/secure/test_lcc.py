import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secpc import (
    MalformedMessageError,
    NotEnoughAnswersError,
    ParameterError,
    SecureParams,
    blinding_shares,
    coded_scaled_distances,
    coded_sum,
    coded_weighted_sum,
    decode,
    decode_slices,
    quantize,
    share,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plain_distances(q, clusters):
    return np.array(
        [[int(((len(c) * q[i] - q[c].sum(0)) ** 2).sum()) for c in clusters] for i in range(len(q))]
    )


@st.composite
def setups(draw):
    k = draw(st.integers(1, 3))
    t = draw(st.integers(1, 3))
    moduli = draw(st.sampled_from([(2147483647, 2147483629), (2147483647,)]))
    params = SecureParams(k=k, t=t, scale_bits=draw(st.integers(0, 8)), moduli=moduli)
    degree = draw(st.sampled_from([1, 2]))
    n = draw(st.integers(params.threshold(degree), params.threshold(degree) + 4))
    d = draw(st.integers(1, 12))
    sites = draw(st.integers(2, 6))
    x = draw(
        st.lists(
            st.lists(st.floats(-1, 1, allow_nan=False), min_size=d, max_size=d),
            min_size=sites,
            max_size=sites,
        )
    )
    keep = draw(st.lists(st.integers(0, n - 1), min_size=params.threshold(degree), unique=True))
    return params, degree, n, np.array(x), keep


@SETTINGS
@given(setups())
def test_share_compute_decode_matches_plaintext(setup):
    params, degree, n, x, keep = setup
    f = params.field
    q_field = [quantize(row, params) for row in x]
    q = f.to_signed(np.stack(q_field))
    shares = np.stack([share(v, n, params, degree=degree) for v in q_field])  # (site, n, L, R)
    if degree == 1:
        answers = {j: coded_sum(shares[:, j], params) for j in keep}
        got = f.to_signed(decode(answers, params, 1, length=x.shape[1]))
        assert np.array_equal(got, q.sum(axis=0))
        weights = list(range(-1, len(x) - 1))
        answers = {j: coded_weighted_sum(shares[:, j], weights, params) for j in keep}
        got = f.to_signed(decode(answers, params, 1, length=x.shape[1]))
        assert np.array_equal(got, (np.array(weights)[:, None] * q).sum(axis=0))
    else:
        sites = len(x)
        clusters = [list(range(0, sites, 2)), list(range(1, sites, 2))]
        blind = sum(blinding_shares(n, (sites, 2), params) for _ in range(sites)) % f.p
        answers = {
            j: coded_scaled_distances(shares[:, j], clusters, params, blind[j]) for j in keep
        }
        got = f.to_signed(decode(answers, params, 2))
        assert np.array_equal(got, plain_distances(q, clusters))


def test_per_slice_results_sum_to_distance():
    params = SecureParams(k=3, t=1, scale_bits=4)
    f = params.field
    x = np.random.default_rng(3).uniform(-1, 1, (4, 7))
    q_field = [quantize(row, params) for row in x]
    q = f.to_signed(np.stack(q_field))
    shares = np.stack([share(v, 9, params, degree=2) for v in q_field])
    clusters = [[0, 1, 2, 3]]
    answers = {j: coded_scaled_distances(shares[:, j], clusters, params) for j in range(9)}
    slices = f.to_signed(decode_slices(answers, params, 2))  # (K, sites, clusters)
    padded = np.zeros((4, 9), dtype=np.int64)
    padded[:, :7] = q
    for k in range(3):
        part = padded[:, 3 * k : 3 * k + 3]
        assert np.array_equal(slices[k], plain_distances(part, clusters))
    assert np.array_equal(slices.sum(axis=0), plain_distances(q, clusters))


def test_blinding_vanishes_at_data_points_and_changes_answers():
    params = SecureParams(k=2, t=2)
    n = 8
    blind = blinding_shares(n, (3, 2), params)
    answers = {j: blind[j] for j in range(n)}
    assert not np.any(decode_slices(answers, params, 2))
    assert np.any(blind)


def test_too_few_answers_raises_with_counts():
    params = SecureParams(k=2, t=2)
    shares = share(quantize(np.zeros(4), params), 8, params, degree=2)
    answers = {j: coded_scaled_distances(shares[None, j], [[0]], params) for j in range(6)}
    with pytest.raises(NotEnoughAnswersError, match="7 answers needed, 6 received") as info:
        decode(answers, params, 2)
    assert (info.value.needed, info.value.received) == (7, 6)
    with pytest.raises(NotEnoughAnswersError, match="4 answers needed, 3 received"):
        decode({j: coded_sum(shares[None, j], params) for j in range(3)}, params, 1)


def test_share_refuses_bad_input():
    params = SecureParams(k=2, t=2)
    with pytest.raises(ParameterError, match="n_participants=5"):
        share(quantize(np.zeros(3), params), 5, params, degree=2)
    with pytest.raises(ParameterError):
        share(quantize(np.zeros(3), params), 0, params)
    with pytest.raises(ParameterError):
        share(quantize(np.zeros(3), params), params.max_participants + 1, params)
    with pytest.raises(MalformedMessageError):
        share(np.zeros((3, 5), dtype=np.int64), 5, params)


def test_decode_refuses_malformed_answers():
    params = SecureParams(k=1, t=1)
    good = {j: np.zeros((3, 2), dtype=np.int64) for j in range(2)}
    with pytest.raises(MalformedMessageError, match="shape"):
        decode({0: good[0], 1: np.zeros((4, 2), dtype=np.int64)}, params, 1)
    with pytest.raises(MalformedMessageError, match="field array"):
        decode({0: good[0], 1: good[1] - 1}, params, 1)
    with pytest.raises(MalformedMessageError, match="participant index"):
        decode({-1: good[0], 1: good[1]}, params, 1)
    with pytest.raises(ParameterError):
        decode(good, params, 3)
    with pytest.raises(ParameterError):
        decode(good, params, 1, length=9)


def test_coded_functions_refuse_bad_input():
    params = SecureParams()
    z = np.zeros((3, 4, 2), dtype=np.int64)
    with pytest.raises(ParameterError, match="empty"):
        coded_scaled_distances(z, [[0], []], params)
    with pytest.raises(ParameterError, match="invalid or repeated"):
        coded_scaled_distances(z, [[0, 0]], params)
    with pytest.raises(ParameterError):
        coded_scaled_distances(z, [[5]], params)
    with pytest.raises(MalformedMessageError):
        coded_scaled_distances(z, [[0]], params, blinding=np.zeros((2, 2, 2), dtype=np.int64))
    with pytest.raises(MalformedMessageError):
        coded_scaled_distances(z[..., :1], [[0]], params)
    with pytest.raises(ParameterError):
        coded_weighted_sum(z, [1, 2], params)
    with pytest.raises(ParameterError):
        coded_weighted_sum(z, [1.0, 2.0, 3.0], params)


# -- privacy of shares ----------------------------------------------------------------------------


def _scripted_rng(words):
    """A byte source returning the given 31-bit words first, then zeros."""
    payload = np.array(words, dtype="<u4").tobytes()

    def source(n):
        return (payload + bytes(n))[:n]

    return source


@pytest.mark.parametrize(
    "k,t,p,n,secrets", [(1, 1, 11, 4, ([3], [8])), (2, 2, 17, 6, ([1, 5], [9, 0]))]
)
def test_any_t_shares_are_exactly_uniform(k, t, p, n, secrets):
    """Enumerate every mask: any T shares of either secret hit every value exactly once."""
    params = SecureParams(k=k, t=t, moduli=(p,), scale_bits=0, value_bound=float(p))
    f = params.field
    length = 1
    for subset in itertools.combinations(range(n), t):
        dists = []
        for secret in secrets:
            counts = {}
            for masks in itertools.product(range(p), repeat=t * length):
                shares = share(
                    f.from_int(np.array(secret)), n, params, rng=_scripted_rng(list(masks))
                )
                key = tuple(shares[list(subset), :, 0].ravel().tolist())
                counts[key] = counts.get(key, 0) + 1
            dists.append(counts)
        assert dists[0] == dists[1]
        assert len(dists[0]) == p**t and set(dists[0].values()) == {1}


def _chi2_two_sample(a, b, p):
    ca = np.bincount(a, minlength=p).astype(float)
    cb = np.bincount(b, minlength=p).astype(float)
    total = ca + cb
    ea, eb = total * ca.sum() / total.sum(), total * cb.sum() / total.sum()
    mask = total > 0
    return float(
        (((ca - ea) ** 2 / np.where(mask, ea, 1))[mask]).sum()
        + (((cb - eb) ** 2 / np.where(mask, eb, 1))[mask]).sum()
    )


# chi-square critical value, 10 degrees of freedom, significance 1e-6.
CHI2_CRIT_DF10 = 46.9


def _share_samples(secret, params, rng=None, samples=3000):
    f = params.field
    return np.array(
        [share(f.from_int(np.array([secret])), 4, params, rng=rng)[2, 0, 0] for _ in range(samples)]
    )


def test_single_share_distribution_does_not_depend_on_secret():
    params = SecureParams(k=1, t=1, moduli=(11,), scale_bits=0, value_bound=11.0)
    a, b = _share_samples(0, params), _share_samples(7, params)
    assert _chi2_two_sample(a, b, 11) < CHI2_CRIT_DF10


def test_statistical_check_catches_reused_masks():
    """Negative control: with a mask source that repeats, the same test must fail."""
    params = SecureParams(k=1, t=1, moduli=(11,), scale_bits=0, value_bound=11.0)
    fixed = _scripted_rng([4])
    a, b = _share_samples(0, params, fixed), _share_samples(7, params, fixed)
    assert _chi2_two_sample(a, b, 11) > CHI2_CRIT_DF10


def test_shares_are_fresh_each_call():
    params = SecureParams(k=2, t=2)
    secret = quantize(np.linspace(-1, 1, 16), params)
    assert not np.array_equal(share(secret, 6, params), share(secret, 6, params))
