"""One SecFPP round, top to bottom: stages over a typed round state.

Read this file to follow a round (``DESIGN.md``, "One SecFPP round"):

1. :meth:`SecFPPWorkflow.sample` picks the round's participants among connected, trusted sites
   (waiting for enough of them, bounded by ``site-wait-timeout``).
2. :meth:`SecFPPWorkflow.keys` runs key setup for sites without a verified session key (round 1,
   new sites); a restarted site re-announces inside its ``train`` reply instead.
3. :meth:`SecFPPWorkflow.train` (exchange 1): each participant gets its cluster's ``P_G``,
   scores the prompt the previous round left it with, trains, and returns its evaluation and
   its sealed shares (``secfpp``) or plaintext update and descriptor (``clustered``).
4. :meth:`SecFPPWorkflow.query` (exchange 2, SecFPP only): the grouping is fixed from the
   senders *before* any answer is opened; each sender gets the ciphertexts addressed to it and
   answers coded cluster sums and coded scaled distances, or refuses. Every value is decoded
   once, with error correction over the answers beyond the threshold: a site whose answer is
   wrong is named and excluded for the rest of the run; a refusal or a missing answer only
   counts as missing. Too few answers leave the clusters as they are.
5. :meth:`SecFPPWorkflow.update`: new ``P_G`` per decoded cluster and one clustering step.

The plaintext twin (``clustered``) runs the same stages and computes step 4 from plaintext
replies. Exchanges, bytes both ways and seconds are counted by
:class:`strategies.metering.MeteredGrid`; the server's decode time is added here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from secpc import KeyDirectory, SecureProtocolError, field_from_array
from secpc import messages as wire
from secpc.protocol import (
    ProtocolConfig,
    check_decoded,
    decode_robust_answers,
    load_site_identities,
    plain_cluster_sums,
    plain_scaled_distances,
    split_stats,
)

from . import clustering as rules
from .base import natural_key
from .clustering import (
    ClusteringConfig,
    SelectionConfig,
    SelectionState,
    initial_labels,
    landmark_groups,
    lloyd_step,
    select_clusters,
    true_sq_distances,
)

log = logging.getLogger("secfpp.server")


@dataclass
class ServerView:
    """Everything the SecFPP server learns in one round, and nothing else.

    Attributes
    ----------
    server_round : int
        The round.
    participants : list of str
        Sites sampled for the round.
    senders : list of str
        Sites whose shares were used.
    committee : list of str
        The sites that received the shares and were asked the query (public).
    decoded_sum_groups : list of list of str
        The member set of every cluster sum decoded this round (each decoded once).
    decoded_dist_groups : list of list of str
        The member set of every group distances were decoded against.
    cluster_update_sums : dict
        Cluster label to the decoded sum of its members' ``P_G`` updates.
    cluster_stats : dict
        Cluster label to the decoded sums of the statistics sites append to their update.
    scaled_distances : list of list of float
        ``‖|C| z_i − Σ_{m∈C} z_m‖²`` per participant (rows) and measured group (columns).
    assignment : dict
        Site id to cluster label after the round.
    cluster_sizes : dict
        Cluster label to member count.
    evaluations : dict
        Site id to its declared evaluation (accuracy, loss, examples) of the previous prompt.
    refusals : dict
        Site id to the reason it refused the SecPC query.
    dropped : dict
        Site id to why its reply was left out this round (malformed, misaddressed, ...).
    wrong : list of str
        Sites whose answers error correction found wrong.
    """

    server_round: int = 0
    participants: list[str] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)
    committee: list[str] = field(default_factory=list)
    decoded_sum_groups: list[list[str]] = field(default_factory=list)
    decoded_dist_groups: list[list[str]] = field(default_factory=list)
    cluster_update_sums: dict[int, list[float]] = field(default_factory=dict)
    cluster_stats: dict[int, list[float]] = field(default_factory=dict)
    scaled_distances: list[list[float]] = field(default_factory=list)
    assignment: dict[str, int] = field(default_factory=dict)
    cluster_sizes: dict[int, int] = field(default_factory=dict)
    evaluations: dict[str, dict] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)


@dataclass
class FederationState:
    """What the server keeps across rounds.

    ``labels`` and ``cluster_prompts`` (each cluster's ``P_G`` as an offset from the public
    initial prompt, which only sites compute) are checkpointed; the rest belongs to one Flower
    run (a resumed run sets up new session keys).
    """

    labels: dict[str, int] = field(default_factory=dict)
    cluster_prompts: dict[int, np.ndarray] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    site_of_node: dict[int, str] = field(default_factory=dict)
    announcements: dict[str, bytes] = field(default_factory=dict)
    identities: dict[str, bytes] = field(default_factory=dict)
    directory: bytes = b""
    update_dim: int = 0
    dp_releases: int = 0
    committed_round: int = 0
    #: The verified rule's memory (labels and next groups over ``universe``).
    selection: SelectionState | None = None
    #: Every site seen in this federation, in a fixed order (the rule's site indices).
    universe: list[str] = field(default_factory=list)

    def prompt_for(self, site: str) -> np.ndarray | None:
        """The ``P_G`` offset a site trains from: its cluster's, or the mean for a newcomer."""
        label = self.labels.get(site)
        if label is not None and label in self.cluster_prompts:
            return self.cluster_prompts[label]
        if self.cluster_prompts:
            return np.mean(list(self.cluster_prompts.values()), axis=0)
        return None

    def keys_view(self) -> wire.KeyDirectoryView:
        """The directory as it is relayed to sites."""
        return wire.KeyDirectoryView(self.directory, dict(self.identities))


