"""SecFPP: secret-shared adaptive clustering (SecPC) and cluster-wise secure aggregation.

One round is two exchanges (``DESIGN.md``):

1. ``train``: each sampled site gets its cluster's ``P_G``, trains, and returns metrics plus
   its ``P_G`` update and reduced prompt ``z_i`` as LCC shares sealed for each participant
   (``secfpp``), or in the clear (``clustered``, the plaintext twin used as an ablation and as
   the reference of the equivalence tests). Evaluation rides on this message: a site first
   scores the prompt the previous round left it with.
2. ``query.secpc``: the server relays to each participant the ciphertexts addressed to it; each
   answers coded cluster sums and coded scaled distances. The server decodes the cluster sums
   (new ``P_G`` per cluster) and the distances (one Lloyd step, adaptive split/merge; see
   :mod:`strategies.clustering`).

Key setup (``query.keysetup``) runs once per run, and again only when a sampled site has no key
in the directory (the twin uses the same exchange only to learn site ids). The twin shares every line with SecFPP except the crypto: the same sampling,
groups, clustering, prompt updates and checkpoints; only how sums and distances are obtained
differs (:meth:`SecFPP._secure_results` vs :meth:`SecFPP._plain_results`).

What the server learns: who took part, cluster assignments and sizes, scaled site-to-centre
distances, and each cluster's summed ``P_G`` update: one :class:`ServerView` per round, kept in
:attr:`SecFPP.views`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from secpc import KeyDirectory, NotEnoughAnswersError, SecureProtocolError, field_from_array
from secpc.protocol import (
    ProtocolConfig,
    decode_distances,
    decode_sums,
    groups_from_labels,
    load_site_identities,
    plain_cluster_sums,
    plain_scaled_distances,
)

from .base import (
    LocalTraining,
    PromptStrategy,
    RoundRecord,
    natural_key,
    require_some_replies,
    site_result,
)
from .clustering import (
    ClusteringConfig,
    initial_labels,
    landmark_groups,
    lloyd_step,
    true_sq_distances,
)
from .results_io import write_json_atomic

log = logging.getLogger("secfpp.server")

OFFSET_KEY = "global-offset"


@dataclass
class ServerView:
    """Everything the SecFPP server learns in one round, and nothing else.

    Attributes
    ----------
    participants : list of str
        Sites sampled for the round.
    senders : list of str
        Sites whose shares were used.
    assignment : dict
        Site id to cluster label after the round.
    cluster_sizes : dict
        Cluster label to member count.
    scaled_distances : list of list of float
        ``‖|C_c| z_i − Σ_{m∈C_c} z_m‖²`` per participant (rows) and measured group (columns).
    cluster_update_sums : dict
        Group index to the summed ``P_G`` update of its members (as a list).
    """

    participants: list[str] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)
    assignment: dict[str, int] = field(default_factory=dict)
    cluster_sizes: dict[int, int] = field(default_factory=dict)
    scaled_distances: list[list[float]] = field(default_factory=list)
    cluster_update_sums: dict[int, list[float]] = field(default_factory=dict)


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
        Where the server state is written after every completed round.
    secure : bool
        ``False`` makes the plaintext twin (``clustered``).
    max_rejection_retries : int
        How often exchange 2 is repeated without senders whose shares a participant rejected.
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
        secure: bool = True,
        max_rejection_retries: int = 2,
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
        self.secure = secure
        self.max_rejection_retries = max_rejection_retries
        # Checkpointed server state: the assignment, and each cluster's P_G kept as the
        # flattened offset from the public initial prompt (which only the sites compute).
        self.labels: dict[str, int] = {}
        self.cluster_prompts: dict[int, np.ndarray] = {}
        self.round_offset = 0
        # Per-run state: a resumed run is a new Flower run, with new session keys.
        self.site_of_node: dict[int, str] = {}
        self.directory: bytes = b""
        self.identities: dict[str, bytes] = {}
        self.num_rounds = 0
        self.views: list[ServerView] = []
        self.exchanges: dict[int, int] = {}
        self._grid: Grid | None = None
        self._plan: dict = {}
        self._pending: RoundRecord | None = None

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
        )

    # ------------------------------------------------------------------ run control
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, **kwargs):
        """Remember how many rounds run, so the last one can close with an evaluation."""
        self.num_rounds = num_rounds
        return super().start(grid, initial_arrays, num_rounds=num_rounds, **kwargs)

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info(
            "%s: %s, %s, %s", type(self).__name__, self.training, self.protocol, self.clustering
        )

    def _count_exchange(self, server_round: int) -> None:
        self.exchanges[server_round] = self.exchanges.get(server_round, 0) + 1

    # ------------------------------------------------------------------ key setup
    def _ensure_keys(self, grid: Grid, node_ids: list[int], server_round: int) -> list[int]:
        """Run key setup when a sampled site has no key yet; return the nodes with keys."""
        if all(self.site_of_node.get(n) in self.identities for n in node_ids) and (
            self.directory or not self.secure
        ):
            return node_ids
        config = ConfigRecord({"server-round": server_round, "mode": self.mode_name})
        # group_id carries the round, as in Flower's own strategies' logs and the grid's records.
        messages = [
            Message(RecordDict({"config": config}), n, "query.keysetup", group_id=str(server_round))
            for n in node_ids
        ]
        replies = list(grid.send_and_receive(messages))
        self._count_exchange(server_round)
        announcements: dict[str, bytes] = {}
        announced_keys: dict[str, bytes] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or "keysetup" not in reply.content.config_records:
                reason = reply.error.reason if reply.has_error() else "no 'keysetup' record"
                log.warning("key setup: node %d left out: %s", node, reason)
                continue
            record = reply.content["keysetup"]
            try:
                site = str(record["site-id"])
                if self.secure:
                    announcements[site] = bytes(record["announcement"])
                    announced_keys[site] = bytes(record["identity-public"])
            except (KeyError, TypeError) as exc:
                log.warning("key setup: node %d sent a malformed reply (%s); left out", node, exc)
                continue
            self.site_of_node[node] = site
        if not self.secure:
            # The twin only learns site ids here: same exchange, no keys.
            self.identities.update({s: b"" for s in self.site_of_node.values()})
            return [n for n in node_ids if n in self.site_of_node]
        if self.site_identities:
            known = load_site_identities(self.site_identities)
        else:
            log.warning(
                "key setup: no site-identities file; trusting the identity keys sites announce "
                "on first use (simulation only)"
            )
            known = {**announced_keys, **self.identities}
        run_id = int(grid.run.run_id)
        good: dict[str, bytes] = {}
        for site, announcement in announcements.items():
            try:
                KeyDirectory.verify([announcement], known, run_id)
                good[site] = announcement
            except SecureProtocolError as exc:
                log.warning("key setup: %s left out: %s: %s", site, type(exc).__name__, exc)
        directory = KeyDirectory.verify(list(good.values()), known, run_id)
        self.directory = directory.to_bytes()
        self.identities = {s: known[s] for s in directory.sites}
        return [n for n in node_ids if self.site_of_node.get(n) in good]

    # ------------------------------------------------------------------ exchange 1
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample sites, (re)run key setup if needed, and send each its cluster's ``P_G``."""
        from flwr.serverapp.strategy.strategy_utils import sample_nodes

        self._grid = grid
        effective = server_round + self.round_offset
        self._begin_round(effective)
        connected = list(grid.get_node_ids())
        size = max(int(len(connected) * self.fraction_train), self.min_train_nodes)
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, size)
        node_ids = sorted(node_ids)
        node_ids = self._ensure_keys(grid, node_ids, effective)
        self._count_exchange(effective)
        nodes = {self.site_of_node.get(n, f"node-{n}"): n for n in node_ids}
        participants = sorted(nodes)
        needed = self.protocol.z_params.quadratic_threshold
        if len(participants) < needed:
            raise ValueError(
                f"round {effective}: {len(participants)} sites can take part, but secure-k="
                f"{self.protocol.k} and secure-t={self.protocol.t} need at least {needed}: "
                "lower secure-t or secure-k, or add sites"
            )
        sum_labels, dist_labels, dist_columns = self._plan_groups(participants)
        self._plan = {
            "participants": participants,
            "nodes": nodes,
            "sum_labels": sum_labels,
            "dist_labels": dist_labels,
            "dist_columns": dist_columns,
        }
        base = ConfigRecord(
            {
                **self.training.to_config(),
                **self.protocol.to_config(),
                "mode": self.mode_name,
                "server-round": effective,
                "participants": participants,
                "sum-labels": sum_labels,
                "dist-labels": dist_labels,
                "n-dist-groups": len(dist_columns),
            }
        )
        if self.secure:
            base.update(self._directory_config())
        messages = []
        for site, node in nodes.items():
            content = RecordDict({"config": base})
            offset = self._prompt_for(site)
            if offset is not None:
                content["arrays"] = ArrayRecord({OFFSET_KEY: Array(offset.astype(np.float32))})
            messages.append(Message(content, node, "train", group_id=str(effective)))
        return messages

    def _directory_config(self) -> dict:
        return {
            "key-directory": self.directory,
            "identity-sites": list(self.identities),
            "identity-keys": list(self.identities.values()),
        }

    def _prompt_for(self, site: str) -> np.ndarray | None:
        label = self.labels.get(site)
        if label is not None and label in self.cluster_prompts:
            return self.cluster_prompts[label]
        if self.cluster_prompts:
            # A site new to the federation starts from the mean of the cluster prompts.
            return np.mean(list(self.cluster_prompts.values()), axis=0)
        return None

    def _plan_groups(self, participants: list[str]) -> tuple[list[int], list[int], list[int]]:
        """Groups to sum (the clusters the sites trained in) and to measure distances against.

        Returns ``(sum_labels, dist_labels, dist_columns)``: per participant the index of its
        sum group and of its distance group (``-1``: none), and per distance group its cluster
        label (``-1`` for a landmark group). A cluster with fewer sampled members than
        ``min-cluster-size`` is neither summed nor measured, so no decoded value comes from
        fewer sites than that.
        """
        min_size = self.clustering.min_cluster_size
        if not self.labels:
            # First SecPC step: all sites trained from the same prompt; distances are taken to
            # landmark groups, whose distance profiles seed the clustering.
            everyone = 0 if len(participants) >= min_size else -1
            groups = landmark_groups(len(participants), self.clustering)
            dist_labels = [-1] * len(participants)
            for g, members in enumerate(groups):
                for m in members:
                    dist_labels[m] = g
            return [everyone] * len(participants), dist_labels, [-1] * len(groups)
        current = [self.labels.get(p, -1) for p in participants]
        kept = sorted({c for c in current if c >= 0 and current.count(c) >= min_size})
        index = {c: i for i, c in enumerate(kept)}
        labels = [index.get(c, -1) for c in current]
        return labels, list(labels), kept

    # ------------------------------------------------------------------ exchange 2
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, run the SecPC step, update cluster prompts and the assignment."""
        effective = server_round + self.round_offset
        participants: list[str] = self._plan["participants"]
        replies = list(replies)
        require_some_replies(effective, replies, "train")
        accepted: dict[str, Message] = {}
        for reply in replies:
            site, problem = self._check_train_reply(reply, participants)
            if problem:
                log.warning("round %d: reply of %s left out: %s", effective, site, problem)
            else:
                accepted[site] = reply
        self._close_previous_round(accepted)
        metrics = self._mean_metrics(accepted.values())
        self._begin_round(effective).train_metrics = metrics
        view = ServerView(participants=list(participants))
        self.views.append(view)
        needed = self.protocol.update_params.linear_threshold
        result = self._current_arrays(), (MetricRecord(metrics) if metrics else None)
        if len(accepted) < needed:
            log.warning(
                "round %d skipped: %d sites replied, %d needed; prompts and clusters unchanged",
                effective,
                len(accepted),
                needed,
            )
            return result
        try:
            if self.secure:
                senders, sums, scaled = self._secure_results(effective, accepted)
            else:
                senders, sums, scaled = self._plain_results(accepted)
        except NotEnoughAnswersError as exc:
            log.warning("round %d skipped: %s; prompts and clusters unchanged", effective, exc)
            return result
        view.senders = list(senders)
        self._apply(effective, senders, sums, scaled, view)
        self._begin_round(effective).extra = {
            "assignment": dict(self.labels),
            "cluster_sizes": {str(k): v for k, v in view.cluster_sizes.items()},
            "senders": list(senders),
            "exchanges": self.exchanges.get(effective, 0),
        }
        self._checkpoint(effective)
        return self._current_arrays(), result[1]

    def _check_train_reply(self, reply: Message, participants: list[str]) -> tuple[str, str]:
        """``(site, problem)``; an empty problem means the reply is well formed."""
        node = reply.metadata.src_node_id
        site = self.site_of_node.get(node, f"node-{node}")
        if reply.has_error():
            reason = (reply.error.reason or "").splitlines()
            return site, f"site error: {reason[0] if reason else 'unknown'}"
        content = reply.content
        if "site" not in content.config_records or "site-id" not in content["site"]:
            return site, "malformed: no 'site' record"
        claimed = str(content["site"]["site-id"])
        if claimed != site or site not in participants:
            return site, f"misaddressed: node {node} answers as {claimed!r}"
        if "metrics" not in content.metric_records:
            return site, "malformed: no 'metrics' record"
        if "update-dim" not in content["metrics"] or "pre-accuracy" not in content["metrics"]:
            return site, "malformed: metrics lack 'update-dim' or 'pre-accuracy'"
        if self.secure:
            if "shares" not in content.config_records:
                return site, "malformed: no 'shares' record"
            shares = content["shares"]
            if set(shares.keys()) != set(participants) - {site}:
                return site, "malformed: shares are not addressed to exactly the other participants"
            if not all(isinstance(v, bytes) for v in shares.values()):
                return site, "malformed: a share is not bytes"
        else:
            if "plain" not in content.array_records:
                return site, "malformed: no 'plain' record"
            plain = content["plain"]
            if set(plain.keys()) != {"update", "z"} or plain["z"].numpy().shape != (
                self.protocol.z_dim,
            ):
                return site, "malformed: 'plain' must hold 'update' and a 'z' of length z-dim"
        return site, ""

    def _round_groups(self, senders: list[str]) -> tuple[list[int], list[int]]:
        """Sum and distance labels of the round, restricted to the senders.

        A sum group left with fewer than ``min-cluster-size`` senders is not summed; a distance
        group keeps its column (it fixes the blinding shape) but is emptied, so it decodes to
        zero and its column is ignored.
        """
        plan, min_size = self._plan, self.clustering.min_cluster_size
        keep = set(senders)
        sums = [
            lab if p in keep else -1
            for p, lab in zip(plan["participants"], plan["sum_labels"], strict=True)
        ]
        dist = [
            lab if p in keep else -1
            for p, lab in zip(plan["participants"], plan["dist_labels"], strict=True)
        ]
        sums = [lab if lab >= 0 and sums.count(lab) >= min_size else -1 for lab in sums]
        dist = [lab if lab >= 0 and dist.count(lab) >= min_size else -1 for lab in dist]
        return sums, dist

    def _secure_results(
        self, server_round: int, accepted: dict[str, Message]
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Relay ciphertexts (exchange 2), leave out senders a participant rejects, decode."""
        participants: list[str] = self._plan["participants"]
        senders = sorted(accepted)
        update_dim = self._update_dim(accepted)
        for _attempt in range(self.max_rejection_retries + 1):
            sum_labels, dist_labels = self._round_groups(senders)
            config = ConfigRecord(
                {
                    **self.protocol.to_config(),
                    **self._directory_config(),
                    "server-round": server_round,
                    "participants": participants,
                    "senders": senders,
                    "sum-labels": sum_labels,
                    "dist-labels": dist_labels,
                    "n-dist-groups": len(self._plan["dist_columns"]),
                }
            )
            messages = []
            for receiver in senders:
                relay = ConfigRecord(
                    {
                        s: bytes(accepted[s].content["shares"][receiver])
                        for s in senders
                        if s != receiver
                    }
                )
                content = RecordDict({"config": config, "relay": relay})
                node = self._plan["nodes"][receiver]
                messages.append(Message(content, node, "query.secpc", group_id=str(server_round)))
            replies = list(self._grid.send_and_receive(messages))
            self._count_exchange(server_round)
            answers_sum, answers_dist, rejected = {}, {}, set()
            for reply in replies:
                node = reply.metadata.src_node_id
                site = self.site_of_node.get(node, f"node-{node}")
                if reply.has_error() or site not in senders:
                    log.warning("round %d: no usable SecPC answer from %s", server_round, site)
                    continue
                if "rejected" in reply.content.config_records:
                    for bad, reason in reply.content["rejected"].items():
                        log.warning(
                            "round %d: %s rejected the shares of %s: %s",
                            server_round,
                            site,
                            bad,
                            reason,
                        )
                        rejected.add(str(bad))
                    continue
                try:
                    answer = reply.content["answer"]
                    j = participants.index(site)
                    answers_sum[j] = field_from_array(
                        answer["sums"].numpy(), self.protocol.update_params
                    )
                    answers_dist[j] = field_from_array(
                        answer["distances"].numpy(), self.protocol.z_params
                    )
                except (KeyError, ValueError, SecureProtocolError) as exc:
                    log.warning(
                        "round %d: malformed SecPC answer from %s left out: %s",
                        server_round,
                        site,
                        exc,
                    )
            rejected &= set(senders)
            if rejected:
                senders = [s for s in senders if s not in rejected]
                log.warning("round %d: asking again without %s", server_round, sorted(rejected))
                continue
            sums = decode_sums(answers_sum, update_dim, self.protocol)
            distances = decode_distances(answers_dist, self.protocol)
            return senders, sums, distances
        raise NotEnoughAnswersError(
            f"senders were still rejected after {self.max_rejection_retries} retries"
        )

    @staticmethod
    def _update_dim(accepted: dict[str, Message]) -> int:
        dims = {int(r.content["metrics"]["update-dim"]) for r in accepted.values()}
        if len(dims) != 1:
            raise NotEnoughAnswersError(f"sites disagree on the prompt size: {sorted(dims)}")
        return dims.pop()

    def _plain_results(
        self, accepted: dict[str, Message]
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The twin: the same sums and scaled distances, computed from plaintext replies."""
        participants: list[str] = self._plan["participants"]
        senders = sorted(accepted)
        index = {p: j for j, p in enumerate(participants)}
        updates = {index[s]: accepted[s].content["plain"]["update"].numpy() for s in senders}
        zs = {index[s]: accepted[s].content["plain"]["z"].numpy() for s in senders}
        sum_labels, dist_labels = self._round_groups(senders)
        sum_groups = groups_from_labels(sum_labels)
        dist_groups = groups_from_labels(dist_labels, len(self._plan["dist_columns"]))
        dim = self._update_dim(accepted)
        sums = plain_cluster_sums(updates, sum_groups) if sum_groups else np.zeros((0, dim))
        return senders, sums, plain_scaled_distances(zs, len(participants), dist_groups)

    # ------------------------------------------------------------------ state update
    def _apply(
        self,
        server_round: int,
        senders: list[str],
        sums: np.ndarray,
        scaled: np.ndarray,
        view: ServerView,
    ) -> None:
        """New ``P_G`` per summed cluster, one clustering step, prompts for the new clusters."""
        plan = self._plan
        participants: list[str] = plan["participants"]
        sum_labels, dist_labels = self._round_groups(senders)
        old = dict(self.labels) or {p: 0 for p in participants}
        # 1) Cluster sums -> the new P_G offset of every cluster that was summed.
        prompts = dict(self.cluster_prompts)
        for g in range(sums.shape[0]):
            members = [p for p, lab in zip(participants, sum_labels, strict=True) if lab == g]
            if not members:
                continue
            label = old.get(members[0], 0)
            base = prompts.get(label, np.zeros(sums.shape[1]))
            prompts[label] = base + sums[g] / len(members)
            view.cluster_update_sums[label] = sums[g].tolist()
        # 2) Decoded distances -> one clustering step over the measured sites.
        columns: list[int] = plan["dist_columns"]
        sizes = np.array([max(1, dist_labels.count(c)) for c in range(len(columns))], dtype=float)
        measured_cols = np.array([dist_labels.count(c) > 0 for c in range(len(columns))])
        active = np.array([p in senders for p in participants])
        view.scaled_distances = np.where(active[:, None], scaled, np.nan).tolist()
        true = true_sq_distances(np.where(active[:, None], scaled, np.nan), sizes)
        new = dict(old)
        if not self.labels:
            # Sites in a landmark group that was measured; a site whose group lost members below
            # the size floor keeps label 0 until a later Lloyd step places it.
            rows = [j for j in range(len(participants)) if active[j] and dist_labels[j] >= 0]
            if len(rows) >= self.clustering.min_cluster_size and measured_cols.any():
                position = {j: r for r, j in enumerate(rows)}
                landmark = [
                    [position[j] for j in rows if dist_labels[j] == c]
                    for c in range(len(columns))
                    if measured_cols[c]
                ]
                fresh = initial_labels(
                    true[np.ix_(rows, np.flatnonzero(measured_cols))],
                    self.clustering,
                    groups=landmark,
                )
                for j, lab in zip(rows, fresh, strict=True):
                    new[participants[j]] = int(lab)
        else:
            col_of = {c: i for i, c in enumerate(columns)}
            subset = [j for j, p in enumerate(participants) if old.get(p, -1) in col_of]
            if len(subset) >= self.clustering.min_cluster_size:
                labels = np.array([col_of[old[participants[j]]] for j in subset])
                stepped = lloyd_step(labels, true[subset], active[subset], self.clustering)
                matched = _match_labels(
                    [old[participants[j]] for j in subset], stepped.tolist(), set(old.values())
                )
                for j, lab in zip(subset, matched, strict=True):
                    new[participants[j]] = lab
        new = _compact(new)
        # 3) Each new cluster starts from its members' previous cluster prompts, averaged.
        self.cluster_prompts = {}
        for label in sorted(set(new.values())):
            parts = [
                prompts[old[p]] for p, lab in new.items() if lab == label and old.get(p) in prompts
            ]
            if parts:
                self.cluster_prompts[label] = np.mean(parts, axis=0)
        self.labels = new
        view.assignment = dict(new)
        view.cluster_sizes = {
            lab: list(new.values()).count(lab) for lab in sorted(set(new.values()))
        }
        log.info(
            "round %d: clusters %s",
            server_round,
            {lab: [p for p in sorted(new) if new[p] == lab] for lab in sorted(set(new.values()))},
        )

    def _current_arrays(self) -> ArrayRecord:
        return ArrayRecord(
            {
                f"cluster-{c}": Array(p.astype(np.float32))
                for c, p in sorted(self.cluster_prompts.items())
            }
        )

    @staticmethod
    def _mean_metrics(replies: Iterable[Message]) -> dict[str, float]:
        replies = list(replies)
        out = {}
        for key in ("train-loss", "train-accuracy", "train-seconds", "crypto-seconds"):
            values = [
                float(r.content["metrics"][key]) for r in replies if key in r.content["metrics"]
            ]
            if values:
                out[key] = float(np.mean(values))
        return out

    # ------------------------------------------------------------------ evaluation
    def _close_previous_round(self, accepted: dict[str, Message]) -> None:
        """The pre-train accuracies measure the prompts the previous round produced."""
        record, self._pending = self._pending, None
        if record is None:
            return
        for site, reply in accepted.items():
            record.sites.append(
                site_result(reply, site, "pre-accuracy", "pre-loss", "test-examples")
            )
        self._publish(record)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluation rides on the next train message; only the last round asks for its own."""
        effective = server_round + self.round_offset
        self._pending, self._current = self._begin_round(effective), None
        self._pending.seconds = time.perf_counter() - self._round_start
        if server_round < self.num_rounds:
            return []
        self._count_exchange(effective)
        cfg = ConfigRecord({"server-round": effective, "mode": self.mode_name})
        messages = []
        for site, node in self._plan["nodes"].items():
            content = RecordDict({"config": cfg})
            offset = self._prompt_for(site)
            if offset is not None:
                content["arrays"] = ArrayRecord({OFFSET_KEY: Array(offset.astype(np.float32))})
            messages.append(Message(content, node, "evaluate", group_id=str(effective)))
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Close the last round with the evaluation it asked for."""
        record, self._pending = self._pending, None
        if record is None or server_round < self.num_rounds:
            self._pending = record
            return None
        for reply in replies:
            if reply.has_error():
                continue
            node = reply.metadata.src_node_id
            record.sites.append(site_result(reply, self.site_of_node.get(node, str(node))))
        self._publish(record)
        return MetricRecord({"accuracy": record.mean_accuracy})

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, server_round: int) -> None:
        """Write the server state after a completed round (atomically)."""
        if self.checkpoint_path is not None:
            write_json_atomic(self.checkpoint_path, self.state_dict(server_round))

    def state_dict(self, server_round: int) -> dict:
        """The resumable server state, JSON-ready."""
        return {
            "version": 1,
            "strategy": self.mode_name,
            "completed_round": server_round,
            "labels": self.labels,
            "cluster_prompts": {str(k): v.tolist() for k, v in self.cluster_prompts.items()},
            "protocol": self.protocol.to_config(),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore from :meth:`state_dict`; return the completed round to resume after.

        Raises
        ------
        ValueError
            If the checkpoint belongs to another strategy or other ``secure-*`` settings.
        """
        if state.get("version") != 1 or state.get("strategy") != self.mode_name:
            raise ValueError(
                f"checkpoint is for strategy {state.get('strategy')!r}, not {self.mode_name!r}"
            )
        if state.get("protocol") != self.protocol.to_config():
            raise ValueError(
                "checkpoint was written with other secure-* settings; resume with the same ones"
            )
        self.labels = {str(k): int(v) for k, v in state["labels"].items()}
        self.cluster_prompts = {
            int(k): np.asarray(v, dtype=np.float64) for k, v in state["cluster_prompts"].items()
        }
        self.round_offset = int(state["completed_round"])
        return self.round_offset


class Clustered(SecFPP):
    """The plaintext twin of :class:`SecFPP` (ablation; reference for equivalence tests)."""

    mode_name = "clustered"

    def __init__(self, **kwargs) -> None:
        kwargs.pop("secure", None)
        super().__init__(secure=False, **kwargs)


def _compact(labels: dict[str, int]) -> dict[str, int]:
    """Relabel clusters ``0..k-1`` in order of their first member's site id."""
    order: dict[int, int] = {}
    for site in sorted(labels, key=natural_key):
        order.setdefault(labels[site], len(order))
    return {site: order[label] for site, label in labels.items()}


def _match_labels(old: list[int], new: list[int], taken: set[int]) -> list[int]:
    """Map step labels back to cluster labels.

    Each new cluster keeps the old label most of its members had (greedy by overlap), so sites
    outside the step stay with their cluster.
    """
    overlap: dict[tuple[int, int], int] = {}
    for o, n in zip(old, new, strict=True):
        overlap[(n, o)] = overlap.get((n, o), 0) + 1
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for (n, o), _count in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0])):
        if n not in mapping and o not in used:
            mapping[n], _ = o, used.add(o)
    fresh = max(taken | used, default=-1) + 1
    out = []
    for n in new:
        if n not in mapping:
            mapping[n], fresh = fresh, fresh + 1
        out.append(mapping[n])
    return out
