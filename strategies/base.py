"""Shared machinery of every prompt strategy: round config, per-site evaluation records.

The baselines and SecFPP differ in what a site shares and how the server combines it; they
all send the same training hyperparameters, evaluate every site's personalized prompt on its
own held-out data, and keep one :class:`RoundRecord` per round for the results file.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .metering import MeteredGrid

log = logging.getLogger("secfpp.server")


@dataclass(frozen=True)
class LocalTraining:
    """Hyperparameters sent to every site with each training message.

    Attributes
    ----------
    local_epochs : int
        Passes over the site's training images per round.
    learning_rate : float
        Adam learning rate of the prompt parts.
    batch_size : int
        Images per step.
    """

    local_epochs: int = 2
    learning_rate: float = 0.01
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.local_epochs < 1:
            raise ValueError(f"local-epochs: expected an integer >= 1, got {self.local_epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning-rate: expected a number > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch-size: expected an integer >= 1, got {self.batch_size}")

    def to_config(self) -> dict[str, int | float]:
        """The keys the ClientApp reads."""
        return {
            "local-epochs": self.local_epochs,
            "learning-rate": self.learning_rate,
            "batch-size": self.batch_size,
        }


@dataclass
class SiteResult:
    """One site's evaluation in one round."""

    node_id: int
    site_id: str
    accuracy: float
    loss: float
    num_examples: int


@dataclass
class RoundRecord:
    """Everything the results file keeps about one round.

    Attributes
    ----------
    server_round : int
        Round number, from 1.
    sites : list of SiteResult
        Per-site personalized evaluation, sorted by site id.
    train_metrics : dict
        Example-weighted means of the sites' training metrics.
    seconds : float
        Wall-clock time of the round on the server.
    extra : dict
        Strategy-specific facts (e.g. cluster assignments), JSON-serialisable.
    cost : dict
        Exchanges, bytes both ways and seconds of the round, from
        :class:`strategies.metering.MeteredGrid` (the same clock for every strategy).
    """

    server_round: int
    sites: list[SiteResult] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        """Unweighted mean of the sites' personalized accuracies."""
        accs = [s.accuracy for s in self.sites]
        return sum(accs) / len(accs) if accs else float("nan")

    @property
    def worst_accuracy(self) -> float:
        """Lowest personalized accuracy of any site."""
        return min((s.accuracy for s in self.sites), default=float("nan"))

    def to_json(self) -> dict:
        """A JSON-ready dict (NaN, e.g. a round nobody evaluated, becomes ``null``)."""
        out = asdict(self)
        out["mean_accuracy"] = self.mean_accuracy
        out["worst_accuracy"] = self.worst_accuracy
        return _nan_to_none(out)


