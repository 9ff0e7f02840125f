"""The SecPC round in pure functions, shared by the ClientApp and the SecFPP strategy.

One round, as in ``DESIGN.md``: after local training a site quantizes its ``P_G`` update and
its reduced personalized prompt ``z_i``, LCC-shares both (plus blinding shares for the
degree-2 answers) and seals one plaintext per participant (exchange 1). Each participant opens
what the server relays to it, and returns the coded cluster sums and coded scaled distances
(exchange 2). The server decodes sums and distances from any large-enough set of answers.

Nothing here imports flwr or torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from .errors import (
    MalformedMessageError,
    NotEnoughAnswersError,
    ValueBoundError,
    WrapAroundError,
)
from .lcc import blinding_shares, coded_scaled_distances, coded_sum, decode, share
from .params import SecureParams, check_no_wraparound, dequantize, quantize
from .serialize import pack_field_arrays, unpack_field_arrays

#: Statistics a site appends to its ``P_G`` update so they are summed securely per cluster
#: (never sent in the clear); each in ``[0, 1]``, scaled by the update bound.
UPDATE_STATS = ("train-accuracy", "train-loss/10", "clipped-update", "clipped-z", "one")


@dataclass(frozen=True)
class ProtocolConfig:
    """Parameters of the SecPC protocol, chosen by the server and sent to every site.

    Attributes
    ----------
    k : int
        LCC data slices. ``1`` is recommended: with ``k > 1`` the server also learns per-slice
        partial distances (see ``secpc/README.md``).
    t : int
        Colluding participants tolerated: any ``t`` shares of a secret reveal nothing.
    update_scale_bits : int
        Quantization scale of the ``P_G`` update (error per value at most ``2**-(bits+1)``).
    update_bound : float
        Update values are clipped to ``[-update_bound, update_bound]`` before quantizing.
    z_dim : int
        Dimension of the reduced personalized prompt ``z_i``.
    z_scale_bits : int
        Quantization scale of ``z_i``.
    z_bound : float
        ``z_i`` values are clipped to ``[-z_bound, z_bound]``.
    projection_seed : int
        Public seed of the projection ``R``; every site derives the same matrix.
    dp_epsilon : float
        Distributed differential privacy on the cluster sums: the ``ε`` of the whole run, or
        ``0`` for none. Each site adds Skellam noise to its quantized update before sharing
        (:mod:`secpc.noise`), calibrated so a cluster of ``dp_min_cluster_size`` sites meets
        ``(dp_epsilon, dp_delta)`` over ``dp_rounds`` releases. Covers the decoded sums (and the
        statistics riding on them), not the distances or the assignment.
    dp_delta : float
        The ``δ`` of that budget.
    dp_rounds : int
        Releases accounted for (the run's rounds: the worst case).
    dp_clip : float
        L2 clip of a site's ``P_G`` update before the statistics are appended.
    dp_min_cluster_size : int
        The size floor the noise is calibrated for.
    descriptor_prompt_weight : float
        Weight of the prompt block in the site descriptor ``z_i`` (:mod:`prompts.descriptor`;
        0: the frozen image statistics only).
    committee : int
        Committee size: the sites that receive every share and answer the coded queries
        (:mod:`secpc.committee`); ``0`` chooses ``min(n, 2 (2(k+t-1)+1) + 1)`` from the round's
        participants. The others only share, so their upload does not grow with the federation.
    """

    k: int = 1
    t: int = 2
    update_scale_bits: int = 24
    update_bound: float = 1.0
    z_dim: int = 32
    z_scale_bits: int = 12
    z_bound: float = 8.0
    projection_seed: int = 0
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    dp_rounds: int = 1
    dp_clip: float = 1.0
    dp_min_cluster_size: int = 3
    committee: int = 0
    descriptor_prompt_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.z_dim < 1:
            raise ValueError(f"z_dim: expected an integer >= 1, got {self.z_dim}")
        # SecureParams validates k, t, scales and bounds with field-named errors.
        self.update_params  # noqa: B018
        self.z_params  # noqa: B018

    def distributed_dp(self, dim: int):
        """The :class:`~secpc.noise.DistributedDPConfig` for a shared vector of ``dim`` values.

        ``None`` without distributed DP. The vector is the clipped update (L2 norm at most
        ``dp_clip``) plus the appended statistics (each at most ``update_bound``), so its L2
        clip covers both.
        """
        if not self.dp_epsilon:
            return None
        from .noise import DistributedDPConfig

        clip = math.sqrt(self.dp_clip**2 + len(UPDATE_STATS) * self.update_bound**2)
        return DistributedDPConfig(
            target_epsilon=self.dp_epsilon,
            target_delta=self.dp_delta,
            num_rounds=self.dp_rounds,
            min_cluster_size=self.dp_min_cluster_size,
            dim=dim,
            update_bound=self.update_bound,
            scale_bits=self.update_scale_bits,
            clip_l2=clip,
        )

    def committee_for(
        self, participants: Sequence[str], server_round: int, seed: bytes
    ) -> list[str]:
        """The round's committee, the same on every site and the server.

        ``seed`` is the signed key directory relayed with the round (all sites' committed key
        material), so the server cannot pick the committee once the keys are set.
        """
        from .committee import committee_size, select_committee

        size = committee_size(len(participants), self.z_params.quadratic_threshold, self.committee)
        return select_committee(participants, size, server_round, seed)

    def dp_mu(self, dim: int) -> float:
        """Skellam parameter each site adds per value (``0`` without distributed DP)."""
        return _dp_mu(self, dim)

    @property
    def update_params(self) -> SecureParams:
        """Field parameters of the linear (cluster-sum) computation."""
        return SecureParams(
            k=self.k, t=self.t, scale_bits=self.update_scale_bits, value_bound=self.update_bound
        )

    @property
    def z_params(self) -> SecureParams:
        """Field parameters of the degree-2 (distance) computation."""
        return SecureParams(
            k=self.k, t=self.t, scale_bits=self.z_scale_bits, value_bound=self.z_bound
        )

    def check(self, n_sites: int, update_dim: int = 1) -> None:
        """Refuse settings that cannot decode or could wrap around, naming what to change.

        Parameters
        ----------
        n_sites : int
            The most sites whose values one decoded result can combine (the participants of
            a round, or the whole federation when checked before round 1).
        update_dim : int
            Length of the shared update (the linear bound does not depend on it).

        Raises
        ------
        ValueError
            If ``n_sites`` is below the degree-2 threshold ``2(k+t-1)+1``.
        WrapAroundError
            If a sum or distance could exceed the field; the message names the run-config
            key and the largest value of it that fits.
        """
        need = self.z_params.quadratic_threshold
        if n_sites < need:
            raise ValueError(
                f"secure-k={self.k}, secure-t={self.t} need at least {need} sites per round for "
                f"the distance step, but only {n_sites} are sampled: lower secure-t or secure-k, "
                "or add sites"
            )
        for key, dim, degree, params in (
            ("update-scale-bits", update_dim, 1, self.update_params),
            ("z-scale-bits", self.z_dim, 2, self.z_params),
        ):
            try:
                check_no_wraparound(dim, n_sites, degree, params)
            except WrapAroundError as exc:
                fix = (
                    f"set {key}={exc.suggestion} or lower"
                    if exc.parameter == "scale_bits"
                    else "lower z-dim or the number of sites"
                )
                raise WrapAroundError(
                    f"run config '{key}' = {params.scale_bits} can wrap around the field with "
                    f"{n_sites} sites: {fix} ({exc})",
                    parameter=key,
                    suggestion=exc.suggestion,
                ) from exc

    def to_config(self) -> dict[str, int | float]:
        """Flat ``secure-*`` keys for a Flower ConfigRecord."""
        return {f"secure-{k.replace('_', '-')}": v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> ProtocolConfig:
        """Inverse of :meth:`to_config` (missing keys take the defaults)."""
        kwargs = {}
        for name, default in asdict(cls()).items():
            key = f"secure-{name.replace('_', '-')}"
            if key in config:
                kwargs[name] = type(default)(config[key])
        return cls(**kwargs)


@lru_cache(maxsize=16)
def _dp_mu(config: ProtocolConfig, dim: int) -> float:
    dp = config.distributed_dp(dim)
    if dp is None:
        return 0.0
    from .noise import per_site_mu

    return per_site_mu(dp)


@lru_cache(maxsize=8)
def projection_matrix(seed: int, dim_in: int, dim_out: int) -> np.ndarray:
    """The public random projection ``R`` (``dim_out x dim_in``), identical on every site.

    Gaussian entries with variance ``1/dim_out`` keep squared distances unbiased
    (Johnson-Lindenstrauss), so distances between reduced vectors track distances between
    the full personalized prompts.
    """
    rng = np.random.default_rng([seed, dim_in, dim_out])
    matrix = rng.standard_normal((dim_out, dim_in)) / np.sqrt(dim_out)
    matrix.setflags(write=False)
    return matrix


def reduce_prompt(personalized_minus_init: np.ndarray, config: ProtocolConfig) -> np.ndarray:
    """``z_i = R vec(P_i - P_init)``, the reduced personalized prompt.

    Subtracting the public initial prompt changes no distance but keeps the values small, so
    they quantize finely within ``z_bound``.
    """
    flat = np.asarray(personalized_minus_init, dtype=np.float64).ravel()
    return projection_matrix(config.projection_seed, flat.size, config.z_dim) @ flat


def clip(values: np.ndarray, bound: float) -> tuple[np.ndarray, int]:
    """Clip to ``[-bound, bound]``; also return how many values were clipped."""
    values = np.asarray(values, dtype=np.float64)
    clipped = int(np.count_nonzero(np.abs(values) > bound))
    return np.clip(values, -bound, bound), clipped


@lru_cache(maxsize=16)
def _round_params(config: ProtocolConfig) -> tuple[SecureParams, SecureParams]:
    """``(update_params, z_params)`` built once per config.

    Each property access builds a new :class:`SecureParams` (prime checks included), which cost
    about half of a site's exchange 1 before; a round calls these once per site and receiver.
    """
    return config.update_params, config.z_params


def share_round(
    update: np.ndarray,
    z: np.ndarray,
    n_receivers: int,
    n_dist_groups: int,
    config: ProtocolConfig,
) -> tuple[list[bytes], dict[str, int]]:
    """Exchange 1 on a site: one plaintext per receiver (committee member), to be sealed for it.

    Each plaintext holds three field arrays: ``"update"``, this site's LCC share of its quantized
    ``P_G`` update, ``(L_u, R)``; ``"z"``, its share of the quantized ``z_i``, ``(L_z, R)``; and
    ``"blind"``, its blinding share for **its own row** of the distance answer only,
    ``(n_dist_groups, R)``: a random degree-``2(K+T-1)`` polynomial per group vanishing at every
    ``beta_k`` (:func:`~secpc.lcc.blinding_shares`), evaluated at the receiver's point. No array
    depends on the number of participants, so a site's upload is ``n_receivers`` times a constant.

    Why blinding one's own row suffices: the server interpolates each entry ``(i, c)`` of the
    distance answer, a polynomial of degree ``2(K+T-1)``, from the committee's answers. If that
    entry's blinding polynomial is uniform to the server (site ``i`` honest, fewer than ``T``
    colluding committee members), the entry reveals only its ``K`` per-slice values. Site ``i``
    alone blinds row ``i``; a site ``i`` colluding with the server that omits its blinding gives
    the server row ``i``'s full product polynomial, whose other coefficients combine site ``i``'s
    own values and masks with the group sum ``S_c`` and the group's summed masks (sums over at
    least min-cluster-size sites), never another single site's value. This is an analysed
    limitation, not a proof (``secpc/README.md``, "Committee").

    Parameters
    ----------
    update : np.ndarray
        The site's ``P_G`` update (any shape; flattened).
    z : np.ndarray
        The site's reduced personalized prompt, shape ``(z_dim,)``.
    n_receivers : int
        Committee size ``M``: receiver ``j`` (committee position ``j``, evaluation point
        ``alpha_j``) gets plaintext ``j``. Passing the number of participants makes everyone a
        receiver (no committee). Must be at least ``2(K+T-1)+1``.
    n_dist_groups : int
        Groups the distances are measured against (fixes the blinding shape).
    config : ProtocolConfig
        Protocol parameters from the server.

    Returns
    -------
    tuple
        ``(plaintexts, stats)``: ``n_receivers`` byte strings and the counts of clipped values.
    """
    update, clipped_u = clip(np.ravel(update), config.update_bound)
    z, clipped_z = clip(z, config.z_bound)
    up, zp = _round_params(config)
    dp = config.distributed_dp(update.size)
    if dp is not None:
        from .noise import noisy_quantized_update

        secret = up.field.from_int(noisy_quantized_update(update, config.dp_mu(update.size), dp))
    else:
        secret = quantize(update, up)
    update_shares = share(secret, n_receivers, up)
    z_shares = share(quantize(z, zp), n_receivers, zp, degree=2)
    # Only this sender's own row: the blinding no longer grows with the number of participants.
    blind = blinding_shares(n_receivers, (n_dist_groups,), zp)
    plaintexts = [
        pack_field_arrays({"update": update_shares[j], "z": z_shares[j], "blind": blind[j]}, up)
        for j in range(n_receivers)
    ]
    return plaintexts, {"clipped-update": clipped_u, "clipped-z": clipped_z}


def participant_answer(
    plaintexts: Mapping[int, bytes],
    n_participants: int,
    sum_groups: Sequence[Sequence[int]],
    dist_groups: Sequence[Sequence[int]],
    config: ProtocolConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Exchange 2 on a receiver (committee member): coded cluster sums and coded distances.

    Row ``i`` of the distance answer is the coded ``‖|C_c| z_i − Σ_{m∈C_c} z_m‖²`` plus sender
    ``i``'s own blinding share for that row (see :func:`share_round` for why per-row blinding is
    enough, and its limit). Rows of participants that sent nothing are all zero.

    Parameters
    ----------
    plaintexts : mapping
        Sender participant index (``0..n_participants-1``, the rows of the distance answer) to
        the opened plaintext this receiver got from that sender. Every receiver must use the
        same set of senders, or the answers do not decode together.
    n_participants : int
        Participants of the round (rows of the distance answer), committee or not.
    sum_groups, dist_groups : sequences of index lists
        Members (participant indices, senders only) of each cluster to sum, and of each
        group whose centre the distances are measured against. ``dist_groups`` has exactly the
        number of groups announced in exchange 1 (it fixes the blinding shape); a group may be
        empty when its members dropped out, and its column is then zero.
    config : ProtocolConfig
        Protocol parameters.

    Returns
    -------
    tuple of np.ndarray
        ``(sums, distances)``: ``(n_sum_groups, L, R)`` and ``(n_participants, n_dist, R)``.

    Raises
    ------
    MalformedMessageError
        If a sender index is out of range, a plaintext does not unpack to the expected arrays,
        or a group names a participant whose shares are missing.
    """
    up, zp = _round_params(config)
    n_dist = len(dist_groups)
    unpacked = {}
    for sender, plain in plaintexts.items():
        if not 0 <= sender < n_participants:
            raise MalformedMessageError(f"sender index {sender} is not a participant index")
        arrays = unpack_field_arrays(plain, up)
        if set(arrays) != {"update", "z", "blind"}:
            raise MalformedMessageError(
                f"shares of participant {sender}: unexpected arrays {sorted(arrays)}"
            )
        if arrays["blind"].shape != (n_dist, zp.field.r):
            raise MalformedMessageError(
                f"shares of participant {sender}: blinding shape {arrays['blind'].shape}, "
                f"expected {(n_dist, zp.field.r)} (one row of the announced groups)"
            )
        unpacked[sender] = arrays
    for group in (*sum_groups, *dist_groups):
        missing = [m for m in group if m not in unpacked]
        if missing:
            raise MalformedMessageError(f"group member(s) {missing} sent no shares this round")
    if not unpacked:
        raise MalformedMessageError("no shares to compute on")
    first = next(iter(unpacked.values()))
    sums = np.zeros((len(sum_groups), *first["update"].shape), dtype=np.int64)
    for g, group in enumerate(sum_groups):
        if group:
            sums[g] = coded_sum(np.stack([unpacked[m]["update"] for m in group]), up)
    senders = sorted(unpacked)
    z_rows = np.zeros((n_participants, *first["z"].shape), dtype=np.int64)
    z_rows[senders] = np.stack([unpacked[s]["z"] for s in senders])
    # Each row carries its own sender's blinding; absent rows stay zero and are zeroed below.
    blinding = np.zeros((n_participants, n_dist, zp.field.r), dtype=np.int64)
    blinding[senders] = np.stack([unpacked[s]["blind"] for s in senders])
    distances = np.zeros((n_participants, n_dist, zp.field.r), dtype=np.int64)
    filled = [c for c, g in enumerate(dist_groups) if g]
    if filled:
        distances[:, filled] = coded_scaled_distances(
            z_rows, [list(dist_groups[c]) for c in filled], zp, blinding=blinding[:, filled]
        )
        # Rows of participants that shared nothing would hold ||S_C||^2: answer zero instead.
        absent = np.setdiff1d(np.arange(n_participants), senders)
        distances[absent] = 0
    return sums, distances


