"""SecFPP handlers on the site: key setup, sealing the round's shares, and the SecPC step.

No torch here: in deployment these run in a fresh process per message and must stay light.
Every share leaves the site sealed for exactly one peer (AES-GCM with run, round, stage,
sender and receiver bound); the server relays ciphertexts it cannot open.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from secpc import (
    EphemeralKey,
    IdentityKey,
    KeyAnnouncement,
    KeyDirectory,
    PairwiseChannel,
    SecureProtocolError,
    field_to_array,
)
from secpc.protocol import (
    ProtocolConfig,
    groups_from_labels,
    load_site_identities,
    participant_answer,
    share_round,
)

from .settings import ClientSettings, site_config_from_context
from .site_config import SiteConfig

log = logging.getLogger("secfpp.client")

SHARES_STAGE = "secpc-shares"
_KEYS = "secpc-keys"
_OWN_SHARE = "secpc-own-share"


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
    if str(message.content["config"].get("mode", "secfpp")) == "clustered":
        return Message(
            RecordDict({"keysetup": ConfigRecord({"site-id": site.site_id})}), reply_to=message
        )
    identity = site_identity(site)
    ephemeral = EphemeralKey()
    context.state[_KEYS] = ConfigRecord(
        {"ephemeral": ephemeral.to_bytes(), "run-id": int(context.run_id)}
    )
    announcement = KeyAnnouncement.create(identity, site.site_id, int(context.run_id), ephemeral)
    return Message(
        RecordDict(
            {
                "keysetup": ConfigRecord(
                    {
                        "site-id": site.site_id,
                        "announcement": announcement.to_bytes(),
                        "identity-public": identity.public_bytes,
                    }
                )
            }
        ),
        reply_to=message,
    )


def _channel(context: Context, site: SiteConfig, config: ConfigRecord) -> PairwiseChannel:
    """Verify the relayed key directory and open this site's pairwise channel."""
    if _KEYS not in context.state.config_records:
        raise SecureProtocolError("no session key: this site missed key setup for the run")
    keys = context.state[_KEYS]
    run_id = int(context.run_id)
    if int(keys["run-id"]) != run_id:
        raise SecureProtocolError("session key belongs to another run; key setup must be redone")
    if site.site_identities:
        known = load_site_identities(site.site_identities)
    else:
        # Without a local copy of the federation's identities the site accepts the ones the
        # server relays: safe against an honest-but-curious server, not a malicious one.
        known = dict(zip(config["identity-sites"], config["identity-keys"], strict=True))
    directory = KeyDirectory.from_bytes(bytes(config["key-directory"]), known, run_id)
    ephemeral = EphemeralKey.from_bytes(bytes(keys["ephemeral"]))
    if directory.public_key(site.site_id) != ephemeral.public_bytes:
        raise SecureProtocolError("the key directory holds another key for this site")
    return PairwiseChannel(site.site_id, ephemeral, directory)


def seal_shares(
    context: Context, config: ConfigRecord, update: np.ndarray, z: np.ndarray
) -> tuple[ConfigRecord, dict[str, float]]:
    """Exchange 1: LCC-share the update and ``z_i`` and seal one plaintext per participant.

    Parameters
    ----------
    context : Context
        Holds the session key from key setup.
    config : ConfigRecord
        The train message's config: participants, groups, protocol parameters, directory.
    update, z : np.ndarray
        The ``P_G`` update and the reduced personalized prompt, in the clear (never sent).

    Returns
    -------
    tuple
        ``(sealed, stats)``: a record mapping each participant's site id to its ciphertext,
        and timing/clipping figures for the metrics.
    """
    start = time.perf_counter()
    site = _site(context)
    channel = _channel(context, site, config)
    participants = [str(p) for p in config["participants"]]
    protocol = ProtocolConfig.from_config(config)
    n_dist = int(config["n-dist-groups"])
    plaintexts, stats = share_round(update, z, len(participants), n_dist, protocol)
    server_round = int(config["server-round"])
    sealed = ConfigRecord(
        {
            peer: channel.seal(plaintexts[j], round=server_round, stage=SHARES_STAGE, receiver=peer)
            for j, peer in enumerate(participants)
            if peer != site.site_id
        }
    )
    # The site's own share never travels: it waits in the SuperNode's state for exchange 2.
    own = participants.index(site.site_id)
    context.state[_OWN_SHARE] = ConfigRecord(
        {"server-round": server_round, "plaintext": plaintexts[own]}
    )
    return sealed, {**stats, "crypto-seconds": time.perf_counter() - start}


def secpc(message: Message, context: Context) -> Message:
    """Exchange 2: open the relayed shares and answer with coded sums and distances.

    If any relayed ciphertext fails to open (tampered, replayed, misaddressed, wrongly signed),
    the site answers nothing but the list of rejected senders, so the server can leave them
    out and ask again; an answer computed on a subset of senders would decode wrongly.
    """
    start = time.perf_counter()
    site = _site(context)
    config = message.content["config"]
    relay = message.content["relay"]
    channel = _channel(context, site, config)
    participants = [str(p) for p in config["participants"]]
    senders = [str(s) for s in config["senders"]]
    server_round = int(config["server-round"])
    opened: dict[int, bytes] = {}
    rejected: dict[str, str] = {}
    for sender in senders:
        if sender == site.site_id:
            own = context.state.config_records.get(_OWN_SHARE)
            if own is None or int(own["server-round"]) != server_round:
                rejected[sender] = "MissingShare: this site's own share of the round is gone"
            else:
                opened[participants.index(sender)] = bytes(own["plaintext"])
            continue
        if sender not in relay or sender not in participants:
            rejected[sender] = "MissingShare: no ciphertext relayed for this sender"
            continue
        try:
            opened[participants.index(sender)] = channel.open(
                bytes(relay[sender]), round=server_round, stage=SHARES_STAGE, sender=sender
            )
        except SecureProtocolError as exc:
            rejected[sender] = f"{type(exc).__name__}: {exc}"
    if rejected:
        for sender, reason in rejected.items():
            log.warning("%s: rejected shares of %s: %s", site.site_id, sender, reason)
        return Message(RecordDict({"rejected": ConfigRecord(rejected)}), reply_to=message)
    protocol = ProtocolConfig.from_config(config)
    try:
        sums, distances = participant_answer(
            opened,
            len(participants),
            groups_from_labels(config["sum-labels"]),
            groups_from_labels(config["dist-labels"], int(config["n-dist-groups"])),
            protocol,
        )
    except SecureProtocolError as exc:
        return Message(
            RecordDict({"rejected": ConfigRecord({"<round>": f"{type(exc).__name__}: {exc}"})}),
            reply_to=message,
        )
    return Message(
        RecordDict(
            {
                "answer": ArrayRecord(
                    {
                        "sums": Array(field_to_array(sums, protocol.update_params)),
                        "distances": Array(field_to_array(distances, protocol.z_params)),
                    }
                ),
                "metrics": MetricRecord({"crypto-seconds": time.perf_counter() - start}),
            }
        ),
        reply_to=message,
    )
