import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secpc.errors import ParameterError, WrapAroundError
from secpc.noise import (
    RDP_ORDERS,
    DistributedDPConfig,
    check_cluster_is_private,
    check_noisy_sum_fits,
    clip_update,
    cluster_is_private,
    epsilon_for_cluster_sizes,
    epsilon_spent,
    noise_tail_bound,
    noisy_quantized_update,
    noisy_sum_bound,
    per_site_mu,
    rdp_to_epsilon,
    skellam_noise,
    skellam_rdp,
)
from secpc.params import SecureParams

ROOT = Path(__file__).resolve().parents[2]


def config(**overrides):
    base = dict(
        target_epsilon=4.0,
        target_delta=1e-5,
        num_rounds=5,
        min_cluster_size=3,
        dim=64,
        update_bound=1.0,
        scale_bits=12,
        clip_l2=1.0,
    )
    base.update(overrides)
    return DistributedDPConfig(**base)


def test_sum_over_min_cluster_has_the_configured_variance():
    cfg = config()
    mu = 37.5
    n, draws = cfg.min_cluster_size, 200_000
    rng = np.random.default_rng(1234)
    per_site = np.stack([skellam_noise(mu, draws, rng) for _ in range(n)])
    assert per_site.dtype == np.int64
    total = per_site.sum(axis=0)
    expected = 2 * mu * n
    # Relative standard error of the sample variance is about sqrt(2 / draws) = 0.3%; a scale off
    # by 20% (or noise from one site only) is far outside 3%.
    assert abs(total.var() / expected - 1) < 0.03
    assert abs(total.mean()) < 4 * math.sqrt(expected / draws)
    # The sum is Skellam(n mu, n mu): compare the probability of 0 with scipy's pmf.
    from scipy.stats import skellam

    assert abs(np.mean(total == 0) - skellam.pmf(0, n * mu, n * mu)) < 0.003


def test_skellam_noise_refuses_bad_mu_and_handles_zero():
    assert not skellam_noise(0.0, (3, 2)).any()
    for bad in (-1.0, float("nan"), float("inf"), 2.0**60):
        with pytest.raises(ParameterError):
            skellam_noise(bad, 4)
    # Production path (os.urandom seed): two calls differ.
    assert not np.array_equal(skellam_noise(1e6, 16), skellam_noise(1e6, 16))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_rounds": 50, "target_epsilon": 1.0}, {"clip_l2": None, "neighbouring": "zero-out"}],
)
def test_calibrated_mu_meets_the_target_tightly(overrides):
    cfg = config(**overrides)
    mu = per_site_mu(cfg)
    eps = epsilon_spent(mu, cfg.num_rounds, cfg)
    assert eps <= cfg.target_epsilon
    assert eps >= cfg.target_epsilon * (1 - 1e-3)
    # Less noise would overshoot: the calibration is not just conservative.
    assert epsilon_spent(mu * 0.98, cfg.num_rounds, cfg) > cfg.target_epsilon


def test_epsilon_is_monotone_in_rounds_and_cluster_size():
    cfg = config()
    mu = per_site_mu(cfg)
    eps = [epsilon_spent(mu, r, cfg) for r in range(cfg.num_rounds + 3)]
    assert eps[0] == 0.0
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert epsilon_spent(mu, 5, cfg, cluster_size=6) < eps[5]
    # Exact per-round composition: clusters of different sizes.
    mixed = epsilon_for_cluster_sizes(mu, [3, 6, 6, 3, 9], cfg)
    assert epsilon_spent(mu, 5, cfg, cluster_size=9) < mixed < eps[5]


def test_collusion_calibrates_on_honest_sites_only():
    honest = config(min_cluster_size=4)
    colluding = config(min_cluster_size=4, max_colluding_sites=2)
    mu_h, mu_c = per_site_mu(honest), per_site_mu(colluding)
    # Same aggregate noise from 2 honest sites instead of 4.
    assert mu_c == pytest.approx(2 * mu_h, rel=1e-5)
    with pytest.raises(ParameterError, match="max_colluding_sites"):
        config(min_cluster_size=3, max_colluding_sites=3)


def test_smaller_cluster_is_refused_and_would_overspend():
    cfg = config(min_cluster_size=4)
    mu = per_site_mu(cfg)
    assert cluster_is_private(4, cfg) and cluster_is_private(7, cfg)
    assert not cluster_is_private(3, cfg)
    with pytest.raises(ParameterError, match="do not decode"):
        check_cluster_is_private(3, cfg)
    check_cluster_is_private(4, cfg)
    assert epsilon_spent(mu, cfg.num_rounds, cfg, cluster_size=3) > cfg.target_epsilon


def test_sensitivity_bound_includes_rounding():
    # Coordinates 1.5 at scale 1: L2 norm 3 before rounding, rint gives 2 everywhere (norm 4).
    cfg = config(dim=4, scale_bits=0, clip_l2=3.0, update_bound=2.0, neighbouring="zero-out")
    y = np.full(4, 1.5)
    v = np.rint(clip_update(y, cfg) * 2**cfg.scale_bits)
    assert np.linalg.norm(v) > cfg.clip_l2  # the rounding matters here
    assert np.linalg.norm(v) <= cfg.l2_sensitivity
    assert np.abs(v).sum() <= cfg.l1_sensitivity


