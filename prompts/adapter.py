"""An image-side adapter: a residual linear map on the frozen image features.

The prompt moves only the text side of the two-tower model. The adapter gives the image side
capacity of its own: ``f' = normalize(f + f W)`` with ``W`` of shape ``(feature_dim,
feature_dim)`` (``rank=0``) or ``U V`` of rank ``r``. ``W`` (or ``U``) starts at zero, so an
untrained adapter is the identity and the model starts exactly where it would without one.

It is a candidate *shared part* for clustering (``benchmarks/cluster_study.py --shared-part
adapter``): a linear map on the image features can express a domain's own geometry or class
convention, which one context shared by every class cannot. It is not part of the federated app.
On the conflicting-label setting the study measured it shared with every site above not sharing
it and above sharing it within the true domain (README, "Benchmarks"): pooling the data of all
sites paid more than matching the domain, so it does not make clustering pay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class FeatureAdapter(nn.Module):
    """Residual linear map on L2-normalised image features, identity at initialisation.

    Parameters
    ----------
    feature_dim : int
        Width of the image features.
    rank : int
        ``0`` for a full ``(feature_dim, feature_dim)`` map; ``r >= 1`` for ``U V`` with ``U``
        of shape ``(feature_dim, r)`` (zero at start) and ``V`` of shape ``(r, feature_dim)``
        (seeded small normal values, so that ``U`` receives a gradient from the first step).
    seed : int
        Seed of ``V``'s initialisation; sites that share the adapter use the same seed, so that
        their maps start equal and averaging them is meaningful.
    lr_scale : float
        The adapter's learning rate relative to the prompt's in
        :func:`prompts.training.train_prompt`. Default 0.1: every entry of ``W`` moves the
        features along all ``feature_dim`` directions at once, so at the prompt's step size a
        few Adam steps would already rotate the features far from the frozen tower's.
    """

    def __init__(
        self, feature_dim: int, rank: int = 0, seed: int = 0, lr_scale: float = 0.1
    ) -> None:
        super().__init__()
        if not lr_scale > 0:
            raise ValueError(f"lr_scale: expected a number > 0, got {lr_scale!r}")
        self.lr_scale = float(lr_scale)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim: expected an integer >= 1, got {feature_dim!r}")
        if not isinstance(rank, int) or not 0 <= rank <= feature_dim:
            raise ValueError(f"rank: expected an integer in [0, {feature_dim}], got {rank!r}")
        self.rank = rank
        if rank == 0:
            self.weight = nn.Parameter(torch.zeros(feature_dim, feature_dim))
        else:
            generator = torch.Generator().manual_seed(seed)
            self.down = nn.Parameter(torch.zeros(feature_dim, rank))
            self.up = nn.Parameter(
                torch.randn(rank, feature_dim, generator=generator) / feature_dim**0.5
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Adapted, re-normalised features, shape as ``features`` ``(B, feature_dim)``."""
        x = features.float()
        delta = x @ self.weight if self.rank == 0 else (x @ self.down) @ self.up
        return F.normalize(x + delta, dim=-1).to(features.dtype)