def decode_sums(
    answers: Mapping[int, np.ndarray], update_dim: int, config: ProtocolConfig
) -> np.ndarray:
    """Cluster sums of the updates, as floats, from ``{participant: sums answer}``.

    Returns
    -------
    np.ndarray
        ``(n_sum_groups, update_dim)``.
    """
    up = config.update_params
    stacked = {j: np.asarray(a) for j, a in answers.items()}
    n_groups = next(iter(stacked.values())).shape[0]
    return (
        np.stack(
            [
                dequantize(
                    decode({j: a[g] for j, a in stacked.items()}, up, 1, length=update_dim), up, 1
                )
                for g in range(n_groups)
            ]
        )
        if n_groups
        else np.zeros((0, update_dim))
    )


def decode_distances(answers: Mapping[int, np.ndarray], config: ProtocolConfig) -> np.ndarray:
    """Scaled squared distances ``(n_participants, n_dist_groups)`` as floats."""
    zp = config.z_params
    return dequantize(decode(dict(answers), zp, 2), zp, 2)


def plain_cluster_sums(
    updates: Mapping[int, np.ndarray], groups: Sequence[Sequence[int]]
) -> np.ndarray:
    """The plaintext twin's cluster sums (same layout as :func:`decode_sums`)."""
    dim = np.ravel(next(iter(updates.values()))).size
    return np.stack(
        [np.sum([np.ravel(updates[m]) for m in g], axis=0) if g else np.zeros(dim) for g in groups]
    ).reshape(len(groups), dim)


