"""The verified per-round cluster selection (plan_groups / select_clusters), from decoded numbers.

Every test feeds the rule exactly what SecPC decodes: scaled distances
``|| |G| z_i - sum_{m in G} z_m ||^2`` (``secpc.protocol.plain_scaled_distances``) for the groups
the rule itself asked for.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from secpc.protocol import plain_scaled_distances
from strategies.clustering import (
    SelectionConfig,
    SelectionState,
    partition_scores,
    plan_groups,
    select_clusters,
)

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decoded(z: np.ndarray, groups: list[list[int]], active: np.ndarray | None = None):
    n = z.shape[0]
    mask = np.ones(n, bool) if active is None else active
    return plain_scaled_distances({i: z[i] for i in range(n) if mask[i]}, n, groups)


def run(z, config, rounds, active_per_round=None):
    """States after each round."""
    state, states = None, []
    for r in range(1, rounds + 1):
        active = None if active_per_round is None else active_per_round[r - 1]
        groups = plan_groups(len(z), state, config, r, active)
        state = select_clusters(decoded(z, groups, active), groups, state, config, r, active)
        states.append(state)
    return states


def blobs(sizes, seed, dim=16, sep=6.0):
    """Unit-variance Gaussian blobs whose centres are pairwise at least ``sep`` apart."""
    rng = np.random.default_rng(seed)
    while True:
        centres = rng.normal(size=(len(sizes), dim)) * sep
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2)
        if len(sizes) == 1 or gaps[~np.eye(len(sizes), dtype=bool)].min() >= sep:
            break
    truth = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(truth.size)
    z = centres[truth] + rng.normal(size=(truth.size, dim))
    return z[order], truth[order]


LAYOUTS = [[3, 3, 3, 3], [6, 6], [4, 5, 6], [3, 9], [5, 5, 5, 5]]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("seed", range(6))
def test_recovers_separated_clusters_from_one_cluster(layout, seed):
    z, truth = blobs(layout, seed)
    states = run(z, SelectionConfig(seed=seed), rounds=5)
    # Round 1 measures random landmarks: it accepts a split only if some of them happen to be
    # pure; never more clusters than there are.
    assert states[0].k <= len(layout)
    assert adjusted_rand_score(truth, states[-1].labels) == 1.0


@pytest.mark.parametrize("dim", [16, 32, 48])
@pytest.mark.parametrize("n", [9, 12, 20])
def test_one_gaussian_blob_stays_one_cluster(dim, n):
    for seed in range(8):
        z = np.random.default_rng([seed, n, dim]).normal(size=(n, dim))
        states = run(z, SelectionConfig(seed=seed), rounds=4)
        assert [s.k for s in states] == [1] * 4, seed


def test_landmark_partition_of_noise_scores_low_once_self_terms_are_removed():
    # Failure (a) of the old round-1 rule: it accepted its own random landmark partition of
    # noise. Scored leave-one-out, that very partition scores near zero.
    scores = []
    for seed in range(20):
        z = np.random.default_rng(seed).normal(size=(12, 32))
        groups = plan_groups(12, None, SelectionConfig(seed=seed), 1)
        cand, s = partition_scores(decoded(z, groups), groups, 4)
        identity = np.flatnonzero((cand == np.arange(len(groups))).all(axis=1))
        scores.append(s[identity[0]])
    assert max(scores) < 0.1


@FAST
@given(
    n=st.integers(6, 24),
    floor=st.integers(2, 4),
    max_clusters=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    n_blobs=st.integers(1, 4),
    drop=st.floats(0.0, 0.4),
)
def test_size_floor_and_group_rules_never_violated(n, floor, max_clusters, seed, n_blobs, drop):
    if n < floor:
        return
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_blobs, 8))[rng.integers(n_blobs, size=n)] * 5 + rng.normal(size=(n, 8))
    config = SelectionConfig(max_clusters=max_clusters, min_cluster_size=floor, seed=seed)
    state = None
    for r in range(1, 5):
        active = rng.random(n) >= drop
        if active.sum() < floor:
            active[:floor] = True
        groups = plan_groups(n, state, config, r, active)
        flat = sorted(i for g in groups for i in g)
        assert flat == list(np.flatnonzero(active)), "groups partition the active sites"
        assert min(len(g) for g in groups) >= floor
        assert len(groups) <= config.max_groups
        state = select_clusters(decoded(z, groups, active), groups, state, config, r, active)
        labels = np.asarray(state.labels)
        assert set(labels) == set(range(state.k)) and state.k <= max_clusters
        assert np.bincount(labels[active]).min() >= floor, "active members per cluster"


@FAST
@given(seed=st.integers(0, 2**16), layout=st.sampled_from(LAYOUTS + [[12], [20]]))
def test_no_oscillation_on_a_stable_input(seed, layout):
    z, _ = blobs(layout, seed, sep=float(np.random.default_rng(seed).uniform(0.5, 8.0)))
    states = run(z, SelectionConfig(seed=seed), rounds=8)
    tail = [s.labels for s in states[4:]]
    assert all(t == tail[0] for t in tail), [s.k for s in states]


@FAST
@given(n=st.integers(6, 20), seed=st.integers(0, 2**16))
def test_partition_scores_match_a_direct_computation(n, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5))
    groups = plan_groups(n, None, SelectionConfig(min_cluster_size=2, seed=seed), 1)
    cand, scores = partition_scores(decoded(z, groups), groups, 3)
    for c, got in zip(cand[:20], scores[:20], strict=False):
        labels = np.empty(n, int)
        for g, members in enumerate(groups):
            labels[members] = c[g]
        s = []
        for i in range(n):
            own = labels == labels[i]
            own[i] = False  # leave-one-out
            a = np.linalg.norm(z[i] - z[own].mean(axis=0))
            b = min(
                np.linalg.norm(z[i] - z[labels == k].mean(axis=0))
                for k in set(labels) - {labels[i]}
            )
            s.append((b - a) / max(a, b))
        assert got == pytest.approx(np.mean(s), abs=1e-9)


def test_inactive_sites_keep_their_cluster():
    z, truth = blobs([5, 5, 5], seed=3)
    config = SelectionConfig(seed=3)
    states = run(z, config, rounds=4)
    assert adjusted_rand_score(truth, states[-1].labels) == 1.0
    active = np.ones(15, bool)
    active[[0, 1]] = False
    groups = plan_groups(15, states[-1], config, 5, active)
    after = select_clusters(decoded(z, groups, active), groups, states[-1], config, 5, active)
    assert adjusted_rand_score(truth, after.labels) == 1.0


def test_state_round_trips_through_json_form():
    z, _ = blobs([4, 4], seed=1)
    state = run(z, SelectionConfig(), rounds=3)[-1]
    assert SelectionState.from_dict(state.to_dict()) == state
    empty = SelectionState(labels=(0, 0, 0), proposal=((0, 1, 2),))
    assert SelectionState.from_dict(empty.to_dict()).k == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_clusters", 0),
        ("min_cluster_size", 1),
        ("max_groups", 11),
        ("max_groups", 1),
        ("score_threshold", -1.0),
        ("score_threshold", float("nan")),
        ("margin", -0.1),
        ("seed", -1),
        ("max_clusters", True),
    ],
)
def test_selection_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SelectionConfig(**{field: value})


def test_plan_groups_refuses_too_few_active_sites():
    with pytest.raises(ValueError, match="min_cluster_size"):
        plan_groups(5, None, SelectionConfig(), 1, np.array([1, 1, 0, 0, 0], bool))
