"""Distributed differential privacy for the cluster sums: Skellam noise and its accounting.

Each site adds integer Skellam noise to its *quantized* ``P_G`` update before secret-sharing
it. A Skellam variable ``Sk(mu, mu)`` is the difference of two independent ``Poisson(mu)``
variables (mean 0, variance ``2 mu``), and a sum of independent ``Sk(mu_i, mu_i)`` is exactly
``Sk(sum mu_i, sum mu_i)``. So when every member of a cluster adds ``Sk(mu_site, mu_site)`` per
coordinate, the decoded cluster sum carries ``Sk(n mu_site, n mu_site)`` noise that no single
party removed: the server only ever sees the noisy sum (the LCC shares hide the rest).

The accounting is the Skellam mechanism's Rényi-DP bound (Agarwal, Kairouz & Liu, "The Skellam
Mechanism for Differentially Private Federated Learning", NeurIPS 2021, Theorem 3.5): adding
``Sk(M, M)`` independently to each coordinate of an integer-valued function with L2 sensitivity
``Δ2`` and L1 sensitivity ``Δ1`` is ``(α, ε(α))``-RDP for (integer) ``α > 1`` with::

    ε(α) = α Δ2² / (4 M) + min( ((2α - 1) Δ2² + 6 Δ1) / (16 M²), 3 Δ1 / (4 M) )

RDP composes additively over rounds; the total is converted to ``(ε, δ)`` with the conversion
of Balle et al. 2020 ("Hypothesis testing interpretations and Rényi differential privacy",
Theorem 21), the same formula as ``opacus.accountants.analysis.rdp.get_privacy_spent`` (a test
checks both agree). It is re-implemented here only because importing opacus imports torch, and
``secpc`` must stay torch-free.

Privacy caveats (read before relying on a number):

* **Unit of privacy**: one site's whole update in one round (site-level DP of the released
  cluster sums), with the neighbouring relation of :class:`DistributedDPConfig`.
* **Not covered**: the scaled distances and the cluster assignments the server learns in the
  distance step are *not* noised; the server sees them exactly, and they depend on the sites'
  prompts. Evaluation metrics the sites report, and anything the server learns outside the
  cluster sums, are not covered either.
* **Trust**: the noise of a site that colludes with the server is known to the server and is
  subtracted; :attr:`DistributedDPConfig.max_colluding_sites` says how many such sites per
  cluster the calibration tolerates. Sites that skip or shrink their noise weaken everyone's
  guarantee: the mechanism assumes the honest sites add the prescribed noise.
* **Cluster size**: the noise is calibrated for a cluster of exactly ``min_cluster_size``
  contributing sites. A cluster with fewer contributors (e.g. after dropouts) carries less noise
  and **must not be decoded**: check :func:`cluster_is_private` first.
* **Sampler**: numpy's Poisson sampler works in floating point and is not constant-time; like
  any floating-point sampler it is not a certified exact sampler. It is seeded from
  ``os.urandom`` unless a generator is given (tests only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import ParameterError, WrapAroundError
from .params import MAX_SCALE_BITS, SecureParams, max_intermediate_magnitude

#: RDP orders used for the Skellam accounting. Integer orders only: the Skellam bound is proven
#: for integer ``α``, and omitting fractional orders can only make ``ε`` larger (conservative).
RDP_ORDERS: tuple[int, ...] = (*range(2, 257), 320, 384, 512, 768, 1024, 2048, 4096)

#: Largest aggregate Skellam parameter accepted. numpy's Poisson sampler works in float64,
#: whose integer spacing reaches 1 at 2^53; keeping ``mu`` (and so the samples) well below that
#: keeps the samples integer-exact.
MAX_MU = float(2**50)

#: Default failure probability of :func:`noise_tail_bound`: ``2**-40``.
DEFAULT_TAIL_LOG2 = 40

Neighbouring = Literal["replace", "zero-out"]


@dataclass(frozen=True)
class DistributedDPConfig:
    """Target and assumptions of the distributed (Skellam) DP on the cluster sums.

    Attributes
    ----------
    target_epsilon : float
        ``ε`` of the whole run: every round in which a site's update is part of a decoded
        cluster sum composes into it.
    target_delta : float
        ``δ`` of the whole run, in ``(0, 1)``; conventionally below ``1 / number of sites``.
    num_rounds : int
        Releases to account for: the rounds a site contributes to a decoded cluster sum (use the
        number of server rounds as the worst case).
    min_cluster_size : int
        Fewest contributing sites of any decoded cluster (the strategy's ``min-cluster-size``).
        The noise is calibrated so that a cluster of exactly this size meets the target; larger
        clusters carry more noise.
    dim : int
        Length of the flattened ``P_G`` update.
    update_bound : float
        Per-coordinate clip ``[-update_bound, update_bound]`` (``ProtocolConfig.update_bound``).
    scale_bits : int
        Quantization scale ``λ`` (``ProtocolConfig.update_scale_bits``): values are multiplied by
        ``2**λ`` and rounded to the nearest integer. The noise is added at this scale, so ``mu``
        grows like ``4**λ``; with DP, 12-16 bits are ample (the noise dwarfs the rounding).
    clip_l2 : float or None
        L2 clip of the real-valued update, applied before the per-coordinate clip. ``None``
        relies on the per-coordinate clip alone (L2 norm up to ``update_bound * sqrt(dim)``,
        usually far more noise for the same ``ε``).
    neighbouring : {"replace", "zero-out"}
        ``"replace"`` (default): neighbouring runs differ in one site's update replaced by any
        other valid update (sensitivity twice the per-site bound). ``"zero-out"``: one site's
        update replaced by zeros (the add/remove convention of the DDG/Skellam papers; half the
        sensitivity, a weaker statement when the server knows who is in a cluster).
    max_colluding_sites : int
        Members of a cluster, other than the protected site, assumed to reveal their own noise
        to the server. The noise is calibrated on ``min_cluster_size - max_colluding_sites``
        honest contributions. Default 0: an honest-but-curious server colluding with no site.

    Notes
    -----
    Per-site bounds used for the sensitivity, in quantized integer units, with ``d = dim``,
    ``Q = ceil(update_bound * 2**λ)`` and ``C = clip_l2``: a quantized update ``v = rint(y)``
    of a clipped ``y`` has ``|v_j| <= Q`` and ``||v||_2 <= C 2**λ + sqrt(d) / 2`` (rounding
    moves each coordinate by at most 1/2), so the per-site L2 bound is
    ``L = min(C 2**λ + sqrt(d) / 2, Q sqrt(d))``. With ``k = 2`` for ``"replace"`` and ``k = 1``
    for ``"zero-out"``: ``Δ2 = k L`` and, since the difference of two updates is an integer
    vector, ``Δ1 = min(Δ2², sqrt(d) Δ2, k Q d)``.
    """

    target_epsilon: float
    target_delta: float
    num_rounds: int
    min_cluster_size: int
    dim: int
    update_bound: float = 1.0
    scale_bits: int = 16
    clip_l2: float | None = None
    neighbouring: Neighbouring = "replace"
    max_colluding_sites: int = 0

    def __post_init__(self) -> None:
        for name in ("num_rounds", "min_cluster_size", "dim", "scale_bits", "max_colluding_sites"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ParameterError(f"{name}: expected an integer, got {value!r}")
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise ParameterError(
                f"target_epsilon: expected a finite number > 0, got {self.target_epsilon!r}"
            )
        if not 0 < self.target_delta < 1:
            raise ParameterError(
                f"target_delta: expected a number in (0, 1), got {self.target_delta!r}"
            )
        if self.num_rounds < 1:
            raise ParameterError(f"num_rounds: expected at least 1, got {self.num_rounds}")
        if self.min_cluster_size < 1:
            raise ParameterError(
                f"min_cluster_size: expected at least 1, got {self.min_cluster_size}"
            )
        if self.dim < 1:
            raise ParameterError(f"dim: expected at least 1, got {self.dim}")
        if not (math.isfinite(self.update_bound) and self.update_bound > 0):
            raise ParameterError(
                f"update_bound: expected a finite number > 0, got {self.update_bound!r}"
            )
        if not 0 <= self.scale_bits <= MAX_SCALE_BITS:
            raise ParameterError(
                f"scale_bits: expected an integer in [0, {MAX_SCALE_BITS}], got {self.scale_bits}"
            )
        if self.clip_l2 is not None and not (math.isfinite(self.clip_l2) and self.clip_l2 > 0):
            raise ParameterError(
                f"clip_l2: expected None or a finite number > 0, got {self.clip_l2!r}"
            )
        if self.neighbouring not in ("replace", "zero-out"):
            raise ParameterError(
                f"neighbouring: expected 'replace' or 'zero-out', got {self.neighbouring!r}"
            )
        if not 0 <= self.max_colluding_sites < self.min_cluster_size:
            raise ParameterError(
                f"max_colluding_sites: expected an integer in [0, min_cluster_size - 1] = "
                f"[0, {self.min_cluster_size - 1}], got {self.max_colluding_sites}"
            )

    @property
    def quantized_bound(self) -> int:
        """``Q = ceil(update_bound * 2**scale_bits)``, the largest quantized magnitude."""
        return math.ceil(self.update_bound * 2**self.scale_bits)

    @property
    def site_l2_bound(self) -> float:
        """Largest L2 norm of one site's quantized update (rounding included)."""
        coordinate_only = self.quantized_bound * math.sqrt(self.dim)
        if self.clip_l2 is None:
            return coordinate_only
        # Rounding to the nearest integer moves each coordinate by at most 1/2.
        return min(self.clip_l2 * 2**self.scale_bits + math.sqrt(self.dim) / 2, coordinate_only)

    @property
    def l2_sensitivity(self) -> float:
        """``Δ2`` of a cluster sum (quantized units) under :attr:`neighbouring`."""
        return (2.0 if self.neighbouring == "replace" else 1.0) * self.site_l2_bound

    @property
    def l1_sensitivity(self) -> float:
        """``Δ1`` of a cluster sum (quantized units): the difference is an integer vector."""
        k = 2 if self.neighbouring == "replace" else 1
        d2 = self.l2_sensitivity
        return min(d2 * d2, math.sqrt(self.dim) * d2, float(k * self.quantized_bound * self.dim))

    @property
    def honest_contributors(self) -> int:
        """Noise contributions the calibration counts on in a minimum-size cluster."""
        return self.min_cluster_size - self.max_colluding_sites


def skellam_rdp(
    mu_total: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    orders: Sequence[float] = RDP_ORDERS,
) -> np.ndarray:
    """RDP curve of one release with ``Sk(mu_total, mu_total)`` noise per coordinate.

    Parameters
    ----------
    mu_total : float
        Aggregate Skellam parameter of the released sum (variance ``2 mu_total``).
    l2_sensitivity, l1_sensitivity : float
        ``Δ2`` and ``Δ1`` of the released integer vector.
    orders : sequence of float
        RDP orders ``α > 1`` (the bound is proven for integer orders).

    Returns
    -------
    np.ndarray
        ``ε(α)`` for each order (Agarwal, Kairouz & Liu 2021, Theorem 3.5); ``inf`` when
        ``mu_total`` is 0.
    """
    alpha = np.asarray(orders, dtype=np.float64)
    if mu_total <= 0:
        return np.full(alpha.shape, np.inf)
    d2sq, d1 = float(l2_sensitivity) ** 2, float(l1_sensitivity)
    second = np.minimum(
        ((2 * alpha - 1) * d2sq + 6 * d1) / (16 * mu_total**2), 3 * d1 / (4 * mu_total)
    )
    return alpha * d2sq / (4 * mu_total) + second


def rdp_to_epsilon(
    orders: Sequence[float], rdp: Sequence[float] | np.ndarray, delta: float
) -> float:
    """Convert an RDP curve to ``ε`` at ``delta`` (Balle et al. 2020, Theorem 21).

    ``ε = min_α [ rdp(α) + log((α - 1) / α) - (log δ + log α) / (α - 1) ]``, the conversion of
    ``opacus.accountants.analysis.rdp.get_privacy_spent`` (re-implemented to stay torch-free).
    """
    alpha = np.asarray(orders, dtype=np.float64)
    rdp = np.asarray(rdp, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        eps = rdp - (math.log(delta) + np.log(alpha)) / (alpha - 1) + np.log((alpha - 1) / alpha)
    if np.all(np.isnan(eps)):
        return math.inf
    return float(max(np.nanmin(eps), 0.0))


def epsilon_for_cluster_sizes(
    mu_per_site: float, cluster_sizes: Sequence[int], config: DistributedDPConfig
) -> float:
    """``ε`` spent by one site over the rounds it contributed to, given each round's cluster size.

    Parameters
    ----------
    mu_per_site : float
        The Skellam parameter every site used (from :func:`per_site_mu`).
    cluster_sizes : sequence of int
        For each decoded round the site contributed to, the number of members whose noise is in
        that round's decoded sum (the site included). ``max_colluding_sites`` of them are assumed
        to reveal their noise.
    config : DistributedDPConfig
        Sensitivities, ``δ`` and collusion assumption.

    Returns
    -------
    float
        ``ε`` at ``config.target_delta``; 0 for no rounds; ``inf`` if a round had no honest noise.
    """
    if not cluster_sizes:
        return 0.0
    rdp = np.zeros(len(RDP_ORDERS))
    for size in cluster_sizes:
        honest = int(size) - config.max_colluding_sites
        rdp += skellam_rdp(
            honest * mu_per_site, config.l2_sensitivity, config.l1_sensitivity, RDP_ORDERS
        )
    return rdp_to_epsilon(RDP_ORDERS, rdp, config.target_delta)


def epsilon_spent(
    mu_per_site: float, rounds: int, config: DistributedDPConfig, cluster_size: int | None = None
) -> float:
    """``ε`` (at ``config.target_delta``) after ``rounds`` releases, for the server's log.

    Parameters
    ----------
    mu_per_site : float
        The Skellam parameter every site used.
    rounds : int
        Rounds (decoded releases) so far, ``>= 0``.
    config : DistributedDPConfig
        The DP configuration.
    cluster_size : int, optional
        Contributors per decoded cluster; default ``config.min_cluster_size`` (the worst case
        allowed by :func:`cluster_is_private`). For the exact figure of one site whose clusters
        varied, use :func:`epsilon_for_cluster_sizes`.

    Returns
    -------
    float
        ``ε``; non-decreasing in ``rounds``.
    """
    if rounds < 0:
        raise ParameterError(f"rounds: expected an integer >= 0, got {rounds}")
    size = config.min_cluster_size if cluster_size is None else cluster_size
    return epsilon_for_cluster_sizes(mu_per_site, [size] * rounds, config)


def per_site_mu(config: DistributedDPConfig, rel_tol: float = 1e-6) -> float:
    """Skellam parameter each site adds per coordinate so the run meets ``(ε, δ)``.

    A cluster of exactly ``config.min_cluster_size`` contributors, of which
    ``max_colluding_sites`` reveal their noise, releases ``num_rounds`` sums whose noise is
    ``Sk(M, M)`` with ``M = honest_contributors * mu_site``; ``M`` is the smallest value (to
    ``rel_tol``, rounded up) whose composed ``ε`` is at most ``target_epsilon``.

    Returns
    -------
    float
        ``mu_site``: pass it to :func:`skellam_noise` or :func:`noisy_quantized_update`.

    Raises
    ------
    ParameterError
        If the required ``M`` exceeds :data:`MAX_MU` (lower ``scale_bits``, set or lower
        ``clip_l2``, or raise the target).
    """
    honest = config.honest_contributors

    def eps(mu_total: float) -> float:
        return epsilon_for_cluster_sizes(
            mu_total / honest,
            [config.min_cluster_size] * config.num_rounds,
            config,
        )

    lo, hi = 1e-6, 1.0
    while eps(hi) > config.target_epsilon:
        lo, hi = hi, hi * 4
        if hi > MAX_MU * 4:
            raise ParameterError(
                f"reaching ε={config.target_epsilon} over {config.num_rounds} rounds needs a "
                f"Skellam parameter above {MAX_MU:.3g} at scale_bits={config.scale_bits}: lower "
                "scale_bits, set or lower clip_l2, or raise target_epsilon"
            )
    # Bisection in log space; hi always meets the target, so the answer is conservative.
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if eps(mid) > config.target_epsilon:
            lo = mid
        else:
            hi = mid
    if hi > MAX_MU:
        raise ParameterError(
            f"the Skellam parameter {hi:.3g} exceeds {MAX_MU:.3g}: lower scale_bits, set or "
            "lower clip_l2, or raise target_epsilon"
        )
    # The per-site share, nudged up so that honest * mu_site >= hi despite float rounding.
    return math.nextafter(hi / honest, math.inf)


def _default_rng() -> np.random.Generator:
    # Fresh OS entropy per call: the noise must be unpredictable to the server.
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


def skellam_noise(
    mu: float, shape: int | tuple[int, ...], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Integer noise ``Sk(mu, mu)`` = ``Poisson(mu) - Poisson(mu)``, independent per entry.

    Parameters
    ----------
    mu : float
        Skellam parameter (variance ``2 mu``), in ``[0, MAX_MU]``.
    shape : int or tuple of int
        Shape of the noise.
    rng : numpy.random.Generator, optional
        Tests only. By default a generator seeded from ``os.urandom`` (32 bytes) per call.

    Returns
    -------
    np.ndarray
        ``int64`` array of ``shape``.

    Notes
    -----
    numpy's Poisson sampler is floating-point based and not constant-time; see the module
    caveats.
    """
    if not (math.isfinite(mu) and 0 <= mu <= MAX_MU):
        raise ParameterError(f"mu: expected a number in [0, {MAX_MU:.3g}], got {mu!r}")
    rng = _default_rng() if rng is None else rng
    if mu == 0:
        return np.zeros(shape, dtype=np.int64)
    return rng.poisson(mu, shape).astype(np.int64) - rng.poisson(mu, shape).astype(np.int64)


def clip_update(update: np.ndarray, config: DistributedDPConfig) -> np.ndarray:
    """Flatten, clip to L2 norm ``clip_l2`` (if set), then to ``[-update_bound, update_bound]``.

    The sensitivity of :class:`DistributedDPConfig` holds only for updates clipped this way.
    """
    flat = np.asarray(update, dtype=np.float64).ravel()
    if flat.size != config.dim:
        raise ParameterError(f"update: expected {config.dim} values, got {flat.size}")
    if not np.all(np.isfinite(flat)):
        raise ParameterError("update: NaN or infinite values")
    if config.clip_l2 is not None:
        norm = float(np.linalg.norm(flat))
        if norm > config.clip_l2:
            flat = flat * (config.clip_l2 / norm)
    return np.clip(flat, -config.update_bound, config.update_bound)


def noisy_quantized_update(
    update: np.ndarray,
    mu_per_site: float,
    config: DistributedDPConfig,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One site's contribution: clip, quantize at ``2**scale_bits``, add ``Sk(mu, mu)``.

    Parameters
    ----------
    update : np.ndarray
        The site's real-valued ``P_G`` update (``config.dim`` values, any shape).
    mu_per_site : float
        From :func:`per_site_mu`.
    config : DistributedDPConfig
        Clip bounds and scale (``scale_bits`` must equal the protocol's ``update_scale_bits``).
    rng : numpy.random.Generator, optional
        Tests only (see :func:`skellam_noise`).

    Returns
    -------
    np.ndarray
        ``int64`` ``(dim,)``: secret-share ``params.field.from_int(result)`` in place of
        ``quantize(update, params)``. The values may exceed ``update_bound * 2**scale_bits``;
        dequantize the decoded sum with ``dequantize`` as before (the noise stays in it).
    """
    clipped = clip_update(update, config)
    quantized = np.rint(clipped * float(2**config.scale_bits)).astype(np.int64)
    return quantized + skellam_noise(mu_per_site, quantized.shape, rng)


def cluster_is_private(n_contributors: int, config: DistributedDPConfig) -> bool:
    """Whether a cluster sum with ``n_contributors`` noise contributions may be decoded.

    ``n_contributors`` counts the members whose shares (and so noise) are in the decoded sum,
    after dropouts. Below ``config.min_cluster_size`` the sum carries less noise than the
    calibration assumed (and, with one contributor, is that site's noisy update alone): the
    caller must **not** decode it (skip the cluster or merge it first).
    """
    return int(n_contributors) >= config.min_cluster_size


def check_cluster_is_private(n_contributors: int, config: DistributedDPConfig) -> None:
    """Raise :class:`ParameterError` unless :func:`cluster_is_private` holds."""
    if not cluster_is_private(n_contributors, config):
        raise ParameterError(
            f"a cluster sum of {n_contributors} contributor(s) carries less noise than the DP "
            f"calibration (min_cluster_size={config.min_cluster_size}): do not decode it"
        )


def _log_tail(t: float, mu_total: float) -> float:
    """``-log`` of the Chernoff bound on ``P(Sk(M, M) >= t)``.

    With ``E exp(λX) = exp(2M(cosh λ - 1))`` and the optimal ``λ = asinh(x)``, ``x = t / 2M``:
    ``P(X >= t) <= exp(-2M (x asinh x - sqrt(1 + x²) + 1))``. ``sqrt(1 + x²) - 1`` is written as
    ``x² / (sqrt(1 + x²) + 1)`` to avoid cancellation for small ``x``.
    """
    x = t / (2 * mu_total)
    return 2 * mu_total * (x * math.asinh(x) - x * x / (math.sqrt(1 + x * x) + 1))


def noise_tail_bound(mu_total: float, dim: int, failure_log2: int = DEFAULT_TAIL_LOG2) -> int:
    """Integer ``t`` with ``P(max_j |Z_j| > t) <= 2**-failure_log2`` for ``Z ~ Sk(M, M)^dim``.

    Chernoff bound per coordinate and tail (see ``_log_tail``), union bound over both tails and
    ``dim`` coordinates: ``2 dim exp(-I(t)) <= 2**-failure_log2``. For a decoded cluster sum of
    ``n`` sites pass ``mu_total = n * mu_per_site`` (or use :func:`noisy_sum_bound`).
    """
    if dim < 1:
        raise ParameterError(f"dim: expected at least 1, got {dim}")
    if mu_total <= 0:
        return 0
    need = failure_log2 * math.log(2) + math.log(2 * dim)
    lo, hi = 0, max(1, math.ceil(math.sqrt(mu_total)))
    while _log_tail(hi, mu_total) < need:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _log_tail(mid, mu_total) < need:
            lo = mid
        else:
            hi = mid
    return hi


def noisy_sum_bound(
    n_parties: int,
    mu_per_site: float,
    config: DistributedDPConfig,
    failure_log2: int = DEFAULT_TAIL_LOG2,
) -> int:
    """Largest ``|value|`` of a decoded noisy sum of ``n_parties`` sites, except w.p. 2^-failure_log2.

    ``max_intermediate_magnitude(dim, update_bound, scale_bits, n_parties, 1)`` (``n_parties *
    Q``, the noise-free bound of ``secpc.params``) plus ``noise_tail_bound(n_parties *
    mu_per_site, dim, failure_log2)``. Compare it with ``params.field.max_signed`` in place of
    the degree-1 check of ``check_no_wraparound`` (or call :func:`check_noisy_sum_fits`). The
    bound is probabilistic: with probability at most ``2**-failure_log2`` per sum the noise
    exceeds it and the decoded value would wrap around.
    """
    base = max_intermediate_magnitude(
        config.dim, config.update_bound, config.scale_bits, n_parties, 1
    )
    return base + noise_tail_bound(n_parties * mu_per_site, config.dim, failure_log2)


def check_noisy_sum_fits(
    n_parties: int,
    mu_per_site: float,
    config: DistributedDPConfig,
    params: SecureParams,
    failure_log2: int = DEFAULT_TAIL_LOG2,
) -> int:
    """Raise :class:`WrapAroundError` unless :func:`noisy_sum_bound` fits the field; return it.

    ``params`` are the update's field parameters (``ProtocolConfig.update_params``); its
    ``scale_bits`` and ``value_bound`` must equal the config's.
    """
    if params.scale_bits != config.scale_bits or params.value_bound != config.update_bound:
        raise ParameterError(
            f"DP config (scale_bits={config.scale_bits}, update_bound={config.update_bound}) "
            f"does not match the field parameters (scale_bits={params.scale_bits}, "
            f"value_bound={params.value_bound})"
        )
    bound = noisy_sum_bound(n_parties, mu_per_site, config, failure_log2)
    if bound > params.field.max_signed:
        raise WrapAroundError(
            f"a noisy sum of {n_parties} sites can reach {bound} (noise included, failure "
            f"probability 2^-{failure_log2}), above the field's exact range "
            f"{params.field.max_signed}: lower scale_bits or use two moduli",
            parameter="scale_bits",
        )
    return bound


def noise_std(mu_per_site: float, n_contributors: int, scale_bits: int) -> float:
    """Standard deviation per coordinate of the noise in a dequantized cluster sum.

    ``sqrt(2 n mu_site) / 2**scale_bits``; divide by the cluster size for the cluster mean.
    """
    return math.sqrt(2 * n_contributors * mu_per_site) / 2**scale_bits
