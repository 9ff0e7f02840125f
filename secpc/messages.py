"""SecFPP's wire messages, typed once: both apps build and read them only through this module.

Every key that crosses the wire in a SecFPP run is spelled here and nowhere else. Each message
is a dataclass with ``to_content()`` (a Flower ``RecordDict``) and ``from_content()`` (which
raises :class:`~secpc.errors.MalformedMessageError` naming what is missing or of the wrong
type), so a handler never indexes a record by a literal key.

:data:`SITE_CLEAR_FIELDS` is the allow-list of everything a site sends in the clear, as
``(record, key)`` pairs; the key ``*`` of the ``shares`` record stands for the peer site ids,
whose values are AES-GCM ciphertexts only the named peer can open. A test records a whole
federation and fails on any field outside this list, so a new field cannot leave a site
without being declared here (and in README.md's "What the server learns").

This module imports ``flwr.app`` (records only, no ServerApp or ClientApp); the protocol math
in the rest of :mod:`secpc` stays free of Flower.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .errors import MalformedMessageError
from .protocol import UPDATE_STATS as UPDATE_STATS  # re-exported: part of the wire format
from .protocol import ProtocolConfig

# -- message types --------------------------------------------------------------------------
KEYSETUP = "query.keysetup"
TRAIN = "train"
SECPC = "query.secpc"
EVALUATE = "evaluate"

# -- records --------------------------------------------------------------------------------
CONFIG = "config"
SITE = "site"
METRICS = "metrics"
ARRAYS = "arrays"
SHARES = "shares"
RELAY = "relay"
ANSWER = "answer"
PLAIN = "plain"
REFUSAL = "refusal"
KEYS = "keysetup"

# -- keys -----------------------------------------------------------------------------------
SITE_ID = "site-id"
SERVER_ROUND = "server-round"
COMMITTED_ROUND = "committed-round"
MODE = "mode"
ANNOUNCEMENT = "announcement"
IDENTITY_PUBLIC = "identity-public"
PARTICIPANTS = "participants"
SENDERS = "senders"
SUM_GROUPS = "sum-groups"
DIST_GROUPS = "dist-groups"
N_DIST_GROUPS = "n-dist-groups"
MIN_GROUP = "min-group-size"
KEY_DIRECTORY = "key-directory"
IDENTITY_SITES = "identity-sites"
IDENTITY_KEYS = "identity-keys"
OFFSET = "global-offset"
ACCURACY = "accuracy"
LOSS = "loss"
TEST_EXAMPLES = "test-examples"
UPDATE_DIM = "update-dim"
TRAIN_SECONDS = "train-seconds"
CRYPTO_SECONDS = "crypto-seconds"
EPSILON = "epsilon"
REKEY = "rekey-announcement"
SUMS = "sums"
DISTANCES = "distances"
UPDATE = "update"
Z = "z"
REASON = "reason"


#: Everything a site may send in the clear in SecFPP, as ``(record, key)``.
SITE_CLEAR_FIELDS: frozenset[tuple[str, str]] = frozenset(
    {
        (KEYS, SITE_ID),
        (KEYS, ANNOUNCEMENT),
        (KEYS, IDENTITY_PUBLIC),
        (SITE, SITE_ID),
        (SITE, REKEY),
        (METRICS, ACCURACY),
        (METRICS, LOSS),
        (METRICS, TEST_EXAMPLES),
        (METRICS, UPDATE_DIM),
        (METRICS, TRAIN_SECONDS),
        (METRICS, CRYPTO_SECONDS),
        (METRICS, EPSILON),
        (SHARES, "*"),
        (ANSWER, SUMS),
        (ANSWER, DISTANCES),
        (REFUSAL, REASON),
    }
)
#: What each allowed field is, for README.md's "What the server learns" and for reviewers.
SITE_CLEAR_MEANING: dict[tuple[str, str], str] = {
    (KEYS, SITE_ID): "the site's id (authenticated by its identity key)",
    (KEYS, ANNOUNCEMENT): "its ephemeral X25519 public key for the run, signed",
    (KEYS, IDENTITY_PUBLIC): "its long-term Ed25519 public key",
    (SITE, SITE_ID): "the site's id",
    (SITE, REKEY): "a fresh signed key announcement after a restart that lost the session key",
    (METRICS, ACCURACY): "accuracy of its personalized prompt on its own held-out images",
    (METRICS, LOSS): "the loss of the same evaluation",
    (METRICS, TEST_EXAMPLES): "how many held-out images that evaluation used",
    (METRICS, UPDATE_DIM): "the size of P_G (public: backbone width times n-ctx)",
    (METRICS, TRAIN_SECONDS): "seconds of local training (cost accounting)",
    (METRICS, CRYPTO_SECONDS): "seconds of sharing, sealing and answering (cost accounting)",
    (METRICS, EPSILON): "with dp = dp-sgd: the site's privacy loss so far (accountant's epsilon)",
    (SHARES, "*"): "one AES-GCM ciphertext per peer: the peer's LCC shares (opaque to the server)",
    (ANSWER, SUMS): "coded cluster sums (LCC evaluations; reveal only the decoded sums)",
    (ANSWER, DISTANCES): "coded, blinded scaled distances (reveal only the decoded distances)",
    (REFUSAL, REASON): "why the site refused a SecPC query (names senders or groups)",
}


def _need(content: RecordDict, record: str, kind: str) -> Any:
    records = {
        "config": content.config_records,
        "metrics": content.metric_records,
        "arrays": content.array_records,
    }[kind]
    if record not in records:
        raise MalformedMessageError(f"message has no '{record}' record")
    return records[record]


def _get(record: Mapping, key: str, kind: type, where: str) -> Any:
    if key not in record:
        raise MalformedMessageError(f"'{where}' lacks '{key}'")
    value = record[key]
    try:
        if kind is bytes:
            if not isinstance(value, bytes):
                raise TypeError(type(value).__name__)
            return value
        if kind is float:
            out = float(value)
            if not math.isfinite(out):
                raise ValueError("not finite")
            return out
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return int(value)
        if kind is list:
            if not isinstance(value, list):
                raise TypeError(type(value).__name__)
            return value
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"'{where}.{key}': {exc}") from exc


def _array(record: ArrayRecord, key: str, where: str) -> np.ndarray:
    if key not in record:
        raise MalformedMessageError(f"'{where}' lacks '{key}'")
    try:
        return record[key].numpy()
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a malformed message
        raise MalformedMessageError(f"'{where}.{key}' is not an array: {exc}") from exc


def _put_offset(content: RecordDict, offset: np.ndarray | None) -> None:
    """Attach a cluster's ``P_G`` offset (train and evaluate requests carry it alike)."""
    if offset is not None:
        content[ARRAYS] = ArrayRecord({OFFSET: Array(offset.astype(np.float32))})


