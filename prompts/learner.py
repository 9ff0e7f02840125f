"""The hierarchical prompt: a shared domain-level part and a private class-level part.

A site's personalized context for class ``c`` is ``P_G + P_L[c]``:

* ``P_G`` (``global_ctx``, shape ``(n_ctx, ctx_dim)``) is the domain-level prompt. It is the
  only part that is ever shared, and only as secret shares or cluster averages.
* ``P_L`` (``local_ctx``, shape ``(n_cls, n_ctx, ctx_dim)``) is a class-specific residual,
  initialised to zero. It never leaves the site.

Why a zero-initialised class-specific residual: class-specific context (CoOp's CSC) is what
lets a prompt capture class-level detail of one site's label distribution, while the zero start
makes the personalized prompt begin exactly at the shared one, so local training only moves
what the domain-level prompt cannot explain. Because the two parts add, a change in ``P_G``
shifts every class alike (domain-level), and ``P_L`` can only specialise per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MODES = ("global", "hierarchical", "local")


@dataclass(frozen=True)
class PromptConfig:
    """Shape and initialisation of a hierarchical prompt.

    Attributes
    ----------
    n_ctx : int
        Number of learnable context vectors (tokens) in front of the class name.
    ctx_init : str
        Phrase whose token embeddings initialise ``P_G`` (e.g. ``"a photo of a"``); empty for
        a seeded random normal initialisation with standard deviation ``init_std``.
    init_std : float
        Standard deviation of the random initialisation.
    seed : int
        Seed of the random initialisation. Every site uses the federation's seed, so all
        sites start from the same ``P_G``.
    """

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n_ctx, int) or not 1 <= self.n_ctx <= 64:
            raise ValueError(f"n_ctx: expected an integer in [1, 64], got {self.n_ctx!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std: expected a number > 0, got {self.init_std!r}")


class HierarchicalPrompt(nn.Module):
    """Learnable ``P_G`` (shared, domain-level) and ``P_L`` (private, class-level) contexts.

    Parameters
    ----------
    global_init : torch.Tensor
        Initial ``P_G``, shape ``(n_ctx, ctx_dim)`` (one context for every class, the default),
        or ``(n_cls, n_ctx, ctx_dim)`` for a shared class-specific context (CoOp's CSC shared
        within a cluster), on top of which ``P_L`` stays the site's private residual.
    n_cls : int
        Number of classes; ``P_L`` has one residual per class.
    """

    def __init__(self, global_init: torch.Tensor, n_cls: int) -> None:
        super().__init__()
        if n_cls < 2:
            raise ValueError(f"n_cls: expected at least 2 classes, got {n_cls}")
        if global_init.dim() == 3 and global_init.shape[0] != n_cls:
            raise ValueError(
                f"global_init: a class-specific P_G needs one context per class ({n_cls}), "
                f"got {global_init.shape[0]}"
            )
        if global_init.dim() not in (2, 3):
            raise ValueError(
                "global_init: expected shape (n_ctx, ctx_dim) or (n_cls, n_ctx, ctx_dim), "
                f"got {tuple(global_init.shape)}"
            )
        self.global_ctx = nn.Parameter(global_init.detach().clone().float())
        self.local_ctx = nn.Parameter(torch.zeros(n_cls, *global_init.shape[-2:]))

    @property
    def n_ctx(self) -> int:
        """Number of context vectors."""
        return self.global_ctx.shape[-2]

    @property
    def class_specific(self) -> bool:
        """Whether ``P_G`` holds one context per class (shared class-level context)."""
        return self.global_ctx.dim() == 3

    @property
    def n_cls(self) -> int:
        """Number of classes."""
        return self.local_ctx.shape[0]

    def forward(self, use_local: bool = True) -> torch.Tensor:
        """Per-class context vectors, shape ``(n_cls, n_ctx, ctx_dim)``.

        Parameters
        ----------
        use_local : bool
            Add the class-level residual ``P_L`` (personalized prompt); when false, every
            class gets ``P_G`` alone (the shared prompt, as PromptFL uses it).
        """
        shared = (
            self.global_ctx
            if self.class_specific
            else self.global_ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        )
        return shared + self.local_ctx if use_local else shared

    def personalized(self) -> torch.Tensor:
        """``P_i = P_G + P_L``, detached, shape ``(n_cls, n_ctx, ctx_dim)``."""
        return self.forward(use_local=True).detach()

    def parameter_groups(self, train_global: bool, train_local: bool) -> list[dict]:
        """Optimizer parameter groups, so the shared and private parts stay separable.

        Parameters
        ----------
        train_global, train_local : bool
            Which parts are trained this round.

        Returns
        -------
        list of dict
            ``[{"params": [global_ctx], "name": "global"}, {"params": [local_ctx], ...}]``
            for the parts that train.
        """
        groups = []
        if train_global:
            groups.append({"params": [self.global_ctx], "name": "global"})
        if train_local:
            groups.append({"params": [self.local_ctx], "name": "local"})
        if not groups:
            raise ValueError("parameter_groups: nothing to train (both parts frozen)")
        return groups

    def load_parts(
        self, global_ctx: torch.Tensor | None = None, local_ctx: torch.Tensor | None = None
    ) -> None:
        """Overwrite ``P_G`` and/or ``P_L`` in place, checking shapes.

        Parameters
        ----------
        global_ctx : torch.Tensor, optional
            New ``P_G``, shape ``(n_ctx, ctx_dim)``.
        local_ctx : torch.Tensor, optional
            New ``P_L``, shape ``(n_cls, n_ctx, ctx_dim)``.

        Raises
        ------
        ValueError
            If a shape does not match this prompt's.
        """
        for name, new in (("global_ctx", global_ctx), ("local_ctx", local_ctx)):
            if new is None:
                continue
            param: nn.Parameter = getattr(self, name)
            if tuple(new.shape) != tuple(param.shape):
                raise ValueError(
                    f"{name}: expected shape {tuple(param.shape)}, got {tuple(new.shape)} "
                    "(was the prompt made with another backbone, n-ctx or class list?)"
                )
            with torch.no_grad():
                param.copy_(new.to(param.device, param.dtype))


def initial_global_context(backbone, config: PromptConfig) -> torch.Tensor:
    """The ``P_G`` every site starts from: a phrase's embeddings or seeded noise.

    Parameters
    ----------
    backbone : PromptableBackbone
        Provides ``phrase_embedding`` and ``ctx_dim``.
    config : PromptConfig
        Shape and initialisation.

    Returns
    -------
    torch.Tensor
        ``(n_ctx, ctx_dim)`` on the CPU, identical on every site for the same config.
    """
    if config.ctx_init:
        return backbone.phrase_embedding(config.ctx_init, config.n_ctx).detach().float().cpu()
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randn(config.n_ctx, backbone.ctx_dim, generator=generator) * config.init_std
