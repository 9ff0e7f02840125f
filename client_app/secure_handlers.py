"""SecFPP handlers on the site: key setup, sealing the round's shares, and the SecPC step.

No torch here: in deployment these run in a fresh process per message and must stay light.
Every share leaves the site sealed for exactly one peer (AES-GCM with run, round, stage,
sender and receiver bound); the server relays ciphertexts it cannot open.

The site, not the server, enforces what a SecPC query may ask (:func:`check_grouping`): one
grouping per round (a repeat of the same grouping gets the same answer), no group below the
size floor, no overlap between groups of one query, no group with a sender whose share this
site does not hold. A dishonest server therefore cannot have one value decoded over two member
sets, or a single site's value decoded at all.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from secpc import (
    EphemeralKey,
    IdentityKey,
    KeyAnnouncement,
    KeyDirectory,
    PairwiseChannel,
    SecureProtocolError,
    directory_digest,
    field_to_array,
)
from secpc import messages as wire
from secpc.protocol import (
    load_site_identities,
    participant_answer,
    share_round,
)

from .settings import ClientSettings, site_config_from_context
from .site_config import SiteConfig

log = logging.getLogger("secfpp.client")

SHARES_STAGE = "secpc-shares"
_KEYS = "secpc-keys"
#: In ``_KEYS``: digest of the last directory this site verified (see ``_channel``).
_VERIFIED_DIRECTORY = "verified-directory"
_OWN_SHARE = "secpc-own-share"
_ANSWERED = "secpc-answered"
#: No group of one site is ever answered, whatever the run config says.
HARD_FLOOR = 2


def _site(context: Context) -> SiteConfig:
    settings = ClientSettings.from_run_config(dict(context.run_config))
    return site_config_from_context(dict(context.node_config), settings)


def site_identity(site: SiteConfig) -> IdentityKey:
    """The site's long-term Ed25519 key: from its YAML, or made once in its state directory.

    Raises
    ------
    ValueError
        If the configured key file is missing or unreadable (the file is named).
    """
    if site.identity_key:
        path = Path(site.identity_key).expanduser()
        try:
            return IdentityKey.load(path)
        except (OSError, ValueError, SecureProtocolError) as exc:
            raise ValueError(
                f"{site.source}: key 'identity-key': cannot load {path} ({exc})"
            ) from exc
    path = site.state_path / "identity.key"
    if path.is_file():
        return IdentityKey.load(path)
    key = IdentityKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    key.save(path)
    return key


def keysetup(message: Message, context: Context) -> Message:
    """Announce a fresh X25519 key for this run, signed by the site's identity key.

    The plaintext twin (``mode = clustered``) uses the same exchange to learn site ids, and
    gets only the site id back.
    """
    site = _site(context)
    request = wire.KeySetupRequest.from_content(message.content)
    if request.mode == "clustered":
        return Message(wire.KeySetupReply(site.site_id).to_content(), reply_to=message)
    announcement, identity = announce(context, site)
    reply = wire.KeySetupReply(site.site_id, announcement, identity.public_bytes)
    return Message(reply.to_content(), reply_to=message)


def announce(context: Context, site: SiteConfig) -> tuple[bytes, IdentityKey]:
    """Make and keep a fresh session key for this run; return its signed announcement."""
    identity = site_identity(site)
    ephemeral = EphemeralKey()
    context.state[_KEYS] = ConfigRecord(
        {"ephemeral": ephemeral.to_bytes(), "run-id": int(context.run_id)}
    )
    announcement = KeyAnnouncement.create(identity, site.site_id, int(context.run_id), ephemeral)
    return announcement.to_bytes(), identity


def has_session_key(context: Context) -> bool:
    """Whether this site holds a session key for the current run (lost on a restart)."""
    keys = context.state.config_records.get(_KEYS)
    return keys is not None and int(keys["run-id"]) == int(context.run_id)


def _channel(context: Context, site: SiteConfig, keys: wire.KeyDirectoryView) -> PairwiseChannel:
    """Verify the relayed key directory and open this site's pairwise channel."""
    if not has_session_key(context):
        raise SecureProtocolError("no session key for this run: this site missed key setup")
    run_id = int(context.run_id)
    if site.site_identities:
        known = load_site_identities(site.site_identities)
    else:
        # Without a local copy of the federation's identities the site accepts the ones the
        # server relays: safe against an honest-but-curious server, not a malicious one.
        known = dict(keys.identities)
    # The server relays the same directory in every message of a run; checking its N
    # signatures once per run instead of twice per round is most of a site's crypto time
    # in a federation of 1,000 sites. The digest covers the directory and the identity keys.
    session = context.state[_KEYS]
    seen = session.get(_VERIFIED_DIRECTORY)
    directory = KeyDirectory.from_bytes(
        keys.directory, known, run_id, verified_digest=None if seen is None else bytes(seen)
    )
    session[_VERIFIED_DIRECTORY] = directory_digest(keys.directory, known)
    ephemeral = EphemeralKey.from_bytes(bytes(session["ephemeral"]))
    if directory.public_key(site.site_id) != ephemeral.public_bytes:
        raise SecureProtocolError("the key directory holds another key for this site")
    return PairwiseChannel(site.site_id, ephemeral, directory)


