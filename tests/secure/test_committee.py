"""The round's committee: public, unbiasable selection, and exact decoding from its answers."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secpc import decode, decode_robust, quantize, unpack_field_arrays
from secpc.committee import committee_seed, committee_size, select_committee
from secpc.protocol import ProtocolConfig, clip, participant_answer, share_round

SITES = [f"site-{i:02d}" for i in range(12)]
SEED = b"signed key directory bytes"

site_lists = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8),
    min_size=2,
    max_size=20,
    unique=True,
)


# -- selection ------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(sites=site_lists, size=st.integers(1, 19), rnd=st.integers(0, 2**40), seed=st.binary())
def test_selection_is_deterministic_distinct_and_of_the_requested_size(sites, size, rnd, seed):
    first = select_committee(sites, size, rnd, seed)
    assert first == select_committee(list(sites), size, rnd, bytes(seed))
    assert len(first) == min(size, len(sites))
    assert len(set(first)) == len(first)
    assert set(first) <= set(sites)


@settings(max_examples=30, deadline=None)
@given(sites=site_lists, size=st.integers(1, 19), rnd=st.integers(0, 2**40), data=st.data())
def test_reordering_the_participants_cannot_change_the_committee(sites, size, rnd, data):
    shuffled = data.draw(st.permutations(sites))
    a, b = select_committee(shuffled, size, rnd, SEED), select_committee(sites, size, rnd, SEED)
    if size < len(sites):
        assert a == b
    else:
        # Everyone serves: the given order is kept (receiver j = participant j), same members.
        assert (a, b) == (shuffled, sites)


def test_selection_depends_on_every_input():
    base = select_committee(SITES, 7, 3, SEED)
    # An ordered choice of 7 of 12 has 3,991,680 outcomes: a collision here would be a bug.
    assert select_committee(SITES, 7, 4, SEED) != base
    assert select_committee(SITES, 7, 3, SEED + b"!") != base
    assert select_committee([*SITES[:-1], "site-99"], 7, 3, SEED) != base
    assert select_committee(SITES[:-1], 7, 3, SEED) != base
    # The seed binds each input separately: moving bytes between fields changes it.
    assert committee_seed(["ab", "c"], 1, SEED) != committee_seed(["a", "bc"], 1, SEED)
    assert committee_seed(SITES, 1, b"x") != committee_seed(SITES, 1, b"x\x00")


def test_committee_is_spread_over_the_federation():
    """Over many rounds every site serves and positions vary: it is a permutation, not a slice."""
    counts = dict.fromkeys(SITES, 0)
    firsts = set()
    for rnd in range(300):
        chosen = select_committee(SITES, 6, rnd, SEED)
        firsts.add(chosen[0])
        for s in chosen:
            counts[s] += 1
    # Each site is expected 150 times (6/12 of 300); binomial sd ~8.7, so 100..200 is > 5 sd.
    assert all(100 <= c <= 200 for c in counts.values()), counts
    assert firsts == set(SITES)


@pytest.mark.parametrize("size", [0, -3, 12, 40])
def test_everyone_when_size_is_zero_or_covers_the_federation(size):
    order = SITES[::-1]
    assert select_committee(order, size, 5, SEED) == order


def test_selection_refuses_bad_input():
    with pytest.raises(ValueError, match="distinct"):
        select_committee(["a", "b", "a"], 2, 1, SEED)
    with pytest.raises(ValueError, match="server_round"):
        select_committee(SITES, 2, -1, SEED)
    with pytest.raises(ValueError, match="seed_material"):
        select_committee(SITES, 2, 1, "not bytes")  # type: ignore[arg-type]


def test_committee_size_automatic_and_requested():
    assert committee_size(1000, 5, 0) == 11
    assert committee_size(1000, 9, -1) == 19
    assert committee_size(8, 5, 0) == 8  # a small federation: everyone
    assert committee_size(1000, 5, 5) == 5
    assert committee_size(12, 5, 12) == 12
    with pytest.raises(ValueError, match="below the 5 answers"):
        committee_size(1000, 5, 4)
    with pytest.raises(ValueError, match="exceeds the 12 participants"):
        committee_size(12, 5, 13)


# -- the round through a committee ----------------------------------------------------------------

PROTO = ProtocolConfig(k=1, t=2, z_dim=6, z_scale_bits=10, z_bound=4.0, update_scale_bits=16)


def committee_round(updates, z, groups, m, dropped=(), absent=()):
    """Every present participant shares to the committee; each surviving member answers."""
    n = len(z)
    n_dist = len(groups)
    plain = {
        i: share_round(updates[i], z[i], m, n_dist, PROTO)[0] for i in range(n) if i not in absent
    }
    answers = {}
    for j in range(m):
        if j in dropped:
            continue
        received = {i: plain[i][j] for i in plain}
        answers[j] = participant_answer(received, n, groups, groups, PROTO)
    return answers


def quantized(values, bound, params):
    clipped, _ = clip(values, bound)
    return params.field.to_signed(quantize(clipped, params))


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rnd=st.integers(0, 1000),
    drop=st.integers(0, 1),
    absent=st.sampled_from([(), (11,), (0, 5)]),
)
def test_committee_answers_decode_to_exact_plaintext_sums_and_distances(seed, rnd, drop, absent):
    rng = np.random.default_rng(seed)
    sites = [f"site-{i:02d}" for i in range(12)]
    committee = select_committee(sites, 7, rnd, SEED)
    assert len(committee) == 7 < len(sites)
    n = len(sites)
    updates = rng.uniform(-1.2, 1.2, size=(n, 5))  # some values clipped on purpose
    z = rng.uniform(-4.5, 4.5, size=(n, PROTO.z_dim))
    present = [i for i in range(n) if i not in absent]
    groups = [present[0::3], present[1::3], present[2::3]]
    dropped = set(rng.choice(7, size=drop, replace=False).tolist())
    answers = committee_round(updates, z, groups, len(committee), dropped, absent=absent)
    assert len(answers) == 7 - drop

    up, zp = PROTO.update_params, PROTO.z_params
    qu = quantized(updates, PROTO.update_bound, up)
    qz = quantized(z, PROTO.z_bound, zp)
    for g, group in enumerate(groups):
        got, wrong = decode_robust({j: a[0][g] for j, a in answers.items()}, up, 1, length=5)
        assert wrong == ()
        assert np.array_equal(up.field.to_signed(got), qu[group].sum(axis=0))
    dist = {j: a[1] for j, a in answers.items()}
    got, wrong = decode_robust(dist, zp, 2)
    assert wrong == ()
    got = zp.field.to_signed(got)
    for i in range(n):
        for c, group in enumerate(groups):
            expected = (
                0 if i in absent else int(((len(group) * qz[i] - qz[group].sum(0)) ** 2).sum())
            )
            assert got[i, c] == expected
    # The threshold answers alone decode the same (nothing rides on the redundancy).
    assert np.array_equal(zp.field.to_signed(decode(dist, zp, 2)), got)


def test_one_wrong_committee_answer_is_named_and_corrected():
    rng = np.random.default_rng(1)
    n = 12
    updates = rng.uniform(-1, 1, size=(n, 3))
    z = rng.uniform(-4, 4, size=(n, PROTO.z_dim))
    groups = [list(range(0, 6)), list(range(6, 12))]
    answers = committee_round(updates, z, groups, 7)
    honest, _ = decode_robust({j: a[1] for j, a in answers.items()}, PROTO.z_params, 2)
    bad = {j: a[1].copy() for j, a in answers.items()}
    bad[4][3, 1, 0] = (bad[4][3, 1, 0] + 1) % PROTO.z_params.field.p[0]
    got, wrong = decode_robust(bad, PROTO.z_params, 2)
    assert wrong == (4,)
    assert np.array_equal(got, honest)


def test_a_senders_plaintext_does_not_grow_with_the_federation():
    rng = np.random.default_rng(2)
    update, z = rng.uniform(-1, 1, 20), rng.uniform(-1, 1, PROTO.z_dim)
    sizes = {}
    for n in (10, 40):
        committee = select_committee([f"s{i}" for i in range(n)], 7, 1, SEED)
        plaintexts, _ = share_round(update, z, len(committee), 4, PROTO)
        assert len(plaintexts) == 7
        sizes[n] = {len(p) for p in plaintexts}
        blind = unpack_field_arrays(plaintexts[0], PROTO.z_params)["blind"]
        assert blind.shape == (4, PROTO.z_params.field.r)
    assert sizes[10] == sizes[40] and len(sizes[10]) == 1
    # 4 bytes per residue of the update (20), z (6) and one blinding row (4 groups), plus headers
    # under 128 bytes: a block per participant row (40 x 4 x 2 x 4 bytes more) cannot fit.
    (size,) = sizes[40]
    assert size <= 4 * PROTO.z_params.field.r * (20 + PROTO.z_dim + 4) + 128


def test_a_plaintext_with_a_blinding_block_of_another_shape_is_refused():
    from secpc import MalformedMessageError

    rng = np.random.default_rng(3)
    n = 6
    plain = [
        share_round(rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 6), 5, 2, PROTO)[0] for _ in range(n)
    ]
    groups = [[0, 1, 2], [3, 4, 5]]
    received = {i: plain[i][0] for i in range(n)}
    with pytest.raises(MalformedMessageError, match="blinding shape"):
        participant_answer(received, n, groups, [*groups, []], PROTO)
    with pytest.raises(MalformedMessageError, match="not a participant index"):
        participant_answer({**received, 6: plain[0][0]}, n, groups, groups, PROTO)


def test_benchmark_round_through_a_committee_is_correct_with_dropouts(tmp_path):
    from benchmarks.secure import main

    out = tmp_path / "secure.json"
    args = "--sites 30 --dim 6 --update-dim 5 --clusters 3 --t 2 --committee 8 --drop 2"
    result = main([*args.split(), "--out", str(out)])
    assert result["correct"] is True
    assert (result["committee_size"], result["answers_received"]) == (8, 6)
    # A non-member uploads one sealed plaintext per member, never one per site.
    assert result["bytes_up_per_site"] < 8 * 400
    assert out.read_text().strip() == json.dumps(result)
