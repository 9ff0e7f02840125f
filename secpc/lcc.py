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

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import DecodingError, MalformedMessageError, NotEnoughAnswersError, ParameterError
from .field import ByteSource, lagrange_matrix, matmul_mod
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


def _sorted_keys(answers: Mapping[int, np.ndarray], params: SecureParams) -> list[int]:
    keys = sorted(answers)
    for key in keys:
        if (
            isinstance(key, bool)
            or not isinstance(key, int | np.integer)
            or not (0 <= key < params.max_participants)
        ):
            raise MalformedMessageError(f"answer key {key!r} is not a participant index")
    return [int(key) for key in keys]


def _stack_answers(
    answers: Mapping[int, np.ndarray], params: SecureParams, degree: int
) -> tuple[tuple[int, ...], np.ndarray]:
    needed = params.threshold(degree)
    if len(answers) < needed:
        raise NotEnoughAnswersError(needed, len(answers), degree)
    keys = _sorted_keys(answers, params)
    chosen = tuple(keys[:needed])
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
    return _finish(per_slice, params, degree, length)


def _finish(
    per_slice: np.ndarray, params: SecureParams, degree: int, length: int | None
) -> np.ndarray:
    """Per-slice results ``(K, ...)`` -> what :func:`decode` returns."""
    f = params.field
    if degree == 2:
        return per_slice.sum(axis=0) % f.p
    joined = per_slice.reshape(-1, *per_slice.shape[2:])
    if length is not None:
        if not 0 < length <= joined.shape[0]:
            raise ParameterError(f"length={length} does not fit {joined.shape[0]} decoded values")
        joined = joined[:length]
    return joined


# -- error-correcting decoding --------------------------------------------------------------------
#
# The answers of n participants are a codeword of a generalized Reed-Solomon code: the evaluations
# of one polynomial of degree D = degree * (K + T - 1) (per coordinate and residue) at the distinct
# points alpha_j. Its minimum distance is n - D, so up to floor((n - D - 1) / 2) wrong answers can
# be located and up to n - D - 1 detected. `galois` (checked: 0.4.11) is not used: its ReedSolomon
# class only evaluates at consecutive powers of a primitive n-th root of unity (n must divide
# q - 1), not at the arbitrary points alpha_j = -(j + 1) of this protocol.

#: Random linear combinations of the coordinates per residue used to locate wrong answers; an
#: answer wrong in residue r escapes all of them with probability p_r^-LOCATE_COMBINATIONS.
LOCATE_COMBINATIONS = 2

#: Bound on the elements of one temporary block in the chunked verification.
_BLOCK_ELEMENTS = 1 << 22


def _as_field_answer(value: object, params: SecureParams) -> np.ndarray | None:
    """``value`` as an int64 field array ``(..., R)``, or ``None`` if it is not one."""
    f = params.field
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if arr.ndim == 0 or arr.shape[-1] != f.r or arr.dtype.kind not in "iu":
        return None
    if arr.size:
        if arr.dtype.kind == "u":
            if np.any(arr.astype(np.uint64) >= f.p.astype(np.uint64)):
                return None
        elif np.any(arr < 0) or np.any(arr.astype(np.int64) >= f.p):
            return None
    return arr.astype(np.int64, copy=False)


def _matmul_long(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """``a @ b mod p`` for 2-D ``a (m, n)``, ``b (n, c)`` with any ``n`` (chunks of 65535 terms)."""
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.int64)
    step = (1 << 16) - 1
    for s in range(0, a.shape[1], step):
        out = (out + matmul_mod(a[:, s : s + step], b[s : s + step], p)) % p
    return out


def _solve_mod(aug: np.ndarray, p: int) -> np.ndarray | None:
    """One solution of ``aug[:, :-1] @ z = aug[:, -1] (mod p)`` (free variables 0), or ``None``.

    Gauss-Jordan elimination on int64 with a reduction after every step: every entry stays below
    ``p < 2^31`` so products stay below 2^62. Exact; meant for small systems (tens of rows).
    """
    a = aug % p
    rows, cols = a.shape
    pivots: list[int] = []
    r = 0
    for c in range(cols - 1):
        if r == rows:
            break
        nonzero = np.flatnonzero(a[r:, c])
        if nonzero.size == 0:
            continue
        piv = r + int(nonzero[0])
        if piv != r:
            a[[r, piv]] = a[[piv, r]]
        a[r] = a[r] * pow(int(a[r, c]), p - 2, p) % p
        factor = a[:, c].copy()
        factor[r] = 0
        a = (a - factor[:, None] * a[r][None, :]) % p
        pivots.append(c)
        r += 1
    if np.any(a[r:, -1]):
        return None
    sol = np.zeros(cols - 1, dtype=np.int64)
    for row, c in enumerate(pivots):
        sol[c] = a[row, -1]
    return sol