def test_sensitivity_bounds_hold_for_worst_case_pairs():
    cfg = config(dim=16, scale_bits=3, clip_l2=0.7, update_bound=0.3)
    rng = np.random.default_rng(0)
    worst_l2 = worst_l1 = 0.0
    for _ in range(2000):
        a, b = (rng.standard_normal(16) * rng.choice([0.01, 1, 100]) for _ in range(2))
        va = noisy_quantized_update(a, 0.0, cfg)
        vb = noisy_quantized_update(-b, 0.0, cfg)
        worst_l2 = max(worst_l2, float(np.linalg.norm(va - vb)))
        worst_l1 = max(worst_l1, float(np.abs(va - vb).sum()))
    assert worst_l2 <= cfg.l2_sensitivity
    assert worst_l1 <= cfg.l1_sensitivity
    # Replacing one update by another moves the sum by up to twice one site's norm: a bound
    # without the factor 2 (the zero-out sensitivity) is exceeded.
    assert worst_l2 > cfg.l2_sensitivity / 2


def test_noisy_update_is_clipped_quantized_plus_noise():
    cfg = config(dim=8, scale_bits=10, clip_l2=1.0, update_bound=0.5)
    update = np.array([3.0, -4.0, 0, 0, 0, 0, 0, 0])
    clipped = clip_update(update, cfg)
    assert np.allclose(clipped[:2], [0.5, -0.5])  # L2 clip to (0.6, -0.8), then coordinates
    plain = noisy_quantized_update(update, 0.0, cfg)
    assert plain.dtype == np.int64
    assert np.array_equal(plain, np.rint(clipped * 1024).astype(np.int64))
    noisy = noisy_quantized_update(update, 100.0, cfg, rng=np.random.default_rng(3))
    again = noisy_quantized_update(update, 100.0, cfg, rng=np.random.default_rng(3))
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, plain)
    with pytest.raises(ParameterError, match="expected 8 values"):
        noisy_quantized_update(np.zeros(7), 1.0, cfg)


def test_conversion_matches_opacus_and_gaussian_limit():
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    cfg = config()
    mu_total = 3 * per_site_mu(cfg)
    rdp = 5 * skellam_rdp(mu_total, cfg.l2_sensitivity, cfg.l1_sensitivity)
    ours = rdp_to_epsilon(RDP_ORDERS, rdp, cfg.target_delta)
    theirs, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=cfg.target_delta)
    assert ours == pytest.approx(theirs, rel=1e-12)
    # For large mu the Skellam RDP tends to the Gaussian one with sigma^2 = 2 mu (and is never
    # below it): an independent check of the leading term and of the 2 mu variance.
    sigma = math.sqrt(2 * mu_total) / cfg.l2_sensitivity
    gauss = compute_rdp(q=1.0, noise_multiplier=sigma, steps=5, orders=list(RDP_ORDERS))
    gauss_eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=gauss, delta=cfg.target_delta)
    assert gauss_eps <= ours <= gauss_eps * 1.01


def test_tail_bound_holds_empirically():
    rng = np.random.default_rng(7)
    mu_total, dim = 500.0, 1
    # At failure probability 2^-10 the empirical exceedance over 400k draws must stay below it.
    t10 = noise_tail_bound(mu_total, dim, failure_log2=10)
    z = skellam_noise(mu_total / 2, 400_000, rng) + skellam_noise(mu_total / 2, 400_000, rng)
    assert np.mean(np.abs(z) > t10) <= 2**-10
    # ... and is not vacuous: a bound 25% smaller would be exceeded more often than allowed.
    assert np.mean(np.abs(z) > 0.75 * t10) > 2**-10
    # At the default 2^-40, nothing in 1M draws over 64 coordinates exceeds it.
    t40 = noise_tail_bound(mu_total, 64)
    big = skellam_noise(mu_total, (15_625, 64), rng)
    assert np.abs(big).max() <= t40
    assert t40 > t10
    assert noise_tail_bound(0.0, 64) == 0


def test_noisy_sum_bound_and_field_check():
    cfg = config(scale_bits=12)
    mu = per_site_mu(cfg)
    q = math.ceil(cfg.update_bound * 2**cfg.scale_bits)
    bound = noisy_sum_bound(12, mu, cfg)
    assert bound == 12 * q + noise_tail_bound(12 * mu, cfg.dim)
    params = SecureParams(t=2, scale_bits=12, value_bound=1.0)
    assert check_noisy_sum_fits(12, mu, cfg, params) == bound
    # A single 31-bit prime at scale 22 holds 100 noise-free updates but not their noise.
    big = config(scale_bits=22)
    small_field = SecureParams(t=2, scale_bits=22, value_bound=1.0, moduli=(2**31 - 1,))
    small_field.check_no_wraparound(cfg.dim, 100, 1)
    with pytest.raises(WrapAroundError, match="noise included"):
        check_noisy_sum_fits(100, per_site_mu(big), big, small_field)
    with pytest.raises(ParameterError, match="does not match"):
        check_noisy_sum_fits(12, mu, cfg, SecureParams(t=2, scale_bits=16))


def test_config_validation_names_the_field():
    for field, bad in [
        ("target_epsilon", 0.0),
        ("target_delta", 1.0),
        ("num_rounds", 0),
        ("min_cluster_size", 0),
        ("dim", 0),
        ("scale_bits", 41),
        ("clip_l2", -1.0),
        ("neighbouring", "swap"),
        ("update_bound", float("inf")),
    ]:
        with pytest.raises(ParameterError, match=field):
            config(**{field: bad})


def test_impossible_budget_names_the_fix():
    with pytest.raises(ParameterError, match="lower scale_bits"):
        per_site_mu(config(scale_bits=30, clip_l2=None, target_epsilon=0.1, num_rounds=100))


def test_module_imports_neither_torch_nor_flwr():
    code = (
        "import sys, secpc.noise;"
        "bad = [m for m in ('torch', 'flwr', 'opacus') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