@dataclass
class RoundState:
    """One round as it moves through the stages.

    Attributes
    ----------
    server_round : int
        The real round number.
    keys : KeyDirectoryView
        The directory sent with exchange 1 (it fixes the committee).
    committee : list of str
        The sites that receive the shares and answer the query, in share order.
    sampled : list of int
        Node ids sampled for the round.
    nodes : dict
        Participant site id to node id.
    participants : list of str
        Sorted site ids; participant ``j`` receives share ``j``.
    sum_labels, dist_labels : list of int
        Planned per participant: its sum group and its distance group (``-1``: none).
    dist_columns : list of int
        Per distance group, the cluster it measures (``-1`` for a landmark group).
    replies : dict
        Accepted train replies by site.
    evaluations : dict
        Declared evaluations (of the previous round's prompts) by site.
    senders : list of str
        Sites whose shares are used (fixed before exchange 2).
    sum_groups, dist_groups : list of list of int
        The grouping the query fixes (participant indices, senders only).
    sums : np.ndarray or None
        Decoded cluster sums ``(n_sum_groups, update_dim + stats)``.
    distances : np.ndarray or None
        Decoded scaled distances ``(n_participants, n_dist_groups)``.
    skipped : str
        Why the round changed nothing, if it did not.
    view : ServerView
        What the server learned.
    """

    server_round: int
    keys: wire.KeyDirectoryView = field(default_factory=wire.KeyDirectoryView)
    committee: list[str] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)
    participants: list[str] = field(default_factory=list)
    sum_labels: list[int] = field(default_factory=list)
    dist_labels: list[int] = field(default_factory=list)
    dist_columns: list[int] = field(default_factory=list)
    replies: dict[str, wire.TrainReply] = field(default_factory=dict)
    evaluations: dict[str, wire.Evaluation] = field(default_factory=dict)
    senders: list[str] = field(default_factory=list)
    sum_groups: list[list[int]] = field(default_factory=list)
    dist_groups: list[list[int]] = field(default_factory=list)
    sums: np.ndarray | None = None
    distances: np.ndarray | None = None
    skipped: str = ""
    view: ServerView = field(default_factory=ServerView)
    universe: list[str] = field(default_factory=list)
    selection: SelectionState | None = None