def plain_scaled_distances(
    z: Mapping[int, np.ndarray], n_participants: int, groups: Sequence[Sequence[int]]
) -> np.ndarray:
    """The plaintext twin's scaled distances ``‖|C| z_i − Σ_{m∈C} z_m‖²`` (NaN for absent sites)."""
    out = np.full((n_participants, len(groups)), np.nan)
    for c, group in enumerate(groups):
        if not group:
            out[:, c] = 0.0
            continue
        total = np.sum([z[m] for m in group], axis=0)
        for i, zi in z.items():
            out[i, c] = float(np.sum((len(group) * np.asarray(zi) - total) ** 2))
    return out


def load_site_identities(path: str) -> dict[str, bytes]:
    """Read ``site-identities.yaml`` (site id to Ed25519 public key PEM) into raw public keys.

    Raises
    ------
    ValueError
        If the file is missing, not a mapping, or a key does not parse (named in the message).
    """
    from pathlib import Path

    import yaml
    from cryptography.hazmat.primitives import serialization

    from .channel import load_identity_public_key

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"site identities: {file} does not exist")
    doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not doc:
        raise ValueError(
            f"site identities: {file}: expected a mapping of site id to public key PEM"
        )
    out = {}
    for site, pem in doc.items():
        try:
            key = load_identity_public_key(str(pem).encode())
        except Exception as exc:  # noqa: BLE001 - re-raised naming the entry
            raise ValueError(
                f"site identities: {file}: key of site {site!r} does not parse ({exc})"
            ) from exc
        out[str(site)] = key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    return out