def _read_offset(content: RecordDict) -> np.ndarray | None:
    """The ``P_G`` offset of a request, if it carries one."""
    if ARRAYS not in content.array_records:
        return None
    return _array(content[ARRAYS], OFFSET, ARRAYS)


def _groups(flat: list, where: str) -> list[list[int]]:
    """Groups travel as one flat list ``[n0, m.., n1, m.., ...]`` (records hold flat lists)."""
    out, i = [], 0
    try:
        while i < len(flat):
            size = int(flat[i])
            if size < 0 or i + 1 + size > len(flat):
                raise ValueError("bad group length")
            out.append([int(m) for m in flat[i + 1 : i + 1 + size]])
            i += 1 + size
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"'{where}' is not a list of groups: {exc}") from exc
    return out


def _flat(groups: list[list[int]]) -> list[int]:
    out: list[int] = []
    for g in groups:
        out += [len(g), *[int(m) for m in g]]
    return out


@dataclass
class KeyDirectoryView:
    """The signed key directory and the identity keys it was checked against."""

    directory: bytes = b""
    identities: dict[str, bytes] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        """Flat config entries."""
        return {
            KEY_DIRECTORY: self.directory,
            IDENTITY_SITES: list(self.identities),
            IDENTITY_KEYS: list(self.identities.values()),
        }

    @classmethod
    def from_config(cls, config: ConfigRecord) -> KeyDirectoryView:
        """Inverse of :meth:`to_config`."""
        sites = [str(s) for s in _get(config, IDENTITY_SITES, list, CONFIG)]
        keys = [bytes(k) for k in _get(config, IDENTITY_KEYS, list, CONFIG)]
        if len(sites) != len(keys):
            raise MalformedMessageError("identity sites and keys differ in length")
        return cls(_get(config, KEY_DIRECTORY, bytes, CONFIG), dict(zip(sites, keys, strict=True)))


