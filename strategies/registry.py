"""Strategies by their run-config name (``strategy = "..."``)."""

from __future__ import annotations

from .base import PromptStrategy
from .baselines import Hierarchical, LocalOnly, PromptFL, ZeroShot
from .secfpp import Clustered, SecFPP

STRATEGIES: dict[str, type[PromptStrategy]] = {
    "zeroshot": ZeroShot,
    "local": LocalOnly,
    "promptfl": PromptFL,
    "hierarchical": Hierarchical,
    "secfpp": SecFPP,
    "clustered": Clustered,
}


def strategy_class(name: str) -> type[PromptStrategy]:
    """The strategy class registered under ``name``.

    Raises
    ------
    ValueError
        If no strategy has that name (the message lists the known ones).
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"run config 'strategy': expected one of {sorted(STRATEGIES)}, got {name!r}"
        )
    return STRATEGIES[name]