class PromptStrategy(FedAvg):
    """FedAvg-shaped strategy whose sites train hierarchical prompts.

    Parameters
    ----------
    mode : str
        What sites train and share: ``global`` (one shared prompt), ``hierarchical``
        (``P_G`` shared, ``P_L`` kept) or ``local`` (nothing shared).
    training : LocalTraining
        Hyperparameters sent with each training message.
    min_sites : int
        Sites that must be connected before a round starts, and the fewest sampled.
    fraction_train : float
        Share of connected sites sampled for training each round.
    on_round_end : callable, optional
        Called with each finished :class:`RoundRecord` (the ServerApp prints and saves it).
    """

    eval_mode: str = ""

    def __init__(
        self,
        mode: str,
        training: LocalTraining,
        min_sites: int = 2,
        fraction_train: float = 1.0,
        on_round_end: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=min_sites,
            min_evaluate_nodes=min_sites,
            min_available_nodes=min_sites,
        )
        self.mode = mode
        self.eval_mode = self.eval_mode or mode
        self.training = training
        self.on_round_end = on_round_end
        self.records: list[RoundRecord] = []
        self._current: RoundRecord | None = None
        self._round_start = 0.0
        #: Set by the ServerApp: the metering grid every exchange goes through.
        self.meter: MeteredGrid | None = None

    @classmethod
    def from_settings(cls, settings, on_round_end=None, checkpoint_path=None) -> PromptStrategy:
        """Build the strategy from the ServerApp's settings (``server_app.settings``)."""
        return cls(
            training=settings.training,
            min_sites=settings.min_sites,
            fraction_train=settings.fraction_train,
            on_round_end=on_round_end,
        )

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info("%s: mode=%s, %s", type(self).__name__, self.mode, self.training)

    def _begin_round(self, server_round: int) -> RoundRecord:
        if self._current is None or self._current.server_round != server_round:
            self._current = RoundRecord(server_round=server_round)
            self._round_start = time.perf_counter()
        return self._current

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the current ``P_G`` (empty in round 1: sites start from the shared init)."""
        self._begin_round(server_round)
        config = ConfigRecord({**dict(config), **self.training.to_config(), "mode": self.mode})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Example-weighted average of the returned ``P_G`` (FedAvg) and of the metrics."""
        replies = list(replies)
        require_some_replies(server_round, replies, "train")
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            self._begin_round(server_round).train_metrics = {
                k: float(v) for k, v in metrics.items()
            }
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every site evaluates its personalized prompt on its own held-out images."""
        self._begin_round(server_round)
        config = ConfigRecord({**dict(config), "mode": self.eval_mode})
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Record per-site accuracies, close the round, and return the weighted means."""
        replies = list(replies)
        require_some_replies(server_round, replies, "evaluate")
        record = self._begin_round(server_round)
        for reply in replies:
            if reply.has_error():
                log.warning(
                    "evaluate: site node %d failed: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            site = reply.content.config_records.get("site", ConfigRecord())
            record.sites.append(
                site_result(reply, str(site.get("site-id", reply.metadata.src_node_id)))
            )
        record.seconds = time.perf_counter() - self._round_start
        self._current = None
        self._publish(record)
        return super().aggregate_evaluate(server_round, replies)

    def _publish(self, record: RoundRecord) -> None:
        """Sort the round's sites, keep the record, and hand it to ``on_round_end``."""
        record.sites.sort(key=lambda s: natural_key(s.site_id))
        if self.meter is not None:
            record.cost = self.meter.cost(record.server_round).to_json()
        self.records.append(record)
        if self.on_round_end is not None:
            self.on_round_end(record)


def site_result(
    reply: Message,
    site_id: str,
    accuracy_key: str = "accuracy",
    loss_key: str = "loss",
    count_key: str = "num-examples",
) -> SiteResult:
    """One site's evaluation, read from a reply's ``metrics`` record.

    The keys differ between an ``evaluate`` reply and the evaluation a SecFPP ``train`` reply
    carries (``pre-accuracy``, ``pre-loss``, ``test-examples``).
    """
    metrics = reply.content["metrics"]
    return SiteResult(
        node_id=reply.metadata.src_node_id,
        site_id=site_id,
        accuracy=float(metrics[accuracy_key]),
        loss=float(metrics[loss_key]),
        num_examples=int(metrics[count_key]),
    )


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


class NoSiteRepliedError(RuntimeError):
    """Every site failed in a round: the run stops instead of reporting empty results."""


def require_some_replies(server_round: int, replies: list[Message], what: str) -> None:
    """Stop the run when not a single site answered ``what`` successfully.

    Raises
    ------
    NoSiteRepliedError
        With the first site error, which usually names the cause.
    """
    if not replies or any(not r.has_error() for r in replies):
        return
    first = (replies[0].error.reason or "").strip().splitlines()
    raise NoSiteRepliedError(
        f"round {server_round}: no site answered '{what}' successfully ({len(replies)} failed); "
        f"first error: {first[-1] if first else 'unknown'}"
    )


def natural_key(text: str) -> tuple:
    """Sort key under which ``site-10`` comes after ``site-9``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))
