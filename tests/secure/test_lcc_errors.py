"""Error-correcting decoding of the Lagrange code: ``decode_robust`` locates and names wrong answers.

Shares, answers and corruptions come from a numpy generator seeded by hypothesis, so every example
(including a failing one) replays exactly.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secpc import (
    DecodingError,
    MalformedMessageError,
    NotEnoughAnswersError,
    ParameterError,
    SecureParams,
    blinding_shares,
    coded_scaled_distances,
    coded_sum,
    decode,
    decode_robust,
    quantize,
    share,
)
from secpc.field import lagrange_matrix
from secpc.lcc import alpha_points

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = ("all", "one", "residue")


def byte_source(gen):
    return lambda n: gen.bytes(n)


def make_answers(params, degree, keys, gen, *, sites=3, dim=5):
    """Real answers of the participants ``keys`` (sums or blinded distances) and the honest decode."""
    f = params.field
    src = byte_source(gen)
    n_total = max(keys) + 1
    q_field = [quantize(row, params) for row in gen.uniform(-1, 1, (sites, dim))]
    shares = np.stack([share(v, n_total, params, src, degree=degree) for v in q_field])
    if degree == 1:
        answers = {j: coded_sum(shares[:, j], params) for j in keys}
        length = dim
    else:
        clusters = [list(range(0, sites, 2)), list(range(1, sites, 2))]
        blind = sum(blinding_shares(n_total, (sites, 2), params, src) for _ in range(2)) % f.p
        answers = {
            j: coded_scaled_distances(shares[:, j], clusters, params, blind[j]) for j in keys
        }
        length = None
    return answers, length, decode(answers, params, degree, length)


def corrupt(answer, mode, params, gen):
    """A wrong answer: random field elements everywhere, one wrong element, or one wrong residue."""
    f = params.field
    out = answer.copy()
    if mode == "all":
        out = f.random(answer.shape[:-1], byte_source(gen))
        if np.array_equal(out, answer):
            out[(0,) * out.ndim] = (out[(0,) * out.ndim] + 1) % f.p[0]
        return out
    r = int(gen.integers(f.r))
    p = int(f.p[r])
    flat = out.reshape(-1, f.r)
    if mode == "one":
        i = int(gen.integers(flat.shape[0]))
        flat[i, r] = (flat[i, r] + int(gen.integers(1, p))) % p
    else:
        flat[:, r] = (flat[:, r] + gen.integers(1, p, flat.shape[0])) % p
    return out


@st.composite
def setups(draw, min_slack=0):
    k = draw(st.integers(1, 3))
    t = draw(st.integers(1, 3))
    moduli = draw(st.sampled_from([(2147483647, 2147483629), (2147483647,)]))
    params = SecureParams(k=k, t=t, scale_bits=draw(st.integers(0, 8)), moduli=moduli)
    degree = draw(st.sampled_from([1, 2]))
    n = params.threshold(degree) + draw(st.integers(min_slack, 7))
    # Participant indices with gaps, as when some participants dropped out.
    keys = sorted(draw(st.lists(st.integers(0, n + 3), min_size=n, max_size=n, unique=True)))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sites = draw(st.integers(2, 4))
    dim = draw(st.integers(1, 7))
    answers, length, ref = make_answers(params, degree, keys, gen, sites=sites, dim=dim)
    return params, degree, keys, answers, length, ref, gen


@SETTINGS
@given(setups(), st.data())
def test_locates_and_names_every_correctable_set_of_wrong_answers(setup, data):
    params, degree, keys, answers, length, ref, gen = setup
    slack = len(keys) - params.threshold(degree)
    e = data.draw(st.integers(0, slack // 2))
    bad = data.draw(st.lists(st.sampled_from(keys), min_size=e, max_size=e, unique=True))
    received = dict(answers)
    for j in bad:
        received[j] = corrupt(answers[j], data.draw(st.sampled_from(MODES)), params, gen)
    got, wrong = decode_robust(received, params, degree, length, byte_source(gen))
    assert np.array_equal(got, ref)
    assert wrong == tuple(sorted(bad))


@SETTINGS
@given(setups(min_slack=1), st.data())
def test_more_wrong_answers_than_correctable_raise(setup, data):
    """With more wrong answers than can be corrected but fewer than n - D, never a silent result.

    For e <= n - D - 1 - max_errors wrong answers this is guaranteed whatever their values; with
    the default max_errors = (n - D - 1) // 2 and e above n - D - 1 - max_errors it holds for random
    wrong values except with probability about C(n, max_errors) / p (under 1e-5 here; the seeds
    make every example replay exactly).
    """
    params, degree, keys, answers, length, ref, gen = setup
    slack = len(keys) - params.threshold(degree)
    mode = data.draw(st.sampled_from(MODES))
    max_errors = data.draw(st.one_of(st.none(), st.integers(0, (slack - 1) // 2)))
    budget = slack // 2 if max_errors is None else max_errors
    e = data.draw(st.integers(budget + 1, slack))
    bad = data.draw(st.lists(st.sampled_from(keys), min_size=e, max_size=e, unique=True))
    received = dict(answers)
    for j in bad:
        received[j] = corrupt(answers[j], mode, params, gen)
    with pytest.raises(DecodingError, match="inconsistent") as info:
        decode_robust(received, params, degree, length, byte_source(gen), max_errors=max_errors)
    err = info.value
    assert (err.received, err.well_formed, err.degree) == (len(keys), len(keys), degree)
    assert err.poly_degree == params.threshold(degree) - 1
    assert err.wrong == ()
    assert f"{len(keys)} answers" in str(err) and f"degree-{degree}" in str(err)


@SETTINGS
@given(setups(), st.data())
def test_exactly_threshold_answers_cannot_be_checked(setup, data):
    params, degree, keys, answers, length, ref, gen = setup
    chosen = keys[: params.threshold(degree)]
    received = {j: answers[j] for j in chosen}
    if data.draw(st.booleans()):
        j = data.draw(st.sampled_from(chosen))
        received[j] = corrupt(answers[j], data.draw(st.sampled_from(MODES)), params, gen)
    got, wrong = decode_robust(received, params, degree, length)
    assert wrong == ()
    assert np.array_equal(got, decode(received, params, degree, length))


def malformed(answer, kind, salt):
    if kind == "shape":  # a shape no other answer has
        return np.zeros((answer.shape[0] + salt + 1, *answer.shape[1:]), dtype=np.int64)
    if kind == "float":
        return answer.astype(np.float64)
    if kind == "range":
        out = answer.copy()
        out[(0,) * out.ndim] = 2**31
        return out
    if kind == "negative":
        return answer - answer.max() - 1
    if kind == "residues":
        return answer[..., :1] if answer.shape[-1] == 2 else np.concatenate([answer, answer], -1)
    return "not an answer"


@SETTINGS
@given(setups(min_slack=1), st.data())
def test_malformed_answers_are_named_and_erased(setup, data):
    params, degree, keys, answers, length, ref, gen = setup
    slack = len(keys) - params.threshold(degree)
    m = data.draw(st.integers(1, slack))
    e = data.draw(st.integers(0, (slack - m) // 2))
    picked = data.draw(st.lists(st.sampled_from(keys), min_size=m + e, max_size=m + e, unique=True))
    received = dict(answers)
    kinds = st.sampled_from(["shape", "float", "range", "negative", "residues", "text"])
    for salt, j in enumerate(picked[:m]):
        received[j] = malformed(answers[j], data.draw(kinds), salt)
    for j in picked[m:]:
        received[j] = corrupt(answers[j], data.draw(st.sampled_from(MODES)), params, gen)
    shape = data.draw(st.sampled_from([None, ref.shape if degree == 2 else answers[keys[0]].shape]))
    got, wrong = decode_robust(received, params, degree, length, byte_source(gen), shape=shape)
    assert np.array_equal(got, ref)
    assert wrong == tuple(sorted(picked))


def test_wrong_shape_from_lowest_index_is_named():
    params = SecureParams(k=1, t=2)
    gen = np.random.default_rng(1)
    keys = list(range(8))
    answers, length, ref = make_answers(params, 2, keys, gen)
    answers[0] = np.zeros((7, 2, 2), dtype=np.int64)
    with pytest.raises(MalformedMessageError):
        decode(answers, params, 2)
    got, wrong = decode_robust(answers, params, 2)
    assert np.array_equal(got, ref) and wrong == (0,)


def test_shape_tie_needs_the_expected_shape():
    params = SecureParams(k=1, t=1)  # degree 1: D = 1, two answers decode
    gen = np.random.default_rng(2)
    answers, length, ref = make_answers(params, 1, [0, 1, 2, 3], gen)
    answers[0] = answers[1] = np.zeros((9, 2), dtype=np.int64)
    with pytest.raises(DecodingError, match="shape"):
        decode_robust(answers, params, 1, length)
    got, wrong = decode_robust(answers, params, 1, length, shape=answers[2].shape)
    assert np.array_equal(got, ref) and wrong == (0, 1)


def test_too_few_answers_or_well_formed_answers():
    params = SecureParams(k=2, t=1)  # degree 2: D = 4, five answers decode
    gen = np.random.default_rng(3)
    answers, _, ref = make_answers(params, 2, list(range(6)), gen)
    with pytest.raises(NotEnoughAnswersError, match="5 answers needed, 4 received"):
        decode_robust({j: answers[j] for j in range(4)}, params, 2)
    answers[1] = answers[1].astype(np.float32)
    answers[4] = answers[4] + params.field.p
    with pytest.raises(DecodingError, match="5 well-formed answers needed, 6 received") as info:
        decode_robust(answers, params, 2)
    assert info.value.wrong == (1, 4)


def test_refuses_bad_arguments():
    params = SecureParams(k=1, t=1)
    gen = np.random.default_rng(4)
    answers, length, _ = make_answers(params, 1, [0, 1, 2], gen)
    with pytest.raises(MalformedMessageError, match="participant index"):
        decode_robust({**answers, -1: answers[0]}, params, 1)
    with pytest.raises(ParameterError):
        decode_robust(answers, params, 3)
    with pytest.raises(ParameterError):
        decode_robust(answers, params, 1, length=99)
    with pytest.raises(ParameterError):
        decode_robust(answers, params, 1, max_errors=-1)
    with pytest.raises(ParameterError):
        decode_robust(answers, params, 1, shape=(5, 3))


def test_colluding_answers_beyond_the_bound_need_max_errors_to_be_caught():
    """Two colluders out of n = D + 3 can shift the result and blame an honest participant.

    That is information-theoretically unavoidable while correcting one error; max_errors=0 turns
    correction off and then any inconsistency among up to n - D - 1 = 2 answers is caught.
    """
    params = SecureParams(k=1, t=2)  # degree 2: D = 4
    f = params.field
    gen = np.random.default_rng(5)
    keys = list(range(7))
    answers, _, ref = make_answers(params, 2, keys, gen)
    honest, colluders, victim = keys[:5], keys[5:], 2
    # g' agrees with the honest polynomial at the other 4 honest points, not at the victim's.
    support = {j: answers[j] for j in honest}
    support[victim] = (answers[victim] + 1) % f.p
    lag = np.stack(
        [lagrange_matrix(alpha_points(honest), alpha_points(colluders), p) for p in f.moduli], -1
    )
    forged = f.matmul(lag, np.stack([support[j] for j in honest]))
    received = {**answers, colluders[0]: forged[0], colluders[1]: forged[1]}
    got, wrong = decode_robust(received, params, 2)
    assert wrong == (victim,) and not np.array_equal(got, ref)
    with pytest.raises(DecodingError, match="inconsistent"):
        decode_robust(received, params, 2, max_errors=0)


def test_thousand_sites_distance_answers():
    """1,000 sites x 8 clusters, 25 participants (D = 12): six wrong answers located."""
    params = SecureParams(k=1, t=6, scale_bits=8)
    f = params.field
    gen = np.random.default_rng(6)
    src = byte_source(gen)
    n, sites, clusters_n, dim = 25, 1000, 8, 6
    q_field = quantize(gen.uniform(-1, 1, (sites, dim)), params)
    q = f.to_signed(q_field)
    z_shares = np.stack([share(v, n, params, src, degree=2) for v in q_field])  # (site, n, L, R)
    clusters = [list(range(c, sites, clusters_n)) for c in range(clusters_n)]
    # Blinding from a few sites only: decoding is the same whatever their number.
    blind = sum(blinding_shares(n, (sites, clusters_n), params, src) for _ in range(3)) % f.p
    answers = {
        j: coded_scaled_distances(z_shares[:, j], clusters, params, blind[j]) for j in range(n)
    }
    plain = np.stack([((len(c) * q - q[c].sum(0)) ** 2).sum(1) for c in clusters], axis=1)
    bad = [1, 4, 9, 16, 20, 24]
    for j, mode in zip(bad, MODES * 2, strict=True):
        answers[j] = corrupt(answers[j], mode, params, gen)
    got, wrong = decode_robust(answers, params, 2, rng=src)
    assert got.shape == (sites, clusters_n, f.r)
    assert np.array_equal(f.to_signed(got), plain)
    assert wrong == tuple(bad)