# -- key setup ------------------------------------------------------------------------------
@dataclass
class KeySetupRequest:
    """Server to site: announce a session key for this run (the twin only asks for the id)."""

    server_round: int
    mode: str

    def to_content(self) -> RecordDict:
        """Flower content."""
        return RecordDict(
            {CONFIG: ConfigRecord({SERVER_ROUND: self.server_round, MODE: self.mode})}
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> KeySetupRequest:
        """Parse; raises :class:`MalformedMessageError`."""
        cfg = _need(content, CONFIG, "config")
        return cls(_get(cfg, SERVER_ROUND, int, CONFIG), _get(cfg, MODE, str, CONFIG))


@dataclass
class KeySetupReply:
    """Site to server: its id, and (SecFPP) its signed ephemeral key and identity key."""

    site_id: str
    announcement: bytes = b""
    identity_public: bytes = b""

    def to_content(self) -> RecordDict:
        """Flower content."""
        rec = {SITE_ID: self.site_id}
        if self.announcement:
            rec |= {ANNOUNCEMENT: self.announcement, IDENTITY_PUBLIC: self.identity_public}
        return RecordDict({KEYS: ConfigRecord(rec)})

    @classmethod
    def from_content(cls, content: RecordDict) -> KeySetupReply:
        """Parse; raises :class:`MalformedMessageError`."""
        rec = _need(content, KEYS, "config")
        announcement = _get(rec, ANNOUNCEMENT, bytes, KEYS) if ANNOUNCEMENT in rec else b""
        identity = _get(rec, IDENTITY_PUBLIC, bytes, KEYS) if announcement else b""
        return cls(_get(rec, SITE_ID, str, KEYS), announcement, identity)


# -- exchange 1 -----------------------------------------------------------------------------
@dataclass
class TrainRequest:
    """Server to site: train from this ``P_G`` offset and share the round's results.

    Attributes
    ----------
    server_round, mode : int, str
        The real round number and ``secfpp`` or ``clustered``.
    training : dict
        Local-training keys (``local-epochs``, ...), from ``strategies.base.LocalTraining``.
    protocol : ProtocolConfig
        Thresholds, quantization and projection.
    participants : list of str
        Sampled sites, in share order (participant ``j`` receives share ``j``).
    n_dist_groups : int
        How many groups distances will be measured against (fixes the blinding shape).
    keys : KeyDirectoryView
        The directory (SecFPP only).
    offset : np.ndarray or None
        The cluster's ``P_G`` as an offset from the public initial prompt.
    committed_round : int
        The last round the server committed: a site keeps a round's ``P_L`` pending until
        then, and drops it if the server skipped that round.
    """

    server_round: int
    mode: str
    training: dict[str, Any]
    protocol: ProtocolConfig
    participants: list[str]
    n_dist_groups: int
    keys: KeyDirectoryView = field(default_factory=KeyDirectoryView)
    offset: np.ndarray | None = None
    committed_round: int = 0

    def to_content(self) -> RecordDict:
        """Flower content."""
        cfg = {
            **self.training,
            COMMITTED_ROUND: self.committed_round,
            **self.protocol.to_config(),
            SERVER_ROUND: self.server_round,
            MODE: self.mode,
            PARTICIPANTS: list(self.participants),
            N_DIST_GROUPS: self.n_dist_groups,
        }
        if self.keys.directory:
            cfg |= self.keys.to_config()
        content = RecordDict({CONFIG: ConfigRecord(cfg)})
        _put_offset(content, self.offset)
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainRequest:
        """Parse; raises :class:`MalformedMessageError`."""
        cfg = _need(content, CONFIG, "config")
        offset = _read_offset(content)
        training = {k: cfg[k] for k in ("local-epochs", "learning-rate", "batch-size") if k in cfg}
        return cls(
            server_round=_get(cfg, SERVER_ROUND, int, CONFIG),
            mode=_get(cfg, MODE, str, CONFIG),
            training=training,
            protocol=ProtocolConfig.from_config(cfg),
            participants=[str(p) for p in _get(cfg, PARTICIPANTS, list, CONFIG)],
            n_dist_groups=_get(cfg, N_DIST_GROUPS, int, CONFIG),
            keys=KeyDirectoryView.from_config(cfg) if KEY_DIRECTORY in cfg else KeyDirectoryView(),
            offset=offset,
            committed_round=_get(cfg, COMMITTED_ROUND, int, CONFIG),
        )


@dataclass
class Evaluation:
    """A site's personalized accuracy on its own held-out images (declared clear fields)."""

    accuracy: float
    loss: float
    examples: int

    def to_metrics(self) -> dict[str, float | int]:
        """Metric entries."""
        return {ACCURACY: self.accuracy, LOSS: self.loss, TEST_EXAMPLES: self.examples}

    @classmethod
    def from_metrics(cls, metrics: MetricRecord) -> Evaluation:
        """Parse; NaN or infinite values are malformed."""
        acc = _get(metrics, ACCURACY, float, METRICS)
        if not 0.0 <= acc <= 1.0:
            raise MalformedMessageError(f"'{METRICS}.{ACCURACY}' = {acc} is not in [0, 1]")
        return cls(
            acc, _get(metrics, LOSS, float, METRICS), _get(metrics, TEST_EXAMPLES, int, METRICS)
        )


@dataclass
class TrainReply:
    """Site to server after exchange 1.

    Exactly one of ``shares`` (SecFPP: peer id to ciphertext), ``plain`` (the twin: the
    clipped update and ``z_i`` in the clear) or ``rekey`` (a restarted site that lost its
    session key: a fresh signed announcement, nothing else) is set.
    """

    site_id: str
    evaluation: Evaluation | None = None
    update_dim: int = 0
    train_seconds: float = 0.0
    crypto_seconds: float = 0.0
    epsilon: float | None = None
    shares: dict[str, bytes] | None = None
    plain: tuple[np.ndarray, np.ndarray] | None = None
    rekey: bytes = b""

    def to_content(self) -> RecordDict:
        """Flower content."""
        site: dict[str, Any] = {SITE_ID: self.site_id}
        if self.rekey:
            site[REKEY] = self.rekey
            return RecordDict({SITE: ConfigRecord(site)})
        metrics: dict[str, float | int] = {
            UPDATE_DIM: self.update_dim,
            TRAIN_SECONDS: self.train_seconds,
            CRYPTO_SECONDS: self.crypto_seconds,
        }
        if self.evaluation is not None:
            metrics |= self.evaluation.to_metrics()
        if self.epsilon is not None:
            metrics[EPSILON] = self.epsilon
        content = RecordDict({SITE: ConfigRecord(site), METRICS: MetricRecord(metrics)})
        if self.shares is not None:
            content[SHARES] = ConfigRecord(dict(self.shares))
        if self.plain is not None:
            content[PLAIN] = ArrayRecord({UPDATE: Array(self.plain[0]), Z: Array(self.plain[1])})
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainReply:
        """Parse; raises :class:`MalformedMessageError`."""
        site = _need(content, SITE, "config")
        site_id = _get(site, SITE_ID, str, SITE)
        if REKEY in site:
            return cls(site_id, rekey=_get(site, REKEY, bytes, SITE))
        metrics = _need(content, METRICS, "metrics")
        shares = None
        if SHARES in content.config_records:
            shares = {}
            for peer, value in content[SHARES].items():
                if not isinstance(value, bytes):
                    raise MalformedMessageError(f"share for {peer!r} is not bytes")
                shares[str(peer)] = value
        plain = None
        if PLAIN in content.array_records:
            rec = content[PLAIN]
            plain = (_array(rec, UPDATE, PLAIN), _array(rec, Z, PLAIN))
            if not all(np.all(np.isfinite(a)) for a in plain):
                raise MalformedMessageError("plain update or z is not finite")
        has_eval = ACCURACY in metrics
        return cls(
            site_id=site_id,
            evaluation=Evaluation.from_metrics(metrics) if has_eval else None,
            update_dim=_get(metrics, UPDATE_DIM, int, METRICS),
            train_seconds=_get(metrics, TRAIN_SECONDS, float, METRICS),
            crypto_seconds=_get(metrics, CRYPTO_SECONDS, float, METRICS),
            epsilon=_get(metrics, EPSILON, float, METRICS) if EPSILON in metrics else None,
            shares=shares,
            plain=plain,
        )


# -- exchange 2 -----------------------------------------------------------------------------
@dataclass
class SecPCRequest:
    """Server to site: the ciphertexts addressed to it and the one grouping of the round.

    Attributes
    ----------
    server_round : int
        The round; a site answers one grouping per round.
    participants, senders : list of str
        Participants fix share indices; senders are those whose shares are used.
    sum_groups, dist_groups : list of list of int
        Participant indices of each cluster to sum and each group to measure distances to.
    n_dist_groups : int
        As announced in exchange 1.
    relay : dict
        Sender id to the ciphertext it sealed for this site.
    keys : KeyDirectoryView
        The directory, to open the ciphertexts.
    protocol : ProtocolConfig
        As in exchange 1.
    """

    server_round: int
    participants: list[str]
    senders: list[str]
    sum_groups: list[list[int]]
    dist_groups: list[list[int]]
    n_dist_groups: int
    relay: dict[str, bytes]
    keys: KeyDirectoryView
    protocol: ProtocolConfig

    def grouping(self) -> tuple:
        """What a site commits to answering once per round (everything but the relay)."""
        return (
            tuple(self.participants),
            tuple(self.senders),
            tuple(map(tuple, self.sum_groups)),
            tuple(map(tuple, self.dist_groups)),
            self.n_dist_groups,
        )

    def to_content(self) -> RecordDict:
        """Flower content."""
        cfg = {
            **self.protocol.to_config(),
            **self.keys.to_config(),
            SERVER_ROUND: self.server_round,
            PARTICIPANTS: list(self.participants),
            SENDERS: list(self.senders),
            SUM_GROUPS: _flat(self.sum_groups),
            DIST_GROUPS: _flat(self.dist_groups),
            N_DIST_GROUPS: self.n_dist_groups,
        }
        return RecordDict({CONFIG: ConfigRecord(cfg), RELAY: ConfigRecord(dict(self.relay))})

    @classmethod
    def from_content(cls, content: RecordDict) -> SecPCRequest:
        """Parse; raises :class:`MalformedMessageError`."""
        cfg = _need(content, CONFIG, "config")
        relay = _need(content, RELAY, "config")
        return cls(
            server_round=_get(cfg, SERVER_ROUND, int, CONFIG),
            participants=[str(p) for p in _get(cfg, PARTICIPANTS, list, CONFIG)],
            senders=[str(s) for s in _get(cfg, SENDERS, list, CONFIG)],
            sum_groups=_groups(_get(cfg, SUM_GROUPS, list, CONFIG), SUM_GROUPS),
            dist_groups=_groups(_get(cfg, DIST_GROUPS, list, CONFIG), DIST_GROUPS),
            n_dist_groups=_get(cfg, N_DIST_GROUPS, int, CONFIG),
            relay={str(k): v for k, v in relay.items() if isinstance(v, bytes)},
            keys=KeyDirectoryView.from_config(cfg),
            protocol=ProtocolConfig.from_config(cfg),
        )


@dataclass
class SecPCReply:
    """Site to server after exchange 2: coded answers, or a refusal with its reason."""

    sums: np.ndarray | None = None
    distances: np.ndarray | None = None
    crypto_seconds: float = 0.0
    refusal: str = ""

    def to_content(self) -> RecordDict:
        """Flower content."""
        if self.refusal:
            return RecordDict({REFUSAL: ConfigRecord({REASON: self.refusal})})
        return RecordDict(
            {
                ANSWER: ArrayRecord({SUMS: Array(self.sums), DISTANCES: Array(self.distances)}),
                METRICS: MetricRecord({CRYPTO_SECONDS: self.crypto_seconds}),
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> SecPCReply:
        """Parse; raises :class:`MalformedMessageError`."""
        if REFUSAL in content.config_records:
            return cls(refusal=_get(content[REFUSAL], REASON, str, REFUSAL) or "refused")
        answer = _need(content, ANSWER, "arrays")
        metrics = _need(content, METRICS, "metrics")
        return cls(
            sums=_array(answer, SUMS, ANSWER),
            distances=_array(answer, DISTANCES, ANSWER),
            crypto_seconds=_get(metrics, CRYPTO_SECONDS, float, METRICS),
        )


# -- final evaluation -----------------------------------------------------------------------
@dataclass
class EvaluateRequest:
    """Server to site: score the personalized prompt built on this ``P_G`` offset."""

    server_round: int
    mode: str
    offset: np.ndarray | None = None
    committed_round: int = 0

    def to_content(self) -> RecordDict:
        """Flower content."""
        content = RecordDict(
            {
                CONFIG: ConfigRecord(
                    {
                        SERVER_ROUND: self.server_round,
                        MODE: self.mode,
                        COMMITTED_ROUND: self.committed_round,
                    }
                )
            }
        )
        _put_offset(content, self.offset)
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> EvaluateRequest:
        """Parse; raises :class:`MalformedMessageError`."""
        cfg = _need(content, CONFIG, "config")
        offset = _read_offset(content)
        return cls(
            _get(cfg, SERVER_ROUND, int, CONFIG),
            _get(cfg, MODE, str, CONFIG),
            offset,
            _get(cfg, COMMITTED_ROUND, int, CONFIG),
        )


@dataclass
class EvaluateReply:
    """Site to server: its id and its evaluation."""

    site_id: str
    evaluation: Evaluation

    def to_content(self) -> RecordDict:
        """Flower content."""
        return RecordDict(
            {
                SITE: ConfigRecord({SITE_ID: self.site_id}),
                METRICS: MetricRecord(self.evaluation.to_metrics()),
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> EvaluateReply:
        """Parse; raises :class:`MalformedMessageError`."""
        site = _need(content, SITE, "config")
        return cls(
            _get(site, SITE_ID, str, SITE),
            Evaluation.from_metrics(_need(content, METRICS, "metrics")),
        )


def clear_fields(content: RecordDict) -> set[tuple[str, str]]:
    """Every ``(record, key)`` of a message, with share records' peer keys folded to ``*``."""
    out: set[tuple[str, str]] = set()
    for kind in (content.config_records, content.metric_records, content.array_records):
        for name, record in kind.items():
            for key in record.keys():
                out.add((name, "*" if name == SHARES else str(key)))
    return out
