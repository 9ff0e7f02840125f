"""The foundation baselines, each a :class:`PromptStrategy` with a different sharing mode.

* ``zeroshot``: no training; every site evaluates the initial prompt (``ctx-init``).
* ``local``: each site trains ``P_G`` and ``P_L`` alone; nothing leaves the site.
* ``promptfl``: one shared prompt, averaged over all sites (FedAvg of ``P_G``, no ``P_L``).
* ``hierarchical``: ``P_G`` averaged over all sites, ``P_L`` kept on each site.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from .base import PromptStrategy, require_some_replies


class ZeroShot(PromptStrategy):
    """Evaluate the hand-written initial prompt; no site trains."""

    eval_mode = "zeroshot"

    def __init__(self, **kwargs) -> None:
        super().__init__(mode="global", **kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send nothing: zero-shot has no training."""
        self._begin_round(server_round)
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Nothing to aggregate."""
        return None, None


class LocalOnly(PromptStrategy):
    """Each site trains its whole prompt on its own data; replies carry metrics only."""

    def __init__(self, **kwargs) -> None:
        super().__init__(mode="local", **kwargs)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the training metrics; there are no arrays to combine."""
        replies = list(replies)
        require_some_replies(server_round, replies, "train")
        valid, _ = self._check_and_log_replies(replies, is_train=False)
        if not valid:
            return None, None
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        self._begin_round(server_round).train_metrics = {k: float(v) for k, v in metrics.items()}
        return None, metrics


class PromptFL(PromptStrategy):
    """FedAvg of a single shared prompt (PromptFL)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(mode="global", **kwargs)


class Hierarchical(PromptStrategy):
    """FedAvg of ``P_G`` over all sites; each site keeps its class-level ``P_L``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(mode="hierarchical", **kwargs)
