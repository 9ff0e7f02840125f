"""Lagrange coded computing: share, compute on shares, decode.

A secret vector ``x`` (length ``d``, zero-padded to ``K * L``) is cut into ``K`` slices
``X_0..X_{K-1}`` of length ``L``. With ``T`` uniform masks ``Z_0..Z_{T-1}`` the polynomial
``u(z)`` of degree ``K + T - 1`` satisfies ``u(beta_k) = X_k`` and ``u(beta_{K+t}) = Z_t``;
participant ``j`` receives ``u(alpha_j)``. Points: ``beta_b = b + 1`` and
``alpha_j = -(j + 1) mod p``, so they never meet.

Any ``T`` shares are uniformly distributed whatever the secret: together with the ``K`` slices they
are ``K + T`` distinct points of a degree-``(K+T-1)`` polynomial, so each share tuple matches
exactly one mask choice.

A participant evaluates a polynomial ``f`` on the shares it holds; the results are evaluations
of ``f(u(z))``, of degree ``deg f * (K + T - 1)``, and the server interpolates them at
``beta_k`` to get ``f(X_k)`` per slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import MalformedMessageError, NotEnoughAnswersError, ParameterError
from .field import ByteSource, lagrange_matrix
from .params import SecureParams


def alpha_points(indices: Sequence[int]) -> tuple[int, ...]:
    """Evaluation points of the given participant indices as signed ints (``-(j + 1)``)."""
    return tuple(-(int(j) + 1) for j in indices)


def beta_points(n: int) -> tuple[int, ...]:
    """Interpolation points ``beta_0..beta_{n-1}`` (``b + 1``)."""
    return tuple(b + 1 for b in range(n))


def _stacked_lagrange(
    params: SecureParams, src: tuple[int, ...], dst: tuple[int, ...]
) -> np.ndarray:
    """Lagrange matrix per residue, shape ``(len(dst), len(src), R)``."""
    return np.stack([lagrange_matrix(src, dst, p) for p in params.moduli], axis=-1)


def _check_participants(n_participants: int, params: SecureParams, degree: int) -> None:
    if not isinstance(n_participants, int | np.integer) or n_participants < 1:
        raise ParameterError(f"n_participants must be a positive integer, got {n_participants!r}")
    if n_participants > params.max_participants:
        raise ParameterError(
            f"n_participants={n_participants} exceeds what the moduli support "
            f"({params.max_participants})"
        )
    needed = params.threshold(degree)
    if n_participants < needed:
        raise ParameterError(
            f"n_participants={n_participants} can never decode a degree-{degree} result: "
            f"{needed} needed with k={params.k}, t={params.t}; lower k or t"
        )


def slice_length(length: int, params: SecureParams) -> int:
    """Share length ``L = ceil(length / K)`` for a secret of ``length`` elements."""
    return -(-length // params.k)


def share(
    secret: np.ndarray,
    n_participants: int,
    params: SecureParams,
    rng: ByteSource | None = None,
    *,
    degree: int = 1,
) -> np.ndarray:
    """LCC shares of a field vector ``secret`` of shape ``(d, R)``.

    Returns ``(n_participants, L, R)`` with ``L = ceil(d / K)``: row ``j`` goes to the participant
    with evaluation-point index ``j``. ``d`` is not stored in the shares; pass it to
    :func:`decode` as ``length``. ``degree`` is the highest degree to be computed on the shares
    (2 for distances) and only checks that ``n_participants`` can ever decode it. Masks are drawn
    from ``os.urandom`` (``rng``: a ``n -> bytes`` callable, for tests only).
    """
    f = params.field
    secret = np.asarray(secret)
    if secret.ndim != 2 or secret.shape[1] != f.r or secret.shape[0] < 1:
        raise MalformedMessageError(
            f"secret must be a field vector of shape (d, {f.r}), got {secret.shape}"
        )
    _check_participants(n_participants, params, degree)
    k, t = params.k, params.t
    d = secret.shape[0]
    length = slice_length(d, params)
    slices = np.zeros((k * length, f.r), dtype=np.int64)
    slices[:d] = secret
    coeffs = np.concatenate([slices.reshape(k, length, f.r), f.random((t, length), rng)], axis=0)
    enc = _stacked_lagrange(params, beta_points(k + t), alpha_points(range(n_participants)))
    return f.matmul(enc, coeffs)


def blinding_shares(
    n_participants: int,
    shape: tuple[int, ...],
    params: SecureParams,
    rng: ByteSource | None = None,
) -> np.ndarray:
    """Shares of random degree-``2(K+T-1)`` polynomials that vanish at every ``beta_k``.

    Returns ``(n_participants, *shape, R)``; row ``j`` goes to participant ``j``. Each participant
    adds the sum of the blinding shares it received (from the same set of senders as every other
    participant) to its degree-2 answers: decoding is unchanged (the polynomials vanish at the
    data points) but the answers no longer reveal anything beyond the ``K`` per-slice results.
    Without blinding the server learns the whole product polynomial, whose other coefficients
    mix data and masks (see README).
    """
    f = params.field
    _check_participants(n_participants, params, 2)
    k = params.k
    n_points = params.quadratic_threshold
    coeffs = f.random((n_points - k, *shape), rng)
    enc = _stacked_lagrange(params, beta_points(n_points), alpha_points(range(n_participants)))
    return f.matmul(np.ascontiguousarray(enc[:, k:]), coeffs)


def _as_held_shares(shares: Sequence[np.ndarray] | np.ndarray, params: SecureParams) -> np.ndarray:
    held = np.asarray(shares) if not isinstance(shares, np.ndarray) else shares
    if held.ndim < 2 or held.shape[-1] != params.field.r or held.shape[0] < 1:
        raise MalformedMessageError(
            f"expected a stack of shares (n, ..., {params.field.r}), got shape {held.shape}"
        )
    if held.dtype != np.int64:
        held = held.astype(np.int64)
    return held


def coded_sum(shares: Sequence[np.ndarray] | np.ndarray, params: SecureParams) -> np.ndarray:
    """Sum of one participant's shares of several secrets (linear; decode with degree 1)."""
    held = _as_held_shares(shares, params)
    return held.sum(axis=0) % params.field.p