def _berlekamp_welch(
    xs: np.ndarray, ys: np.ndarray, poly_degree: int, max_errors: int, p: int
) -> list[int] | None:
    """Positions where ``ys`` is off the degree-``poly_degree`` polynomial closest to it.

    ``None`` when no such polynomial lies within ``max_errors`` wrong positions.

    Finds a monic error locator ``E`` (degree ``max_errors``) and ``Q`` (degree
    ``poly_degree + max_errors``) with ``Q(x_i) = y_i E(x_i)``; with at most ``max_errors`` errors
    and ``n >= poly_degree + 1 + 2 max_errors`` every solution has ``Q = P E``.
    """
    e = max_errors
    n_q = poly_degree + e + 1
    powers = np.ones((xs.size, n_q), dtype=np.int64)
    for k in range(1, n_q):
        powers[:, k] = powers[:, k - 1] * xs % p
    aug = np.empty((xs.size, n_q + e + 1), dtype=np.int64)
    aug[:, :n_q] = powers
    aug[:, n_q : n_q + e] = (-ys[:, None] * powers[:, :e]) % p
    aug[:, -1] = ys * powers[:, e] % p
    sol = _solve_mod(aug, p)
    if sol is None:
        return None
    q = [int(v) for v in sol[:n_q]]
    locator = [int(v) for v in sol[n_q:]] + [1]
    quotient = [0] * (n_q - e)
    for i in range(n_q - 1, e - 1, -1):  # long division by the monic locator
        coef = q[i] % p
        quotient[i - e] = coef
        if coef:
            for j in range(e + 1):
                q[i - e + j] = (q[i - e + j] - coef * locator[j]) % p
    if any(v % p for v in q[:e]):
        return None
    values = np.zeros_like(xs)
    for coef in reversed(quotient):
        values = (values * xs + coef) % p
    bad = np.flatnonzero(values != ys % p).tolist()
    return bad if len(bad) <= e else None


def _locate_errors(
    keys: tuple[int, ...],
    stacked: np.ndarray,
    params: SecureParams,
    poly_degree: int,
    max_errors: int,
    rng: ByteSource | None,
) -> set[int] | None:
    """Row positions of ``stacked`` located as wrong on random combinations of coordinates."""
    f = params.field
    flat = stacked.reshape(stacked.shape[0], -1, f.r)
    coeffs = f.random((flat.shape[1], LOCATE_COMBINATIONS), rng)
    found: set[int] = set()
    for r, p in enumerate(f.moduli):
        xs = np.array(alpha_points(keys), dtype=np.int64) % p
        compressed = _matmul_long(flat[:, :, r], coeffs[:, :, r], p)  # (n, combinations)
        for c in range(LOCATE_COMBINATIONS):
            bad = _berlekamp_welch(xs, compressed[:, c], poly_degree, max_errors, p)
            if bad is None:
                return None
            found.update(bad)
    return found if len(found) <= max_errors else None


