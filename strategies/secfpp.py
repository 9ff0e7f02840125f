"""SecFPP: secret-shared adaptive clustering (SecPC) and cluster-wise secure aggregation.

The round itself is one explicit workflow (:mod:`strategies.secfpp_workflow`); this module
runs it round after round, publishes one :class:`~strategies.base.RoundRecord` per round,
closes the run with one evaluation exchange, and checkpoints the server state after every
round. Evaluation rides on the next round's ``train`` message: a round's record is published as
soon as its evaluation arrives.

The plaintext twin (:class:`Clustered`) shares every line with SecFPP except the crypto
(``SecFPPWorkflow.query``): the same sampling, groups, clustering, prompt updates and
checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from secpc.protocol import ProtocolConfig

from .base import LocalTraining, PromptStrategy, RoundRecord, SiteResult, natural_key
from .clustering import ClusteringConfig, SelectionConfig, SelectionState
from .results_io import write_json_atomic
from .secfpp_workflow import FederationState, RoundState, SecFPPWorkflow, ServerView

log = logging.getLogger("secfpp.server")

__all__ = ["Clustered", "SecFPP", "ServerView"]


class SecFPP(PromptStrategy):
    """Secure federated prompt personalization with secret-shared clustering.

    Parameters
    ----------
    training : LocalTraining
        Local training hyperparameters.
    protocol : ProtocolConfig
        LCC thresholds, quantization and projection.
    clustering : ClusteringConfig
        Adaptive k-means rules.
    min_sites, fraction_train, on_round_end
        As in :class:`PromptStrategy`.
    site_identities : str
        Path of ``site-identities.yaml``; empty trusts the identity keys sites announce on first
        use (simulation only).
    checkpoint_path : Path, optional
        Where the server state is written after every round.
    site_wait_timeout : float
        Seconds a round waits for enough connected sites before it is skipped.
    selection : SelectionConfig, optional
        The verified per-round cluster selection; ``None`` uses the landmark-and-Lloyd rule.
    oracle : callable, optional
        Simulation only: site id to its true domain, used as the clusters.
    """

    mode_name = "secfpp"

    def __init__(
        self,
        training: LocalTraining,
        protocol: ProtocolConfig | None = None,
        clustering: ClusteringConfig | None = None,
        min_sites: int = 2,
        fraction_train: float = 1.0,
        on_round_end: Callable[[RoundRecord], None] | None = None,
        site_identities: str = "",
        checkpoint_path: Path | None = None,
        site_wait_timeout: float = 0.0,
        selection: SelectionConfig | None = None,
        oracle=None,
    ) -> None:
        super().__init__(
            mode=self.mode_name,
            training=training,
            min_sites=min_sites,
            fraction_train=fraction_train,
            on_round_end=on_round_end,
        )
        self.protocol = protocol or ProtocolConfig()
        self.clustering = clustering or ClusteringConfig()
        self.site_identities = site_identities
        self.checkpoint_path = checkpoint_path
        self.site_wait_timeout = site_wait_timeout
        self.selection = selection
        self.oracle = oracle
        self.state = FederationState()
        self.round_offset = 0
        # Set on resume: the checkpointed round whose evaluation the stopped run never got
        # (evaluations ride on the next exchange); this run's first exchange measures it.
        self.unmeasured: RoundRecord | None = None
        self.views: list[ServerView] = []

    @classmethod
    def from_settings(cls, settings, on_round_end=None, checkpoint_path=None) -> SecFPP:
        """Build the strategy from the ServerApp's settings (``server_app.settings``)."""
        return cls(
            training=settings.training,
            protocol=ProtocolConfig(
                k=settings.secure_k,
                t=settings.secure_t,
                update_scale_bits=settings.update_scale_bits,
                update_bound=settings.update_bound,
                z_dim=settings.z_dim,
                z_scale_bits=settings.z_scale_bits,
                z_bound=settings.z_bound,
                projection_seed=settings.seed,
                committee=settings.committee_size,
                descriptor_prompt_weight=settings.descriptor_prompt_weight,
                **(
                    {
                        "dp_epsilon": settings.dp_epsilon,
                        "dp_delta": settings.dp_delta,
                        "dp_rounds": settings.num_server_rounds,
                        "dp_clip": settings.dp_clip,
                        "dp_min_cluster_size": settings.min_cluster_size,
                    }
                    if settings.dp == "distributed"
                    else {}
                ),
            ),
            clustering=ClusteringConfig(
                max_clusters=settings.max_clusters,
                min_cluster_size=settings.min_cluster_size,
                split_ratio=settings.split_ratio,
                merge_ratio=settings.merge_ratio,
                seed=settings.seed,
            ),
            min_sites=settings.min_sites,
            fraction_train=settings.fraction_train,
            on_round_end=on_round_end,
            site_identities=settings.site_identities,
            checkpoint_path=checkpoint_path,
            site_wait_timeout=settings.site_wait_timeout,
            selection=(
                SelectionConfig(
                    max_clusters=settings.max_clusters,
                    min_cluster_size=settings.min_cluster_size,
                    score_threshold=settings.cluster_score_threshold,
                    seed=settings.seed,
                )
                if settings.cluster_rule == "verified"
                else None
            ),
            oracle=_oracle(settings) if settings.cluster_oracle else None,
        )

    # Compatibility for readers of the old attributes (tests, benchmarks).
    @property
    def labels(self) -> dict[str, int]:
        """Site id to cluster label."""
        return self.state.labels

    @property
    def cluster_prompts(self) -> dict[int, np.ndarray]:
        """Cluster label to its ``P_G`` offset."""
        return self.state.cluster_prompts

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info(
            "%s: %s, %s, %s", type(self).__name__, self.training, self.protocol, self.clustering
        )

    def workflow(self, round_timeout: float) -> SecFPPWorkflow:
        """The round workflow with this strategy's settings."""
        return SecFPPWorkflow(
            mode=self.mode_name,
            training=self.training.to_config(),
            protocol=self.protocol,
            clustering=self.clustering,
            site_identities=self.site_identities,
            fraction_train=self.fraction_train,
            round_timeout=round_timeout,
            site_wait_timeout=self.site_wait_timeout,
            selection=self.selection,
            oracle=self.oracle,
        )

    def check_before_start(self, grid: Grid) -> None:
        """Before round 1: enough sites to decode, and no setting that could wrap the field.

        Waits up to ``site-wait-timeout`` for enough sites to connect.

        Raises
        ------
        ValueError
            Naming ``secure-k``/``secure-t``/``min-cluster-size`` when too few sites are
            connected, or the scale key and the largest value that fits the field.
        """
        needed = max(self.protocol.z_params.quadratic_threshold, self.clustering.min_cluster_size)
        deadline = time.monotonic() + self.site_wait_timeout
        connected = len(list(grid.get_node_ids()))
        while connected < needed and time.monotonic() < deadline:
            log.warning("waiting for sites: %d connected, %d needed", connected, needed)
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            connected = len(list(grid.get_node_ids()))
        if connected < needed:
            raise ValueError(
                f"{connected} sites are connected, but secure-k={self.protocol.k}, "
                f"secure-t={self.protocol.t} and min-cluster-size="
                f"{self.clustering.min_cluster_size} need at least {needed}: lower secure-t "
                "or secure-k, or add sites"
            )
        if self.protocol.committee and self.protocol.committee < needed:
            raise ValueError(
                f"run config 'committee-size' = {self.protocol.committee}: a committee must "
                f"hold at least 2(k+t-1)+1 = {self.protocol.z_params.quadratic_threshold} sites"
                " to decode distances; raise it or set 0 (automatic)"
            )
        # The update's length is only known from the sites; the linear bound does not depend
        # on it, so one coordinate stands in for all.
        self.protocol.check(connected, update_dim=1)
        if self.protocol.dp_epsilon and self.protocol.update_scale_bits > 16:
            raise ValueError(
                f"run config 'update-scale-bits' = {self.protocol.update_scale_bits}: with "
                'dp="distributed" the noise is added at this scale and outgrows the sampler; '
                "set update-scale-bits=16 or lower"
            )

    # ------------------------------------------------------------------ the run
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600.0,
        **_,
    ):
        """Run ``num_rounds`` rounds of the workflow and one final evaluation exchange."""
        self.check_before_start(grid)
        workflow = self.workflow(timeout)
        total = num_rounds + self.round_offset
        pending: list[RoundRecord] = [self.unmeasured] if self.unmeasured else []
        last_nodes: dict[str, int] = {}
        try:
            for r in range(1, num_rounds + 1):
                record, nodes = self._round(workflow, grid, r + self.round_offset, total, pending)
                last_nodes = nodes or last_nodes
                pending.append(record)
            if pending and last_nodes:
                self._close(pending, workflow.evaluate(grid, self.state, total, last_nodes))
        except BaseException:
            # A stop or failure before the exchange that evaluates these rounds: keep what
            # they did; a resumed run measures the last one (``unmeasured``).
            for record in pending:
                record.extra["evaluation"] = "not measured: the run ended before it"
            raise
        finally:
            for record in pending:
                self._publish(record)
        return Result(arrays=self._current_arrays())

    def _round(
        self,
        workflow: SecFPPWorkflow,
        grid: Grid,
        real: int,
        total: int,
        pending: list[RoundRecord],
    ) -> tuple[RoundRecord, dict[str, int]]:
        """One round of the workflow; its record and the nodes that took part.

        The round's train exchange carries the evaluations of the prompts the earlier rounds
        left, which close the ``pending`` records.
        """
        log.info("[ROUND %d/%d] %s", real, total, self.mode_name)
        started = time.perf_counter()
        rnd = workflow.sample(grid, self.state, real)
        if not rnd.skipped:
            workflow.keys(grid, self.state, rnd)
        if not rnd.skipped:
            workflow.train(grid, self.state, rnd)
            self._close(pending, rnd.evaluations)
            workflow.query(grid, self.state, rnd, self.meter)
        record = RoundRecord(server_round=real)
        if self.meter is not None:
            for reply in rnd.replies.values():
                self.meter.add_seconds(real, "crypto_site", reply.crypto_seconds)
                self.meter.add_seconds(real, "train_site", reply.train_seconds)
        if rnd.skipped or rnd.sums is None:
            reason = rnd.skipped or "nothing decoded"
            log.warning("round %d skipped: %s; prompts and clusters unchanged", real, reason)
            record.extra = {"skipped": reason}
        else:
            record.train_metrics = workflow.update(self.state, rnd)
            record.extra = self._round_facts(rnd)
        self.views.append(rnd.view)
        self._checkpoint(real)
        record.seconds = time.perf_counter() - started
        return record, rnd.nodes if not rnd.skipped else {}

    def _round_facts(self, rnd: RoundState) -> dict:
        sizes = rnd.view.cluster_sizes
        facts = {}
        if self.protocol.dp_epsilon and self.state.update_dim:
            from secpc.noise import epsilon_spent

            self.state.dp_releases += 1
            dim = self.state.update_dim
            facts["epsilon"] = epsilon_spent(
                self.protocol.dp_mu(dim),
                self.state.dp_releases,
                self.protocol.distributed_dp(dim),
            )
        site_eps = [r.epsilon for r in rnd.replies.values() if r.epsilon is not None]
        if site_eps:
            facts["epsilon"] = max(site_eps)  # DP-SGD: the worst site's accountant
        return facts | {
            "assignment": dict(self.state.labels),
            "num_clusters": len(sizes),
            "cluster_sizes": {str(k): v for k, v in sizes.items()},
            "senders": list(rnd.senders),
            "excluded": sorted(self.state.excluded, key=natural_key),
        }

    def _close(self, pending: list[RoundRecord], evaluations: dict) -> None:
        """Publish the waiting records with the evaluations that measure their prompts.

        A round that changed nothing leaves the prompts as they were, so the same evaluation
        measures it and the round before it.
        """
        if not evaluations:
            return
        while pending:
            record = pending.pop(0)
            record.sites = [
                SiteResult(
                    node_id=self.state_node(site),
                    site_id=site,
                    accuracy=e.accuracy,
                    loss=e.loss,
                    num_examples=e.examples,
                )
                for site, e in evaluations.items()
            ]
            self._publish(record)

    def state_node(self, site: str) -> int:
        """Node id of a site (0 if unknown)."""
        return next((n for n, s in self.state.site_of_node.items() if s == site), 0)

    def _current_arrays(self) -> ArrayRecord:
        return ArrayRecord(
            {
                f"cluster-{c}": Array(p.astype(np.float32))
                for c, p in sorted(self.state.cluster_prompts.items())
            }
        )

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, server_round: int) -> None:
        """Write the server state after a round (atomically)."""
        if self.checkpoint_path is not None:
            write_json_atomic(self.checkpoint_path, self.state_dict(server_round))

    def state_dict(self, server_round: int) -> dict:
        """The resumable server state, JSON-ready."""
        return {
            "version": 2,
            "strategy": self.mode_name,
            "completed_round": server_round,
            "labels": self.state.labels,
            "cluster_prompts": {str(k): v.tolist() for k, v in self.state.cluster_prompts.items()},
            "excluded": self.state.excluded,
            "dp_releases": self.state.dp_releases,
            "committed_round": self.state.committed_round,
            "universe": self.state.universe,
            "selection": self.state.selection.to_dict() if self.state.selection else None,
            "protocol": self.protocol.to_config(),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore from :meth:`state_dict`; return the completed round to resume after.

        Raises
        ------
        ValueError
            If the checkpoint belongs to another strategy or other ``secure-*`` settings.
        """
        if state.get("version") != 2 or state.get("strategy") != self.mode_name:
            raise ValueError(
                f"checkpoint is for strategy {state.get('strategy')!r} (version "
                f"{state.get('version')}), not {self.mode_name!r} version 2"
            )
        if state.get("protocol") != self.protocol.to_config():
            raise ValueError(
                "checkpoint was written with other secure-* settings; resume with the same ones"
            )
        self.state.labels = {str(k): int(v) for k, v in state["labels"].items()}
        self.state.cluster_prompts = {
            int(k): np.asarray(v, dtype=np.float64) for k, v in state["cluster_prompts"].items()
        }
        self.state.excluded = {str(k): str(v) for k, v in state.get("excluded", {}).items()}
        self.state.dp_releases = int(state.get("dp_releases", 0))
        self.state.committed_round = int(state.get("committed_round", 0))
        self.state.universe = [str(s) for s in state.get("universe", [])]
        if state.get("selection"):
            self.state.selection = SelectionState.from_dict(state["selection"])
        self.round_offset = int(state["completed_round"])
        return self.round_offset


class Clustered(SecFPP):
    """The plaintext twin of :class:`SecFPP` (ablation; reference for equivalence tests)."""

    mode_name = "clustered"


def _oracle(settings):
    """Simulation's true domain of ``site-<i>``: ``i mod num-domains`` (the partition's rule).

    Read from the run config the simulation was built from, never from anything a site sends.
    """
    domains = max(1, int(settings.num_domains))

    def domain(site: str) -> int:
        tail = site.rsplit("-", 1)[-1]
        if not tail.isdigit():
            raise ValueError(f"cluster-oracle: {site!r} is not a simulated site id (site-<i>)")
        return int(tail) % domains

    return domain