def coded_weighted_sum(
    shares: Sequence[np.ndarray] | np.ndarray, weights: Sequence[int], params: SecureParams
) -> np.ndarray:
    """Integer-weighted sum of one participant's shares (weights may be negative).

    For :func:`check_no_wraparound` pass ``n_parties = sum(abs(weights))``.
    """
    held = _as_held_shares(shares, params)
    w = np.asarray(weights)
    if w.shape != (held.shape[0],) or not np.issubdtype(w.dtype, np.integer):
        raise ParameterError(f"weights must be {held.shape[0]} integers, got {weights!r}")
    fw = params.field.from_int(w.astype(np.int64))  # (n, R)
    fw = fw.reshape(fw.shape[0], *([1] * (held.ndim - 2)), fw.shape[1])
    return (held * fw % params.field.p).sum(axis=0) % params.field.p


def _membership(clusters: Sequence[Sequence[int]], n_sites: int) -> np.ndarray:
    member = np.zeros((len(clusters), n_sites), dtype=np.int64)
    for c, members in enumerate(clusters):
        idx = np.asarray(list(members), dtype=np.int64)
        if idx.size == 0:
            raise ParameterError(f"cluster {c} is empty")
        if np.any((idx < 0) | (idx >= n_sites)) or len(set(idx.tolist())) != idx.size:
            raise ParameterError(f"cluster {c} has invalid or repeated member indices")
        member[c, idx] = 1
    return member