class SecFPPWorkflow:
    """The stages of one SecFPP round over a :class:`FederationState`.

    Parameters
    ----------
    mode : str
        ``secfpp`` or ``clustered`` (the plaintext twin).
    training : dict
        Local-training keys sent with every ``train`` message.
    protocol : ProtocolConfig
        LCC thresholds and quantization.
    clustering : ClusteringConfig
        Adaptive k-means rules (and the size floor every decoded group respects).
    site_identities : str
        Path of ``site-identities.yaml``; empty trusts identity keys on first use.
    fraction_train : float
        Share of connected sites sampled each round.
    round_timeout : float
        Seconds to wait for the replies of one exchange.
    site_wait_timeout : float
        Seconds to wait for enough connected sites before a round is skipped.
    selection : SelectionConfig, optional
        The verified per-round selection (``cluster-rule = "verified"``,
        :func:`strategies.clustering.select_clusters`); ``None`` keeps the landmark-and-Lloyd
        rule (``"lloyd"``).
    oracle : callable, optional
        Simulation only (``cluster-oracle``): site id to its true domain; the clusters are the
        domains, for comparison with what the secure clustering finds.
    """

    def __init__(
        self,
        mode: str,
        training: dict,
        protocol: ProtocolConfig,
        clustering: ClusteringConfig,
        site_identities: str = "",
        fraction_train: float = 1.0,
        round_timeout: float = 3600.0,
        site_wait_timeout: float = 0.0,
        selection: SelectionConfig | None = None,
        oracle=None,
    ) -> None:
        self.selection = selection
        self.oracle = oracle
        self.mode = mode
        self.secure = mode == "secfpp"
        self.training = training
        self.protocol = protocol
        self.clustering = clustering
        self.site_identities = site_identities
        self.fraction_train = fraction_train
        self.round_timeout = round_timeout
        self.site_wait_timeout = site_wait_timeout

    @property
    def min_sites(self) -> int:
        """Fewest participants a round can use: the degree-2 threshold and the size floor."""
        return max(self.protocol.z_params.quadratic_threshold, self.clustering.min_cluster_size)

    def _site(self, state: FederationState, node: int) -> str:
        return state.site_of_node.get(node, f"node-{node}")

    def _send(self, grid: Grid, messages: list[Message]) -> list[Message]:
        """One exchange; a reply far larger than its peers' is dropped before it is parsed.

        All honest replies of one exchange have about the same size (the same shapes), so the
        limit is twice the median plus 64 KiB: one site cannot make the server parse a huge
        message, and no fixed constant has to track the prompt size.
        """
        replies = list(grid.send_and_receive(messages, timeout=self.round_timeout))
        sizes = getattr(grid, "reply_sizes", {})
        if not sizes or len(replies) < 2:
            return replies
        limit = 2 * float(np.median(list(sizes.values()))) + 65536
        kept = []
        for reply in replies:
            size = sizes.get(id(reply), 0)
            if size > limit:
                node = reply.metadata.src_node_id
                log.warning(
                    "%s: reply of node %d dropped: %d bytes, over the limit of %d",
                    reply.metadata.message_type,
                    node,
                    size,
                    int(limit),
                )
                continue
            kept.append(reply)
        return kept

    # ------------------------------------------------------------------ 1. sample
    def sample(self, grid: Grid, state: FederationState, server_round: int) -> RoundState:
        """Choose the participants; wait (bounded) when too few trusted sites are connected."""
        import random

        rnd = RoundState(server_round=server_round)
        deadline = time.monotonic() + self.site_wait_timeout
        while True:
            nodes = sorted(
                n for n in grid.get_node_ids() if self._site(state, n) not in state.excluded
            )
            if len(nodes) >= self.min_sites or time.monotonic() >= deadline:
                break
            log.warning(
                "round %d: %d trusted sites connected, %d needed; waiting (known missing: %s)",
                server_round,
                len(nodes),
                self.min_sites,
                sorted(set(state.site_of_node.values()) - {self._site(state, n) for n in nodes})
                or "none known",
            )
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        size = max(int(len(nodes) * self.fraction_train), self.min_sites)
        if len(nodes) < self.min_sites:
            rnd.skipped = (
                f"{len(nodes)} trusted sites connected, secure-k={self.protocol.k}, "
                f"secure-t={self.protocol.t} and min-cluster-size="
                f"{self.clustering.min_cluster_size} need {self.min_sites}"
            )
            return rnd
        rnd.sampled = sorted(random.sample(nodes, min(size, len(nodes))))
        return rnd

    # ------------------------------------------------------------------ 2. keys
    def keys(self, grid: Grid, state: FederationState, rnd: RoundState) -> None:
        """Key setup for sampled sites without a session key; fix the participant list."""
        nodes = rnd.sampled
        fresh = [
            n
            for n in nodes
            if n not in state.site_of_node
            or (self.secure and state.site_of_node[n] not in state.announcements)
        ]
        if fresh:
            request = wire.KeySetupRequest(rnd.server_round, self.mode)
            replies = self._send(
                grid,
                [
                    Message(request.to_content(), n, wire.KEYSETUP, group_id=str(rnd.server_round))
                    for n in fresh
                ],
            )
            announced: dict[str, bytes] = {}
            for reply in replies:
                node = reply.metadata.src_node_id
                if reply.has_error():
                    log.warning("key setup: node %d left out: %s", node, _first_line(reply))
                    continue
                try:
                    parsed = wire.KeySetupReply.from_content(reply.content)
                except SecureProtocolError as exc:
                    log.warning(
                        "key setup: node %d sent a malformed reply (%s); left out", node, exc
                    )
                    continue
                if parsed.site_id in state.excluded:
                    log.warning("key setup: %s is excluded from this run", parsed.site_id)
                    continue
                state.site_of_node[node] = parsed.site_id
                if self.secure:
                    announced[parsed.site_id] = parsed.announcement
                    state.identities.setdefault(parsed.site_id, parsed.identity_public)
            if self.secure:
                for site, announcement in announced.items():
                    self.admit(grid, state, site, announcement)
        rnd.nodes = {
            state.site_of_node[n]: n
            for n in nodes
            if n in state.site_of_node
            and (not self.secure or state.site_of_node[n] in state.announcements)
        }
        rnd.participants = sorted(rnd.nodes, key=natural_key)
        if len(rnd.participants) < self.min_sites:
            rnd.skipped = (
                f"only {len(rnd.participants)} sites have session keys; {self.min_sites} needed"
            )

    def admit(self, grid: Grid, state: FederationState, site: str, announcement: bytes) -> bool:
        """Verify a site's signed session key and (re)build the directory with it.

        The identity key must match ``site-identities`` when that file is given, else the key
        the site first announced in this run (a changed identity key is refused).
        """
        if self.site_identities:
            known = load_site_identities(self.site_identities)
        else:
            known = dict(state.identities)
        run_id = int(grid.run.run_id)
        try:
            KeyDirectory.verify([announcement], known, run_id)
        except SecureProtocolError as exc:
            log.warning("key setup: %s left out: %s: %s", site, type(exc).__name__, exc)
            return False
        state.announcements[site] = announcement
        directory = KeyDirectory.verify(list(state.announcements.values()), known, run_id)
        state.directory = directory.to_bytes()
        # Sites check the directory against these keys (or against their own copy of
        # site-identities); a superset of the directory's sites is harmless.
        state.identities = {s: known[s] for s in known if s in state.identities or s in directory}
        return True

    # ------------------------------------------------------------------ 3. train
    def train(self, grid: Grid, state: FederationState, rnd: RoundState) -> None:
        """Exchange 1: send each participant its cluster's ``P_G``; check what comes back.

        A site that restarted (and so lost its session key) answers with a fresh signed key
        instead of training and is re-admitted. When the round would then fall short of the
        sites it needs, the exchange runs once more with the new directory, so a site that
        comes back after an outage rejoins in the round it returns instead of costing it.
        """
        rnd.sum_labels, rnd.dist_labels, rnd.dist_columns = self.plan_groups(state, rnd)
        readmitted = self._train_exchange(grid, state, rnd)
        if readmitted and len(rnd.replies) < self.min_sites:
            log.warning(
                "round %d: %d sites trained, %d needed, after %s came back without a session "
                "key; training again with the new key directory",
                rnd.server_round,
                len(rnd.replies),
                self.min_sites,
                ", ".join(readmitted),
            )
            rnd.replies.clear()
            self._train_exchange(grid, state, rnd)
        dims = sorted({r.update_dim for r in rnd.replies.values()})
        if len(dims) > 1:
            # The majority size is the prompt's; a site reporting another is left out.
            majority = max(dims, key=lambda d: sum(r.update_dim == d for r in rnd.replies.values()))
            for site in [s for s, r in rnd.replies.items() if r.update_dim != majority]:
                log.warning("round %d: %s left out: prompt size differs", rnd.server_round, site)
                del rnd.replies[site]
        rnd.senders = sorted(rnd.replies, key=natural_key)
        if rnd.replies:
            state.update_dim = next(iter(rnd.replies.values())).update_dim
        rnd.view.server_round = rnd.server_round
        rnd.view.participants = list(rnd.participants)
        rnd.view.evaluations = {s: vars(e) for s, e in rnd.evaluations.items()}

    def _train_exchange(self, grid: Grid, state: FederationState, rnd: RoundState) -> list[str]:
        """Send the train requests and keep the valid replies; return the re-admitted sites."""
        keys = state.keys_view() if self.secure else wire.KeyDirectoryView()
        # The directory sent now fixes the exchange's committee on every site; a site
        # re-admitted during it changes the directory from the next exchange on.
        rnd.keys = keys
        if self.secure:
            rnd.committee = self.protocol.committee_for(
                rnd.participants, rnd.server_round, keys.directory
            )
            rnd.view.committee = list(rnd.committee)
        messages = []
        readmitted = []
        for site in rnd.participants:
            request = wire.TrainRequest(
                server_round=rnd.server_round,
                mode=self.mode,
                training=self.training,
                protocol=self.protocol,
                participants=rnd.participants,
                n_dist_groups=len(rnd.dist_columns),
                keys=keys,
                offset=state.prompt_for(site),
                committed_round=state.committed_round,
            )
            messages.append(
                Message(
                    request.to_content(),
                    rnd.nodes[site],
                    wire.TRAIN,
                    group_id=str(rnd.server_round),
                )
            )
        for reply in self._send(grid, messages):
            site, parsed, problem = self._check_train_reply(state, rnd, reply)
            if problem:
                log.warning("round %d: %s left out: %s", rnd.server_round, site, problem)
                rnd.view.dropped[site] = problem
                continue
            if parsed.rekey:
                if self.admit(grid, state, site, parsed.rekey):
                    log.warning(
                        "round %d: %s restarted without its session key; re-admitted",
                        rnd.server_round,
                        site,
                    )
                    readmitted.append(site)
                continue
            rnd.replies[site] = parsed
            if parsed.evaluation is not None:
                rnd.evaluations[site] = parsed.evaluation
        return readmitted

    def _check_train_reply(
        self, state: FederationState, rnd: RoundState, reply: Message
    ) -> tuple[str, wire.TrainReply | None, str]:
        node = reply.metadata.src_node_id
        site = self._site(state, node)
        if reply.has_error():
            return site, None, f"site error: {_first_line(reply)}"
        try:
            parsed = wire.TrainReply.from_content(reply.content)
        except SecureProtocolError as exc:
            return site, None, f"malformed reply: {exc}"
        if parsed.site_id != site or site not in rnd.participants:
            return site, None, f"misaddressed: node {node} answers as {parsed.site_id!r}"
        if parsed.rekey:
            return site, parsed, "" if self.secure else "a rekey announcement in the twin"
        if parsed.update_dim < 1:
            return site, None, "malformed reply: update-dim < 1"
        if self.secure:
            if parsed.shares is None or set(parsed.shares) != set(rnd.committee) - {site}:
                return site, None, "shares are not addressed to exactly the committee"
        else:
            if parsed.plain is None or parsed.plain[1].shape != (self.protocol.z_dim,):
                return site, None, "plain record must hold an update and a z of length z-dim"
        return site, parsed, ""

    # ------------------------------------------------------------------ 4. query
    def fix_grouping(self, rnd: RoundState) -> None:
        """The round's groups over the senders, fixed before any answer is opened.

        A planned group left with fewer than ``min-cluster-size`` senders is neither summed nor
        measured (its distance column stays, empty, because it fixes the blinding shape).
        """
        floor = self.clustering.min_cluster_size
        keep = {rnd.participants.index(s) for s in rnd.senders}

        def grouped(labels: list[int], count: int) -> list[list[int]]:
            groups = [[j for j in sorted(keep) if labels[j] == g] for g in range(count)]
            return [g if len(g) >= floor else [] for g in groups]

        n_sum = max(rnd.sum_labels, default=-1) + 1
        rnd.sum_groups = [g for g in grouped(rnd.sum_labels, n_sum) if g]
        rnd.dist_groups = grouped(rnd.dist_labels, len(rnd.dist_columns))
        if self.selection is not None and rnd.senders:
            # The verified rule re-plans its groups over the sites that did share, so they still
            # partition exactly the measured sites; the announced column count is kept.
            index = {s: i for i, s in enumerate(rnd.universe)}
            active = np.zeros(len(rnd.universe), dtype=bool)
            active[[index[s] for s in rnd.senders]] = True
            if active.sum() >= floor:
                groups = rules.plan_groups(
                    len(rnd.universe), rnd.selection, self.selection, rnd.server_round, active
                )
                if len(groups) <= len(rnd.dist_columns):
                    at = {s: j for j, s in enumerate(rnd.participants)}
                    rnd.dist_groups = [sorted(at[rnd.universe[i]] for i in g) for g in groups]
                    rnd.dist_groups += [[] for _ in range(len(rnd.dist_columns) - len(groups))]

    def query(self, grid: Grid, state: FederationState, rnd: RoundState, meter=None) -> None:
        """Exchange 2 (SecFPP) or its plaintext equivalent (the twin); decode each value once."""
        self.fix_grouping(rnd)
        names = rnd.participants
        rnd.view.senders = list(rnd.senders)
        rnd.view.decoded_sum_groups = [[names[j] for j in g] for g in rnd.sum_groups]
        rnd.view.decoded_dist_groups = [[names[j] for j in g] for g in rnd.dist_groups if g]
        if len(rnd.senders) < self.protocol.update_params.linear_threshold:
            rnd.skipped = (
                f"{len(rnd.senders)} sites shared, {self.protocol.update_params.linear_threshold}"
                " needed"
            )
            return
        if not self.secure:
            self._plain_results(rnd)
            return
        request_base = dict(
            server_round=rnd.server_round,
            participants=rnd.participants,
            senders=rnd.senders,
            sum_groups=rnd.sum_groups,
            dist_groups=rnd.dist_groups,
            n_dist_groups=len(rnd.dist_columns),
            keys=rnd.keys,
            protocol=self.protocol,
        )
        messages = []
        for receiver in [m for m in rnd.committee if m in rnd.replies]:
            relay = {s: rnd.replies[s].shares[receiver] for s in rnd.senders if s != receiver}
            request = wire.SecPCRequest(relay=relay, **request_base)
            messages.append(
                Message(
                    request.to_content(),
                    rnd.nodes[receiver],
                    wire.SECPC,
                    group_id=str(rnd.server_round),
                )
            )
        answers_sum: dict[int, np.ndarray] = {}
        answers_dist: dict[int, np.ndarray] = {}
        site_seconds = 0.0
        for reply in self._send(grid, messages):
            site = self._site(state, reply.metadata.src_node_id)
            if site not in rnd.committee:
                continue
            if reply.has_error():
                rnd.view.dropped[site] = f"site error: {_first_line(reply)}"
                log.warning(
                    "round %d: no SecPC answer from %s: %s",
                    rnd.server_round,
                    site,
                    _first_line(reply),
                )
                continue
            try:
                parsed = wire.SecPCReply.from_content(reply.content)
            except SecureProtocolError as exc:
                rnd.view.dropped[site] = f"malformed SecPC answer: {exc}"
                log.warning(
                    "round %d: malformed SecPC answer from %s: %s", rnd.server_round, site, exc
                )
                continue
            if parsed.refusal:
                rnd.view.refusals[site] = parsed.refusal
                log.warning(
                    "round %d: %s refused the query: %s", rnd.server_round, site, parsed.refusal
                )
                continue
            j = rnd.committee.index(site)  # answers are keyed by committee position
            try:
                answers_sum[j] = field_from_array(parsed.sums, self.protocol.update_params)
                answers_dist[j] = field_from_array(parsed.distances, self.protocol.z_params)
            except (SecureProtocolError, ValueError) as exc:
                rnd.view.dropped[site] = f"malformed SecPC answer: {exc}"
                log.warning(
                    "round %d: malformed SecPC answer from %s: %s", rnd.server_round, site, exc
                )
                continue
            site_seconds += parsed.crypto_seconds
        if meter is not None:
            meter.add_seconds(rnd.server_round, "crypto_site", site_seconds)
        start = time.perf_counter()
        try:
            self._decode(state, rnd, answers_sum, answers_dist)
        finally:
            if meter is not None:
                meter.add_seconds(rnd.server_round, "crypto_server", time.perf_counter() - start)

    def _decode(
        self,
        state: FederationState,
        rnd: RoundState,
        answers_sum: dict[int, np.ndarray],
        answers_dist: dict[int, np.ndarray],
    ) -> None:
        dim = state.update_dim + len(wire.UPDATE_STATS)
        if self.protocol.dp_epsilon:
            from secpc.noise import check_noisy_sum_fits

            # A configuration error, not a site's: it stops the run with the key to change.
            check_noisy_sum_fits(
                len(rnd.participants),
                self.protocol.dp_mu(dim),
                self.protocol.distributed_dp(dim),
                self.protocol.update_params,
            )
        n_sum, n_dist = len(rnd.sum_groups), len(rnd.dist_groups)
        expected_sum = (n_sum, -(-dim // self.protocol.k))
        expected_dist = (len(rnd.participants), n_dist)
        wrong: set[int] = set()
        for j in list(answers_sum):
            if (
                answers_sum[j].shape[:-1] != expected_sum
                or answers_dist[j].shape[:-1] != expected_dist
            ):
                wrong.add(j)
        good_sum = {j: a for j, a in answers_sum.items() if j not in wrong}
        good_dist = {j: a for j, a in answers_dist.items() if j not in wrong}
        try:
            sums, bad_s = decode_robust_answers(good_sum, dim, 1, self.protocol)
            distances, bad_d = decode_robust_answers(good_dist, None, 2, self.protocol)
        except SecureProtocolError as exc:
            rnd.skipped = f"SecPC answers could not be decoded: {exc}"
            self._exclude(state, rnd, wrong)
            return
        wrong |= set(bad_s) | set(bad_d)
        self._exclude(state, rnd, wrong)
        try:
            check_decoded(
                sums,
                [len(g) for g in rnd.sum_groups],
                distances,
                [len(g) for g in rnd.dist_groups],
                self.protocol,
            )
        except SecureProtocolError as exc:
            rnd.skipped = str(exc)
            return
        rnd.sums, rnd.distances = sums, distances

    def _exclude(self, state: FederationState, rnd: RoundState, wrong: set[int]) -> None:
        for j in sorted(wrong):
            site = rnd.committee[j]
            state.excluded[site] = f"round {rnd.server_round}: wrong SecPC answer"
            rnd.view.wrong.append(site)
            log.error(
                "round %d: %s answered wrongly (located by error correction); excluded from "
                "the rest of the run",
                rnd.server_round,
                site,
            )

    def _plain_results(self, rnd: RoundState) -> None:
        """The twin: the same sums and scaled distances, from plaintext replies."""
        index = {p: j for j, p in enumerate(rnd.participants)}
        updates = {index[s]: rnd.replies[s].plain[0] for s in rnd.senders}
        zs = {index[s]: rnd.replies[s].plain[1] for s in rnd.senders}
        dim = next(iter(updates.values())).size
        rnd.sums = (
            plain_cluster_sums(updates, rnd.sum_groups) if rnd.sum_groups else np.zeros((0, dim))
        )
        rnd.distances = plain_scaled_distances(zs, len(rnd.participants), rnd.dist_groups)

    # ------------------------------------------------------------------ 5. update
    def update(self, state: FederationState, rnd: RoundState) -> dict[str, float]:
        """New ``P_G`` per decoded cluster and one clustering step; return the train means."""
        n_stats = len(wire.UPDATE_STATS)
        participants = rnd.participants
        old = dict(state.labels) or {p: 0 for p in participants}
        sums, stats = split_stats(rnd.sums, n_stats, self.protocol)
        prompts = dict(state.cluster_prompts)
        metrics = np.zeros(n_stats)
        for g, members in enumerate(rnd.sum_groups):
            label = old.get(participants[members[0]], 0)
            base = prompts.get(label, np.zeros(sums.shape[1]))
            prompts[label] = base + self.server_step(len(members), sums.shape[1]) * sums[g] / len(
                members
            )
            rnd.view.cluster_update_sums[label] = sums[g].tolist()
            rnd.view.cluster_stats[label] = stats[g].tolist()
            metrics += stats[g]
        count = metrics[-1]
        train_metrics = {}
        # Under distributed DP the statistics are noise-dominated at these cluster sizes.
        if count > 0 and not self.protocol.dp_epsilon:
            train_metrics = {
                "train-accuracy": float(metrics[0] / count),
                "train-loss": float(10 * metrics[1] / count),
            }
        if self.oracle is not None:
            new = _compact(
                {p: int(self.oracle(p)) for p in participants}
                | {p: lab for p, lab in old.items() if p not in participants}
            )
        elif self.selection is not None:
            new = self._select(state, rnd, old)
        else:
            new = self._cluster_step(state, rnd, old)
        state.cluster_prompts = {}
        for label in sorted(set(new.values())):
            parts = [
                prompts[old[p]] for p, lab in new.items() if lab == label and old.get(p) in prompts
            ]
            if parts:
                state.cluster_prompts[label] = np.mean(parts, axis=0)
        state.labels = new
        state.committed_round = rnd.server_round
        rnd.view.assignment = dict(new)
        rnd.view.cluster_sizes = {
            lab: list(new.values()).count(lab) for lab in sorted(set(new.values()))
        }
        log.info(
            "round %d: clusters %s",
            rnd.server_round,
            {
                lab: [p for p in sorted(new, key=natural_key) if new[p] == lab]
                for lab in sorted(set(new.values()))
            },
        )
        return train_metrics

    def server_step(self, members: int, dim: int) -> float:
        """How far a cluster's ``P_G`` moves toward its members' mean update.

        1 without distributed DP. With it, the decoded mean carries noise whose expected norm
        (``sigma sqrt(dim)``) can dwarf a clipped update; the server shrinks the step so that the
        noise it applies per round is no larger than one clipped update (``dp-clip``). This is
        post-processing of a released value, so it costs no privacy.
        """
        if not self.protocol.dp_epsilon:
            return 1.0
        from secpc.noise import noise_std

        shared = dim + len(wire.UPDATE_STATS)
        sigma = noise_std(self.protocol.dp_mu(shared), members, self.protocol.update_scale_bits)
        noise_norm = sigma / members * np.sqrt(dim)
        return float(min(1.0, self.protocol.dp_clip / noise_norm)) if noise_norm else 1.0

    def _select(
        self, state: FederationState, rnd: RoundState, old: dict[str, int]
    ) -> dict[str, int]:
        """The verified rule's step on the decoded distances (sites that shared are active)."""
        index = {s: i for i, s in enumerate(rnd.universe)}
        at = {s: j for j, s in enumerate(rnd.participants)}
        columns = [c for c, g in enumerate(rnd.dist_groups) if g]
        groups = [sorted(index[rnd.participants[j]] for j in rnd.dist_groups[c]) for c in columns]
        scaled = np.full((len(rnd.universe), len(columns)), np.nan)
        active = np.zeros(len(rnd.universe), dtype=bool)
        for s in rnd.senders:
            scaled[index[s]] = rnd.distances[at[s], columns]
            active[index[s]] = True
        rnd.view.scaled_distances = np.where(
            np.array([p in rnd.senders for p in rnd.participants])[:, None],
            rnd.distances,
            np.nan,
        ).tolist()
        if not groups or sorted(i for g in groups for i in g) != sorted(np.flatnonzero(active)):
            return dict(old)
        state.selection = select_clusters(
            scaled, groups, rnd.selection, self.selection, rnd.server_round, active
        )
        labels = {site: int(state.selection.labels[i]) for site, i in index.items()}
        return _compact({**old, **labels})

    def _cluster_step(
        self, state: FederationState, rnd: RoundState, old: dict[str, int]
    ) -> dict[str, int]:
        participants = rnd.participants
        columns = rnd.dist_columns
        sizes = np.array([max(1, len(g)) for g in rnd.dist_groups], dtype=float)
        measured = np.array([len(g) > 0 for g in rnd.dist_groups])
        active = np.array([p in rnd.senders for p in participants])
        scaled = np.where(active[:, None], rnd.distances, np.nan)
        rnd.view.scaled_distances = scaled.tolist()
        true = true_sq_distances(scaled, sizes)
        new = dict(old)
        if not state.labels:
            in_group = {j: c for c, g in enumerate(rnd.dist_groups) for j in g}
            rows = [j for j in range(len(participants)) if active[j] and j in in_group]
            if len(rows) >= self.clustering.min_cluster_size and measured.any():
                position = {j: r for r, j in enumerate(rows)}
                landmark = [[position[j] for j in g] for g in rnd.dist_groups if g]
                fresh = initial_labels(
                    true[np.ix_(rows, np.flatnonzero(measured))], self.clustering, groups=landmark
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
        return _compact(new)

    def plan_groups(
        self, state: FederationState, rnd: RoundState
    ) -> tuple[list[int], list[int], list[int]]:
        """Groups to sum (the clusters the sites trained in) and to measure distances against.

        Returns per participant its sum group and distance group (``-1``: none), and per
        distance group its cluster label (``-1`` for a landmark group). A cluster with fewer
        sampled members than ``min-cluster-size`` is neither summed nor measured.
        """
        participants = rnd.participants
        floor = self.clustering.min_cluster_size
        if self.selection is not None:
            return self._plan_verified(state, rnd)
        if not state.labels:
            everyone = 0 if len(participants) >= floor else -1
            groups = landmark_groups(len(participants), self.clustering)
            dist_labels = [-1] * len(participants)
            for g, members in enumerate(groups):
                for m in members:
                    dist_labels[m] = g
            return [everyone] * len(participants), dist_labels, [-1] * len(groups)
        current = [state.labels.get(p, -1) for p in participants]
        kept = sorted({c for c in current if c >= 0 and current.count(c) >= floor})
        index = {c: i for i, c in enumerate(kept)}
        labels = [index.get(c, -1) for c in current]
        return labels, list(labels), kept

    def _plan_verified(
        self, state: FederationState, rnd: RoundState
    ) -> tuple[list[int], list[int], list[int]]:
        """The verified rule's plan over the federation's fixed site order."""
        for site in rnd.participants:
            if site not in state.universe:
                state.universe.append(site)
        if state.selection is not None and len(state.selection.labels) < len(state.universe):
            # A site new to the federation starts in cluster 0 until it is measured.
            extra = len(state.universe) - len(state.selection.labels)
            state.selection = SelectionState(
                labels=state.selection.labels + (0,) * extra,
                proposal=state.selection.proposal,
                score=state.selection.score,
            )
        rnd.universe, rnd.selection = list(state.universe), state.selection
        index = {s: i for i, s in enumerate(rnd.universe)}
        active = np.zeros(len(rnd.universe), dtype=bool)
        active[[index[s] for s in rnd.participants]] = True
        groups = rules.plan_groups(
            len(rnd.universe), state.selection, self.selection, rnd.server_round, active
        )
        dist_labels = [-1] * len(rnd.participants)
        at = {s: j for j, s in enumerate(rnd.participants)}
        for g, members in enumerate(groups):
            for i in members:
                dist_labels[at[rnd.universe[i]]] = g
        current = [state.labels.get(p, 0) for p in rnd.participants]
        return current, dist_labels, [-1] * len(groups)

    # ------------------------------------------------------------------ final evaluation
    def evaluate(
        self, grid: Grid, state: FederationState, server_round: int, nodes: dict[str, int]
    ) -> dict[str, wire.Evaluation]:
        """The last round's own evaluation exchange (earlier rounds ride on ``train``)."""
        messages = [
            Message(
                wire.EvaluateRequest(
                    server_round, self.mode, state.prompt_for(site), state.committed_round
                ).to_content(),
                node,
                wire.EVALUATE,
                group_id=str(server_round),
            )
            for site, node in nodes.items()
        ]
        out = {}
        for reply in self._send(grid, messages):
            site = self._site(state, reply.metadata.src_node_id)
            if reply.has_error():
                log.warning("final evaluation: %s failed: %s", site, _first_line(reply))
                continue
            try:
                parsed = wire.EvaluateReply.from_content(reply.content)
            except SecureProtocolError as exc:
                log.warning("final evaluation: malformed reply from %s: %s", site, exc)
                continue
            if parsed.site_id != site:
                log.warning("final evaluation: node answers as %r, not %s", parsed.site_id, site)
                continue
            out[site] = parsed.evaluation
        return out


def _first_line(reply: Message) -> str:
    lines = (reply.error.reason or "").strip().splitlines()
    return lines[-1] if lines else "unknown"


def _compact(labels: dict[str, int]) -> dict[str, int]:
    """Relabel clusters ``0..k-1`` in order of their first member's site id."""
    order: dict[int, int] = {}
    for site in sorted(labels, key=natural_key):
        order.setdefault(labels[site], len(order))
    return {site: order[label] for site, label in labels.items()}


def _match_labels(old: list[int], new: list[int], taken: set[int]) -> list[int]:
    """Map step labels back to cluster labels (each keeps the old label most members had)."""
    overlap: dict[tuple[int, int], int] = {}
    for o, n in zip(old, new, strict=True):
        overlap[(n, o)] = overlap.get((n, o), 0) + 1
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for (n, o), _count in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0])):
        if n not in mapping and o not in used:
            mapping[n] = o
            used.add(o)
    fresh = max(taken | used, default=-1) + 1
    out = []
    for n in new:
        if n not in mapping:
            mapping[n], fresh = fresh, fresh + 1
        out.append(mapping[n])
    return out