def groups_from_labels(labels: Sequence[int], count: int | None = None) -> list[list[int]]:
    """Index lists per label ``0..count-1``; ``-1`` marks a participant outside every group."""
    labels = [int(x) for x in labels]
    if count is None:
        count = max(labels, default=-1) + 1
    return [[i for i, x in enumerate(labels) if x == c] for c in range(count)]


def append_stats(update: np.ndarray, stats: Sequence[float], config: ProtocolConfig) -> np.ndarray:
    """The update with per-site statistics appended, to be summed securely with it.

    Each statistic must lie in ``[0, 1]``; it is scaled by ``update_bound`` so that clipping
    leaves it intact. The server decodes only the cluster sum (so cluster means) of each.
    """
    values = np.clip(np.asarray(stats, dtype=np.float64), 0.0, 1.0) * config.update_bound
    return np.concatenate([np.ravel(update).astype(np.float64), values])


def split_stats(
    sums: np.ndarray, n_stats: int, config: ProtocolConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`append_stats` on decoded sums: ``(update sums, statistic sums)``."""
    return sums[:, :-n_stats], sums[:, -n_stats:] / config.update_bound


def check_decoded(
    sums: np.ndarray,
    sum_sizes: Sequence[int],
    distances: np.ndarray,
    dist_sizes: Sequence[int],
    config: ProtocolConfig,
) -> None:
    """Refuse decoded values that no honest set of clipped inputs can produce.

    A cluster sum of ``n`` clipped updates lies in ``[-n b, n b]`` per value (``b`` the
    update bound, plus the quantization rounding); a scaled distance to a group of ``n`` lies
    in ``[0, z_dim (2 n b_z)^2]``. Anything outside is a wrong answer or a dishonest sharer,
    never a prompt.

    Raises
    ------
    ValueBoundError
        Naming the first group whose decoded value is out of range.
    """
    for g, n in enumerate(sum_sizes):
        slack = 2.0**-config.update_scale_bits
        if n and config.dp_epsilon and sums.shape[1]:
            from .noise import noise_tail_bound

            # The noise may push a sum past n * bound; its tail bound is part of the range.
            dim = sums.shape[1]
            tail = noise_tail_bound(n * config.dp_mu(dim), dim)
            slack += tail / 2.0**config.update_scale_bits / n
        if (
            n
            and sums.shape[1]
            and float(np.max(np.abs(sums[g]))) > n * (config.update_bound + slack)
        ):
            raise ValueBoundError(
                f"decoded sum of group {g} ({n} sites) exceeds {n} x update-bound: a wrong answer"
                " or a sharer that broke the clipping bound"
            )
    z_slack = 2.0**-config.z_scale_bits
    for c, n in enumerate(dist_sizes):
        if not n:
            continue
        column = distances[:, c]
        top = config.z_dim * (2 * n * (config.z_bound + z_slack)) ** 2
        if np.any(column < -1e-9) or np.any(column > top):
            raise ValueBoundError(
                f"decoded distances to group {c} ({n} sites) leave [0, {top:.3g}]: a wrong answer"
            )


def decode_robust_answers(
    answers: Mapping[int, np.ndarray], length: int | None, degree: int, config: ProtocolConfig
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Decode every value of a round once, locating wrong answers, as floats.

    Parameters
    ----------
    answers : mapping
        Participant index to its answer: sums ``(n_groups, L, R)`` (``degree=1``) or distances
        ``(n_participants, n_groups, R)`` (``degree=2``).
    length : int or None
        The summed vector's length (degree 1).
    degree : int
        1 for cluster sums, 2 for scaled distances.
    config : ProtocolConfig
        The round's parameters.

    Returns
    -------
    tuple
        ``(values, wrong)``: ``(n_groups, length)`` sums or ``(n_participants, n_groups)``
        distances, and the participant indices whose answers error correction found wrong.

    Raises
    ------
    NotEnoughAnswersError
        Below the threshold.
    SecureProtocolError
        When the answers are inconsistent beyond what the redundancy can correct.
    """
    from .lcc import decode_robust

    params = config.update_params if degree == 1 else config.z_params
    if len(answers) < params.threshold(degree):
        raise NotEnoughAnswersError(params.threshold(degree), len(answers), degree)
    if degree == 2:
        shape = next(iter(answers.values())).shape
        value, wrong = decode_robust(dict(answers), params, 2, shape=shape)
        return dequantize(value, params, 2), tuple(wrong)
    shape = next(iter(answers.values())).shape
    n_groups = shape[0]
    if n_groups == 0:
        return np.zeros((0, length or 0)), ()
    values, bad = [], set()
    for g in range(n_groups):
        value, wrong = decode_robust(
            {j: a[g] for j, a in answers.items()}, params, 1, length=length
        )
        values.append(dequantize(value, params, 1))
        bad |= set(wrong)
    return np.stack(values), tuple(sorted(bad))