def coded_scaled_distances(
    z_shares: np.ndarray,
    clusters: Sequence[Sequence[int]],
    params: SecureParams,
    blinding: np.ndarray | None = None,
) -> np.ndarray:
    """Coded ``|| |C_c| z_i - sum_{m in C_c} z_m ||^2`` for every site ``i`` and cluster ``c``.

    ``z_shares``: ``(n_sites, L, R)``, this participant's share of every site's reduced vector
    (row ``i`` = site index ``i`` in ``clusters``). Returns ``(n_sites, n_clusters, R)``, a
    degree-2 answer: :func:`decode` with ``degree=2`` sums the ``K`` slice results into the full
    scaled squared distance (scale ``2**(2*scale_bits)``), with no field division. ``blinding``,
    the sum of the received :func:`blinding_shares` of shape ``(n_sites, n_clusters, R)``,
    is added when given.
    """
    f = params.field
    z = _as_held_shares(z_shares, params)
    if z.ndim != 3:
        raise MalformedMessageError(f"z_shares must be (n_sites, L, {f.r}), got {z.shape}")
    n_sites = z.shape[0]
    member = _membership(clusters, n_sites)
    sizes = member.sum(axis=1)
    # Cluster sums: entries of ``member`` are 0/1, so at most n_sites * 2^31 before reduction.
    sums = np.einsum("cn,nlr->clr", member, z) % f.p  # (C, L, R)
    diff = (z[:, None] * sizes[None, :, None, None] - sums[None]) % f.p  # (n, C, L, R)
    out = (diff * diff % f.p).sum(axis=2) % f.p
    if blinding is not None:
        blinding = np.asarray(blinding, dtype=np.int64)
        if blinding.shape != out.shape:
            raise MalformedMessageError(
                f"blinding must have shape {out.shape}, got {blinding.shape}"
            )
        out = (out + blinding) % f.p
    return out


def _stack_answers(
    answers: Mapping[int, np.ndarray], params: SecureParams, degree: int
) -> tuple[tuple[int, ...], np.ndarray]:
    needed = params.threshold(degree)
    if len(answers) < needed:
        raise NotEnoughAnswersError(needed, len(answers), degree)
    keys = sorted(answers)
    for key in keys:
        if (
            isinstance(key, bool)
            or not isinstance(key, int | np.integer)
            or not (0 <= key < params.max_participants)
        ):
            raise MalformedMessageError(f"answer key {key!r} is not a participant index")
    chosen = tuple(int(key) for key in keys[:needed])
    arrays = [np.asarray(answers[key]) for key in chosen]
    shape = arrays[0].shape
    if not shape or shape[-1] != params.field.r:
        raise MalformedMessageError(f"answers must end in a residue axis of {params.field.r}")
    for key, arr in zip(chosen, arrays, strict=True):
        if arr.shape != shape:
            raise MalformedMessageError(
                f"answer of participant {key} has shape {arr.shape}, expected {shape}"
            )
        if arr.dtype.kind not in "iu" or np.any(arr < 0) or np.any(arr >= params.field.p):
            raise MalformedMessageError(f"answer of participant {key} is not a field array")
    return chosen, np.stack(arrays).astype(np.int64)


def decode_slices(
    answers: Mapping[int, np.ndarray], params: SecureParams, degree: int
) -> np.ndarray:
    """Per-slice results ``f(X_k)``, shape ``(K, *answer_shape)``.

    Uses the ``threshold`` answers with the lowest participant indices; fewer raise
    :class:`NotEnoughAnswersError` stating how many were needed and how many came.
    """
    chosen, stacked = _stack_answers(answers, params, degree)
    dec = _stacked_lagrange(params, alpha_points(chosen), beta_points(params.k))
    return params.field.matmul(dec, stacked)


def decode(
    answers: Mapping[int, np.ndarray],
    params: SecureParams,
    degree: int,
    length: int | None = None,
) -> np.ndarray:
    """Decode a result from ``{participant index: answer}`` with at least the threshold answers.

    Degree 1 (sums of shares ``(L, R)``): the ``K`` slices are concatenated and cut to
    ``length`` (the secret's ``d``); result ``(length, R)``.
    Degree 2 (coded distances): the ``K`` slice results are summed; result ``answer_shape``.
    """
    per_slice = decode_slices(answers, params, degree)
    f = params.field
    if degree == 2:
        return per_slice.sum(axis=0) % f.p
    joined = per_slice.reshape(-1, *per_slice.shape[2:])
    if length is not None:
        if not 0 < length <= joined.shape[0]:
            raise ParameterError(f"length={length} does not fit {joined.shape[0]} decoded values")
        joined = joined[:length]
    return joined
