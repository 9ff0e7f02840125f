"""A site's reduced descriptor for SecPC clustering: image statistics beside the prompt.

SecPC clusters sites by ``z_i``, a short vector each site secret-shares; the server only ever
learns scaled distances ``|| |C| z_i - sum_{m in C} z_m ||^2`` to group sums. Until now ``z_i`` was
``R vec(P_i - P_init)`` alone, and measured on the embedded benchmarks the personalized prompts do
not carry the visual domain (k-means on them: ARI 0.1-0.3 against the true domains), while the
mean frozen image feature of a site does (ARI 1.0). The descriptor therefore concatenates up to
three blocks, each computed by the site alone from public constants and its own data:

``mean``
    ``R_1 m_i`` with ``m_i`` the mean of the site's (L2-normalised) frozen training image
    features: where the site's images sit in feature space, i.e. its visual domain.
``std``
    ``R_2 s_i`` with ``s_i`` the per-dimension standard deviation of the same features: how
    spread the site's images are (a domain with varied backgrounds spreads more).
``prompt``
    ``R_3 vec(P_i - P_init)``: the site's personalized prompt offset (the original ``z_i``).

Each ``R_b`` is a Gaussian projection ``(dim, d_in)`` with entries ``N(0, 1/dim)`` drawn from a
public seed, so it preserves distances in expectation (Johnson-Lindenstrauss) and is identical on
every site. The prompt block is off by default (``prompt_weight = 0``; see
:class:`DescriptorConfig` for the measurement). Each projected block is then scaled to norm ``weight_b`` (its direction is kept);
an all-zero block (e.g. the prompt before any training) stays zero. Why unit directions and not
federation-wide standardisation: the site must compute its descriptor alone, with no statistics
of other sites; fixing each block's norm to a public budget means no block can drown another by
scale (the prompt offset grows with training, feature means do not), and the whole descriptor is
bounded: ``||z||^2 = sum_b weight_b^2`` and every coordinate is at most ``max_b weight_b`` in
absolute value, so with weights at most 1 it fits the protocol's ``z-bound`` (default 8.0) with
no clipping, and at ``z-scale-bits = 12`` the quantization step ``2^-12`` is far below the
domain-to-domain distances (order 0.1-1 on the unit-norm blocks).

What the direction of ``m_i`` costs: two sites whose mean features differ only in length (not
direction) get the same block. Mean image features of one backbone are dominated by a shared
positive direction, so the domain differences live in the direction anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DescriptorConfig", "feature_statistics", "site_descriptor"]

# Distinct public sub-seeds per block, so the three projections are independent.
_BLOCK_STREAMS = {"mean": 1, "std": 2, "prompt": 3}


@dataclass(frozen=True)
class DescriptorConfig:
    """Shape and weights of the site descriptor.

    Parameters
    ----------
    block_dim
        Dimension of each block after projection, ``>= 1``. The descriptor has
        ``block_dim`` times the number of blocks with a non-zero weight.
    mean_weight, std_weight, prompt_weight
        Norm of each block, each in ``[0, 1]``; a zero weight drops the block; the bound 1
        keeps every coordinate within any ``z-bound >= 1``. The image blocks share the budget
        equally. The prompt block is off by default: measured on ``digits-domains`` (12 sites,
        seed 0, ``benchmarks/cluster_study.py``), a unit-weight prompt block after one local
        epoch took the best candidate score in round 2 from 0.53 (prompt block zero) to 0.08
        and the rule stayed at one cluster: site prompt directions are nearly orthogonal, so
        the block adds about ``2 w^2`` to every squared distance and drowns the domain. Weights
        between 0 and 1 were not measured.
    seed
        Public seed of the projections (the federation seed), ``>= 0``.
    """

    block_dim: int = 16
    mean_weight: float = 1.0
    std_weight: float = 1.0
    prompt_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("block_dim", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.block_dim < 1:
            raise ValueError(f"block_dim must be at least 1, got {self.block_dim}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        for name in ("mean_weight", "std_weight", "prompt_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        if self.mean_weight == self.std_weight == self.prompt_weight == 0.0:
            raise ValueError("at least one block weight must be positive")

    @property
    def blocks(self) -> tuple[tuple[str, float], ...]:
        """``(name, weight)`` of the blocks present, in descriptor order."""
        return tuple(
            (name, w)
            for name, w in (
                ("mean", self.mean_weight),
                ("std", self.std_weight),
                ("prompt", self.prompt_weight),
            )
            if w > 0
        )

    @property
    def dim(self) -> int:
        """Length of the descriptor."""
        return self.block_dim * len(self.blocks)


def projection(seed: int, block: str, dim_in: int, dim_out: int) -> np.ndarray:
    """The public ``(dim_out, dim_in)`` Gaussian projection of one block, entries ``N(0, 1/dim_out)``.

    Parameters
    ----------
    seed
        Public seed (the federation seed).
    block
        ``mean``, ``std`` or ``prompt``.
    dim_in, dim_out
        Input and output dimensions.

    Returns
    -------
    numpy.ndarray
        The same matrix on every site for the same arguments.
    """
    rng = np.random.default_rng([seed, _BLOCK_STREAMS[block], dim_in, dim_out])
    return rng.standard_normal((dim_out, dim_in)) / math.sqrt(dim_out)


def feature_statistics(train_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-dimension standard deviation of a site's image features.

    Parameters
    ----------
    train_features
        ``(N, feature_dim)`` frozen image features, ``N >= 1``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(mean, std)``, each ``(feature_dim,)`` float64 (``std`` is zero for one image).
    """
    feats = np.asarray(train_features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 1:
        raise ValueError(f"train_features must be (N >= 1, feature_dim), got {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError("train_features must be finite")
    return feats.mean(axis=0), feats.std(axis=0)


def _unit_block(values: np.ndarray, weight: float, seed: int, block: str, dim: int) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float64).ravel()
    projected = projection(seed, block, flat.size, dim) @ flat
    norm = float(np.linalg.norm(projected))
    # A zero block (prompt before training, one image's std) carries no direction: keep it zero
    # rather than amplify rounding noise to a full-weight random direction.
    if norm <= 1e-12 * max(1.0, float(np.linalg.norm(flat))) or norm == 0.0:
        return np.zeros(dim)
    return weight * projected / norm


def site_descriptor(
    prompt_offset: np.ndarray | None, train_features: np.ndarray, config: DescriptorConfig
) -> np.ndarray:
    """The reduced descriptor ``z_i`` a site secret-shares for SecPC clustering.

    Parameters
    ----------
    prompt_offset
        ``P_i - P_init`` (any shape, flattened), or ``None`` when ``prompt_weight`` is 0.
    train_features
        ``(N, feature_dim)`` the site's frozen training image features.
    config
        Block dimension, weights and public seed.

    Returns
    -------
    numpy.ndarray
        ``(config.dim,)`` float64: the blocks ``mean``, ``std``, ``prompt`` (those with a
        positive weight, in that order), each of norm ``weight`` or zero. Every coordinate lies
        in ``[-max weight, max weight]``.
    """
    mean, std = feature_statistics(train_features)
    parts = []
    for name, weight in config.blocks:
        if name == "prompt":
            if prompt_offset is None:
                raise ValueError("prompt_offset is required when prompt_weight > 0")
            values = prompt_offset
        else:
            values = mean if name == "mean" else std
        parts.append(_unit_block(values, weight, config.seed, name, config.block_dim))
    return np.concatenate(parts)