def _inconsistent_rows(
    keys: tuple[int, ...],
    stacked: np.ndarray,
    chosen: list[int],
    others: list[int],
    params: SecureParams,
) -> list[int]:
    """Rows ``others`` whose FULL answers differ anywhere from the polynomial through ``chosen``."""
    f = params.field
    if not others:
        return []
    lag = _stacked_lagrange(
        params, alpha_points([keys[i] for i in chosen]), alpha_points([keys[i] for i in others])
    )
    src = stacked[chosen].reshape(len(chosen), -1, f.r)
    dst = stacked[others].reshape(len(others), -1, f.r)
    bad = np.zeros(len(others), dtype=bool)
    step = max(1, _BLOCK_ELEMENTS // max(len(others), len(chosen)))
    for r, p in enumerate(f.moduli):
        for s in range(0, src.shape[1], step):
            predicted = matmul_mod(lag[..., r], src[:, s : s + step, r], p)
            bad |= np.any(predicted != dst[:, s : s + step, r], axis=1)
    return [i for i, b in zip(others, bad.tolist(), strict=True) if b]


def decode_robust(
    answers: Mapping[int, np.ndarray],
    params: SecureParams,
    degree: int,
    length: int | None = None,
    rng: ByteSource | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    max_errors: int | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """:func:`decode` that also locates and names participants whose answers are wrong.

    Returns ``(result, wrong)``: ``result`` exactly as :func:`decode` returns it (computed from
    answers verified consistent), ``wrong`` the sorted participant indices whose answers were
    malformed or are not on the decoded polynomial (on at least one coordinate or residue).

    With ``D = threshold(degree) - 1`` (the answer polynomial's degree), ``m`` malformed answers
    and ``n`` well-formed ones:

    - a malformed answer (not an integer array, values outside ``[0, p)``, last axis not ``R``,
      or a shape other than ``shape``, by default the most common shape) is named in ``wrong`` and
      left out (an erasure);
    - up to ``e = min(max_errors, (n - D - 1) // 2)`` wrong well-formed answers, whatever their
      values, are located and named, and the result is exact (default ``max_errors``: the most,
      ``(n - D - 1) // 2``). So correcting ``e`` errors needs ``n >= D + 1 + 2e``;
    - more than ``e`` but at most ``n - D - 1 - e`` wrong answers always raise
      :class:`DecodingError`: with ``max_errors=0`` any inconsistency among up to ``n - D - 1``
      wrong answers is detected (detection needs ``n >= D + 2``). Beyond that, answers crafted by
      more than ``e`` colluding participants can look like another polynomial with at most ``e``
      errors: the result is then wrong and honest participants are named (no decoder can tell
      them apart). Random wrong values make that happen with probability below about
      ``C(n, e) / p``;
    - with exactly ``n = D + 1`` well-formed answers nothing can be checked: they are decoded as
      they are and only malformed ones are named.

    Raises :class:`NotEnoughAnswersError` if fewer than ``D + 1`` answers came at all,
    :class:`DecodingError` (``.wrong``: the malformed ones) if fewer than ``D + 1`` are well-formed,
    if no single most common shape exists, or if the answers are inconsistent beyond ``e``
    errors; :class:`MalformedMessageError` for keys that are not participant indices (the
    caller's bug, not a participant's) and :class:`ParameterError` for bad ``degree``,
    ``length``, ``shape`` or ``max_errors``.

    Locating runs Berlekamp-Welch on ``LOCATE_COMBINATIONS`` random linear combinations of the
    coordinates per residue (coefficients from ``os.urandom``; ``rng``, a ``n -> bytes`` callable,
    for tests), so its cost does not grow with the answer size; the result is then checked on the
    full arrays against every well-formed answer (about ``n - D - 1`` times the work of
    :func:`decode`). The randomness only matters for locating: a wrong answer that all
    combinations miss (probability about ``p^-2`` per residue) can make a correctable call raise
    :class:`DecodingError`, never return a wrong result or name an honest participant.
    """
    needed = params.threshold(degree)
    poly_degree = needed - 1
    if max_errors is not None and (
        isinstance(max_errors, bool)
        or not isinstance(max_errors, int | np.integer)
        or max_errors < 0
    ):
        raise ParameterError(f"max_errors must be a non-negative integer, got {max_errors!r}")
    if len(answers) < needed:
        raise NotEnoughAnswersError(needed, len(answers), degree)
    f = params.field
    keys = _sorted_keys(answers, params)
    arrays = {}
    for key in keys:
        arr = _as_field_answer(answers[key], params)
        if arr is not None:
            arrays[key] = arr

    def fail(message: str, well_formed: int, wrong: tuple[int, ...]) -> DecodingError:
        return DecodingError(
            message,
            received=len(keys),
            well_formed=well_formed,
            degree=degree,
            poly_degree=poly_degree,
            wrong=wrong,
        )

    if shape is not None:
        expected = tuple(int(s) for s in shape)
        if not expected or expected[-1] != f.r:
            raise ParameterError(f"shape must end in a residue axis of {f.r}, got {shape!r}")
    else:
        ranked = Counter(arr.shape for arr in arrays.values()).most_common(2)
        if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
            raise fail(
                f"{len(keys)} answers to a degree-{degree} result disagree on the answer shape "
                f"({ranked[0][1]} have {ranked[0][0]}, {ranked[1][1]} have {ranked[1][0]}): "
                "pass shape=",
                0,
                (),
            )
        expected = ranked[0][0] if ranked else None
    good = tuple(key for key in keys if key in arrays and arrays[key].shape == expected)
    malformed = tuple(key for key in keys if key not in arrays or arrays[key].shape != expected)
    n = len(good)
    if n < needed:
        raise fail(
            f"cannot decode a degree-{degree} result: {needed} well-formed answers needed, "
            f"{len(keys)} received of which {len(malformed)} malformed "
            f"(participants {list(malformed)})",
            n,
            malformed,
        )
    stacked = np.stack([arrays[key] for key in good])
    slack = n - needed
    budget = slack // 2 if max_errors is None else min(int(max_errors), slack // 2)
    located: set[int] = set()
    if budget:
        found = _locate_errors(good, stacked, params, poly_degree, budget, rng)
        if found is None:
            raise fail(
                _inconsistent_message(len(keys), n, degree, poly_degree, budget), n, malformed
            )
        located = found
    chosen = [i for i in range(n) if i not in located][:needed]
    others = [i for i in range(n) if i not in set(chosen)]
    wrong_rows = _inconsistent_rows(good, stacked, chosen, others, params)
    if len(wrong_rows) > budget:
        raise fail(_inconsistent_message(len(keys), n, degree, poly_degree, budget), n, malformed)
    dec = _stacked_lagrange(params, alpha_points([good[i] for i in chosen]), beta_points(params.k))
    result = _finish(f.matmul(dec, stacked[chosen]), params, degree, length)
    return result, tuple(sorted(malformed + tuple(good[i] for i in wrong_rows)))


def _inconsistent_message(
    received: int, well_formed: int, degree: int, poly_degree: int, budget: int
) -> str:
    return (
        f"{received} answers ({well_formed} well-formed) to a degree-{degree} result "
        f"(answer polynomial of degree {poly_degree}) are inconsistent: more than {budget} of them "
        f"are wrong, so the wrong ones cannot be located (locating e wrong answers needs "
        f"at least {poly_degree + 1} + 2e well-formed answers)"
    )
