"""The round's committee: the ``M`` sites that receive the shares and answer the coded queries.

Without a committee every site secret-shares to every other site, so a site's upload grows with
the federation. With one, every participant (committee member or not) shares only to the ``M``
members, and only they answer exchange 2; the answers are what the server decodes.

- **Who** is on the committee is public: :func:`select_committee` is a deterministic function of
  public inputs, so every site recomputes it and refuses a round whose announced committee
  differs. The inputs are fixed before the server sees any share: the signed key directory (all
  sites' committed key material for the run), the round number and the sorted participant list.
  Reordering the participants changes nothing; choosing *which* sites participate (or leaving a
  site's announcement out of the directory) does change the committee, so a server that samples
  the participants can try several samples. That is no worse than the tolerance below: the
  committee only matters through how many of its members collude.
- **Collusion tolerance is unchanged**: any ``T`` committee members (with the server) learn
  nothing about a site's values, exactly as any ``T`` participants before.
- **What the server learns is unchanged**: the decoded cluster sums and scaled distances (with the
  per-row blinding caveat documented in ``secpc/README.md``).
- **Dropouts**: a committee member that drops counts like any dropout. The server needs
  ``quadratic_threshold`` committee answers for the distances (``K + T`` for the sums); with fewer
  it skips the round. Answers beyond the threshold are the redundancy that error correction
  (``decode_robust``) uses to name wrong answers.
- **Indices**: committee member at position ``j`` of the returned list is receiver ``j``: it gets
  plaintext ``j`` of every sender's :func:`~secpc.protocol.share_round` (evaluation point
  ``alpha_j``) and the server keys its answer by ``j`` when decoding.

Nothing here imports numpy, flwr or torch.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

#: Domain separation of the committee hash (versioned so a change of rule changes every committee).
_DOMAIN = b"secfpp committee v1"


def _field(data: bytes) -> bytes:
    """Length-prefixed field, so that no two different input lists hash the same bytes."""
    return struct.pack("<Q", len(data)) + data


def committee_seed(participants: Sequence[str], server_round: int, seed_material: bytes) -> bytes:
    """The 32-byte seed of a round's committee (SHA-256 of the public inputs).

    Parameters
    ----------
    participants : sequence of str
        The round's participant site ids (any order: they are sorted first).
    server_round : int
        The round number (non-negative).
    seed_material : bytes
        Public randomness fixed before the round: the signed key directory's bytes.

    Raises
    ------
    ValueError
        On a negative round, a repeated participant, or ``seed_material`` that is not bytes.
    """
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise ValueError(f"server_round must be a non-negative integer, got {server_round!r}")
    if not isinstance(seed_material, bytes | bytearray | memoryview):
        raise ValueError(f"seed_material must be bytes, got {type(seed_material).__name__}")
    ids = [str(p) for p in participants]
    if len(set(ids)) != len(ids):
        raise ValueError("participants must be distinct site ids")
    digest = hashlib.sha256()
    digest.update(_field(_DOMAIN))
    digest.update(_field(bytes(seed_material)))
    digest.update(struct.pack("<Q", server_round))
    digest.update(struct.pack("<Q", len(ids)))
    for site in sorted(ids):
        digest.update(_field(site.encode("utf-8")))
    return digest.digest()


def select_committee(
    participants: Sequence[str], size: int, server_round: int, seed_material: bytes
) -> list[str]:
    """The committee of a round: ``size`` participants chosen from public randomness.

    The seed is :func:`committee_seed` (SHA-256 over a domain tag, ``seed_material``, the round
    and the sorted participants). The permutation ranks each participant by
    ``SHA-256(seed || site id)``; the first ``size`` in that order form the committee, in that
    order (position ``j`` is receiver ``j``). Ranking by hash rather than by a seeded numpy
    generator keeps the result identical on every site whatever its numpy version (numpy does
    not promise stable permutation streams), and is reproducible in any language.

    Parameters
    ----------
    participants : sequence of str
        The round's participants (site ids, distinct). Their order does not matter, except
        when everyone is on the committee (see below).
    size : int
        Committee size ``M``; ``size <= 0`` or ``size >= len(participants)`` means everyone.
    server_round : int
        The round number.
    seed_material : bytes
        The signed key directory's bytes (every site's committed key material of the run).

    Returns
    -------
    list of str
        ``min(size, n)`` distinct participants. When everyone is on the committee the
        participants are returned in the order given, so that receiver ``j`` is participant
        ``j`` as without a committee.

    Raises
    ------
    ValueError
        As :func:`committee_seed` (checked for every ``size``).
    """
    ids = [str(p) for p in participants]
    seed = committee_seed(ids, server_round, seed_material)
    if size <= 0 or size >= len(ids):
        return ids
    ranked = sorted(ids, key=lambda site: hashlib.sha256(seed + site.encode("utf-8")).digest())
    return ranked[:size]


def committee_size(n_participants: int, quadratic_threshold: int, requested: int) -> int:
    """The committee size ``M`` of a round.

    Parameters
    ----------
    n_participants : int
        Participants of the round.
    quadratic_threshold : int
        Answers the distances need: ``2(K+T-1)+1`` (``SecureParams.quadratic_threshold``).
    requested : int
        The configured size, or ``<= 0`` for automatic.

    Returns
    -------
    int
        ``requested`` when positive; otherwise ``min(n, 2 * quadratic_threshold + 1)``: the
        threshold plus about as many again for dropouts and error correction (locating ``e``
        wrong answers needs ``2e`` answers beyond the threshold). The automatic size is ``n``
        when the federation is smaller; whether ``n`` can decode at all is
        ``ProtocolConfig.check``'s business.

    Raises
    ------
    ValueError
        If ``requested`` is positive but below ``quadratic_threshold`` (the committee could never
        decode the distances) or above ``n_participants``.
    """
    if n_participants < 1:
        raise ValueError(f"n_participants must be at least 1, got {n_participants}")
    if requested > 0:
        if requested < quadratic_threshold:
            raise ValueError(
                f"committee size {requested} is below the {quadratic_threshold} answers the "
                "distances need (2(k+t-1)+1): raise the committee size or lower secure-t/secure-k"
            )
        if requested > n_participants:
            raise ValueError(
                f"committee size {requested} exceeds the {n_participants} participants of the "
                "round: lower it (or 0 for automatic)"
            )
        return requested
    return min(n_participants, 2 * quadratic_threshold + 1)