def seal_shares(
    context: Context, request: wire.TrainRequest, update: np.ndarray, z: np.ndarray
) -> tuple[dict[str, bytes], dict[str, float]]:
    """Exchange 1: LCC-share the update and ``z_i`` and seal one plaintext per participant.

    Parameters
    ----------
    context : Context
        Holds the session key from key setup.
    request : TrainRequest
        The round's participants, protocol parameters and key directory.
    update, z : np.ndarray
        The ``P_G`` update (with its appended statistics) and the reduced descriptor, in the
        clear (never sent).

    Returns
    -------
    tuple
        ``(sealed, stats)``: each other participant's site id to its ciphertext, and
        timing/clipping figures.
    """
    start = time.perf_counter()
    site = _site(context)
    channel = _channel(context, site, request.keys)
    participants = request.participants
    # Shares go to the round's committee only, which this site derives itself.
    committee = request.protocol.committee_for(
        participants, request.server_round, request.keys.directory
    )
    plaintexts, stats = share_round(
        update, z, len(committee), request.n_dist_groups, request.protocol
    )
    sealed = {
        member: channel.seal(
            plaintexts[j], round=request.server_round, stage=SHARES_STAGE, receiver=member
        )
        for j, member in enumerate(committee)
        if member != site.site_id
    }
    # The site's own share never travels: it waits in the SuperNode's state for exchange 2,
    # with what exchange 1 announced, so the query cannot change it afterwards.
    own = committee.index(site.site_id) if site.site_id in committee else -1
    context.state[_OWN_SHARE] = ConfigRecord(
        {
            "server-round": request.server_round,
            "plaintext": plaintexts[own] if own >= 0 else b"",
            "participants": list(participants),
            "committee": list(committee),
            "n-dist-groups": request.n_dist_groups,
        }
    )
    return sealed, {**stats, "crypto-seconds": time.perf_counter() - start}


def check_grouping(
    request: wire.SecPCRequest, announced: ConfigRecord | None, site_id: str, floor: int
) -> str:
    """Why this site must refuse the query, or ``""`` when it may answer.

    Parameters
    ----------
    request : SecPCRequest
        The query.
    announced : ConfigRecord or None
        What this site stored when it shared in exchange 1 (round, participants, groups).
    site_id : str
        This site.
    floor : int
        The smallest group this site answers.
    """
    if announced is None or int(announced["server-round"]) != request.server_round:
        return f"this site shared nothing in round {request.server_round}"
    if list(announced["participants"]) != request.participants:
        return "the participants differ from those of exchange 1"
    if site_id not in list(announced["committee"]):
        return "this site is not on the round's committee"
    if (
        int(announced["n-dist-groups"]) != request.n_dist_groups
        or len(request.dist_groups) != request.n_dist_groups
    ):
        return "the number of distance groups differs from exchange 1"
    if site_id not in request.senders:
        return "this site is not among the senders"
    if len(set(request.senders)) != len(request.senders) or not set(request.senders) <= set(
        request.participants
    ):
        return "senders are repeated or not participants"
    senders = {request.participants.index(s) for s in request.senders}
    for kind, groups, allow_empty in (
        ("sum", request.sum_groups, False),
        ("distance", request.dist_groups, True),
    ):
        seen: set[int] = set()
        for g, members in enumerate(groups):
            if not members and allow_empty:
                continue
            if len(members) < floor:
                return f"{kind} group {g} has {len(members)} members, fewer than {floor}"
            if len(set(members)) != len(members) or seen & set(members):
                return f"{kind} group {g} overlaps another group or repeats a member"
            if not set(members) <= senders:
                return f"{kind} group {g} includes a site whose share this site does not hold"
            seen |= set(members)
    return ""


def secpc(message: Message, context: Context) -> Message:
    """Exchange 2: open the relayed shares and answer coded sums and distances, or refuse.

    The site refuses (and says why) when the grouping breaks :func:`check_grouping`, when it is
    a second, different grouping for the same round, or when any sender's ciphertext does not
    open. A refusal counts as a missing answer: the server never re-decodes over another set.
    """
    start = time.perf_counter()
    site = _site(context)
    request = wire.SecPCRequest.from_content(message.content)

    def refuse(reason: str) -> Message:
        log.warning(
            "%s: refused the SecPC query of round %d: %s",
            site.site_id,
            request.server_round,
            reason,
        )
        return Message(wire.SecPCReply(refusal=reason).to_content(), reply_to=message)

    grouping = repr(request.grouping()).encode()
    answered = context.state.config_records.get(_ANSWERED)
    if answered is not None and int(answered["server-round"]) >= request.server_round:
        if (
            int(answered["server-round"]) == request.server_round
            and bytes(answered["grouping"]) == grouping
        ):
            # The identical question gets the identical answer: nothing new is revealed.
            return Message(
                wire.SecPCReply(
                    sums=np.frombuffer(bytes(answered["sums"]), dtype=np.uint32).reshape(
                        answered["sums-shape"]
                    ),
                    distances=np.frombuffer(bytes(answered["distances"]), dtype=np.uint32).reshape(
                        answered["distances-shape"]
                    ),
                ).to_content(),
                reply_to=message,
            )
        return refuse(
            f"this site already answered another grouping for round {answered['server-round']}"
        )
    floor = max(HARD_FLOOR, int(context.run_config.get("min-cluster-size", 3)))
    own = context.state.config_records.get(_OWN_SHARE)
    reason = check_grouping(request, own, site.site_id, floor)
    if reason:
        return refuse(reason)
    channel = _channel(context, site, request.keys)
    opened: dict[int, bytes] = {}
    rejected: dict[str, str] = {}
    for sender in request.senders:
        j = request.participants.index(sender)
        if sender == site.site_id:
            opened[j] = bytes(own["plaintext"])
            continue
        if sender not in request.relay:
            rejected[sender] = "no ciphertext relayed"
            continue
        try:
            opened[j] = channel.open(
                request.relay[sender], round=request.server_round, stage=SHARES_STAGE, sender=sender
            )
        except SecureProtocolError as exc:
            rejected[sender] = f"{type(exc).__name__}: {exc}"
    if rejected:
        return refuse("shares rejected: " + "; ".join(f"{s}: {r}" for s, r in rejected.items()))
    try:
        sums, distances = participant_answer(
            opened,
            len(request.participants),
            request.sum_groups,
            request.dist_groups,
            request.protocol,
        )
    except SecureProtocolError as exc:
        return refuse(f"{type(exc).__name__}: {exc}")
    sums = field_to_array(sums, request.protocol.update_params)
    distances = field_to_array(distances, request.protocol.z_params)
    context.state[_ANSWERED] = ConfigRecord(
        {
            "server-round": request.server_round,
            "grouping": grouping,
            "sums": np.ascontiguousarray(sums).tobytes(),
            "sums-shape": list(sums.shape),
            "distances": np.ascontiguousarray(distances).tobytes(),
            "distances-shape": list(distances.shape),
        }
    )
    reply = wire.SecPCReply(sums, distances, crypto_seconds=time.perf_counter() - start)
    return Message(reply.to_content(), reply_to=message)
