"""SecPC clustering rules, checked against distances computed from synthetic reduced prompts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from strategies.clustering import (
    ClusteringConfig,
    centre_sq_distances,
    groups_from_labels,
    initial_labels,
    landmark_groups,
    lloyd_step,
    profile_embedding,
    true_sq_distances,
)

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sq_distances(z: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """True ||z_i - mean(z[group])||^2 for every site and group (NaN column for an empty group)."""
    out = np.full((z.shape[0], len(groups)), np.nan)
    for c, members in enumerate(groups):
        if members:
            out[:, c] = ((z - z[members].mean(axis=0)) ** 2).sum(axis=1)
    return out


def measured(z: np.ndarray, labels: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    """What the server decodes in a round: distances of active sites to active-member centres."""
    mask = np.ones(len(labels), bool) if active is None else active
    dist = sq_distances(z, groups_from_labels(labels, mask))
    dist[~mask] = np.nan
    return dist


def blobs(sizes: list[int], seed: int, dim: int = 6, sep: float = 10.0, spread: float = 0.3):
    """Well-separated Gaussian blobs in shuffled site order; returns (z, true labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    centres *= sep / np.linalg.norm(centres[:, None] - centres[None], axis=2).max()
    # Rescale until the closest pair is also far apart relative to the spread.
    while (
        np.min(
            np.linalg.norm(centres[:, None] - centres[None], axis=2)[
                ~np.eye(len(sizes), dtype=bool)
            ]
        )
        < 4.0
        if len(sizes) > 1
        else False
    ):
        centres = rng.normal(size=(len(sizes), dim)) * sep
    truth = np.repeat(np.arange(len(sizes)), sizes)
    z = centres[truth] + rng.normal(scale=spread, size=(truth.size, dim))
    order = rng.permutation(truth.size)
    return z[order], truth[order]


def run_secpc(z, config, rounds=3, active_per_round=None):
    groups = landmark_groups(len(z), config)
    labels = initial_labels(sq_distances(z, groups), config, groups)
    for r in range(rounds):
        active = None if active_per_round is None else active_per_round[r]
        labels = lloyd_step(labels, measured(z, labels, active), active, config)
    return labels


def assert_floor(labels: np.ndarray, floor: int) -> None:
    assert np.bincount(labels).min() >= floor
    assert set(np.unique(labels)) == set(range(labels.max() + 1))


# ------------------------------------------------------------------- (a) recovery


LAYOUTS = [[3, 3, 3, 3], [8, 8], [5, 5, 5], [4, 6, 5], [3, 9]]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("seed", range(8))
def test_well_separated_clusters_are_recovered(layout, seed):
    z, truth = blobs(layout, seed)
    config = ClusteringConfig(max_clusters=4, min_cluster_size=3, seed=seed)
    labels = run_secpc(z, config)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert_floor(labels, 3)


@pytest.mark.xfail(strict=True, reason="known limit: degenerate landmarks (see module Limits)")
def test_known_failure_two_landmarks_with_the_same_cluster_mix():
    # 12 sites, 4 clusters of 3: only 4 landmark groups of 3 fit the floor, and this seed draws
    # two with the same cluster composition, so the landmark means span 2 dims for 4 clusters;
    # init merges two clusters and 2-means on 3-centre profiles cannot pull them apart.
    z, truth = blobs([3, 3, 3, 3], 162)
    labels = run_secpc(z, ClusteringConfig(max_clusters=4, min_cluster_size=3, seed=162))
    assert adjusted_rand_score(truth, labels) == 1.0


# ------------------------------------------------------------------- (b) dropouts


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_inactive_sites_keep_their_label_and_others_converge(layout, seed):
    z, truth = blobs(layout, seed)
    n = len(truth)
    rng = np.random.default_rng(seed + 1)
    config = ClusteringConfig(max_clusters=4, min_cluster_size=3, seed=seed)
    landmarks = landmark_groups(n, config)
    labels = initial_labels(sq_distances(z, landmarks), config, landmarks)
    for _ in range(3):
        # Drop at most one site per true cluster so every cluster keeps an active member.
        dropped = [rng.choice(np.flatnonzero(truth == c)) for c in range(len(layout))]
        dropped = dropped[: rng.integers(1, len(dropped) + 1)]
        active = np.ones(n, bool)
        active[dropped] = False
        after = lloyd_step(labels, measured(z, labels, active), active, config)
        # An inactive site never changes cluster on its own: it stays with every site that
        # shared its label before and also stayed put.
        for i in dropped:
            stayed = (labels == labels[i]) & ~active
            assert np.all(after[stayed] == after[i])
        assert_floor(after, 3)
        labels = after
    assert adjusted_rand_score(truth, labels) == 1.0


def test_inactive_site_keeps_label_even_when_far_from_its_centre():
    z, truth = blobs([4, 4, 4], seed=3)
    config = ClusteringConfig(max_clusters=3, min_cluster_size=3)
    labels = truth.copy()
    # Site 0 is labelled with the wrong cluster but does not answer this round.
    wrong = (truth[0] + 1) % 3
    labels[0] = wrong
    active = np.ones(len(z), bool)
    active[0] = False
    after = lloyd_step(labels, measured(z, labels, active), active, config)
    assert after[0] == after[np.flatnonzero(truth == wrong)[0]]
    # Once it answers, it moves home.
    final = lloyd_step(after, measured(z, after), None, config)
    assert adjusted_rand_score(truth, final) == 1.0


# ------------------------------------------------------------------- (c) size floor


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 20),
    k=st.integers(1, 5),
    floor=st.integers(1, 5),
    max_clusters=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    drop=st.floats(0.0, 0.6),
)
def test_size_floor_never_violated(n, k, floor, max_clusters, seed, drop):
    n = max(n, floor)
    rng = np.random.default_rng(seed)
    config = ClusteringConfig(max_clusters=max_clusters, min_cluster_size=floor, seed=seed)
    landmarks = landmark_groups(n, config)
    assert sorted(i for g in landmarks for i in g) == list(range(n))
    assert min(len(g) for g in landmarks) >= floor
    init = initial_labels(rng.exponential(size=(n, len(landmarks))), config)
    assert_floor(init, floor)
    # Arbitrary (possibly invalid) labels and arbitrary non-negative "distances".
    labels = rng.integers(0, k, size=n)
    active = rng.random(n) >= drop
    dist = rng.exponential(size=(n, k)) * rng.choice([0.01, 1, 100], size=(1, k))
    dist[~active] = np.nan
    after = lloyd_step(labels, dist, active, config)
    assert after.shape == (n,)
    if n >= floor:
        assert_floor(after, floor)


# ------------------------------------------------------------------- (d) one blob


@pytest.mark.parametrize("seed", range(4))
def test_single_tight_blob_stays_one_cluster(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=0.5, size=(15, 6)) + 3.0
    config = ClusteringConfig(max_clusters=4, min_cluster_size=3, seed=seed)
    labels = run_secpc(z, config)
    assert np.all(labels == 0)


# ------------------------------------------------------------------- (e) merge


def test_clusters_with_coinciding_centres_are_merged():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(size=(12, 5)), rng.normal(size=(6, 5)) + 20.0])
    z[:12] -= z[:12].mean(axis=0)
    # Two clusters with the same centre: sites {0, 2, 4, ...} and {1, 3, 5, ...} of the blob.
    labels = np.array([0, 1] * 6 + [2] * 6)
    config = ClusteringConfig(max_clusters=4, min_cluster_size=3)
    after = lloyd_step(labels, measured(z, labels), None, config)
    assert adjusted_rand_score([0] * 12 + [1] * 6, after) == 1.0


def test_far_clusters_are_not_merged():
    z, truth = blobs([5, 5], seed=1)
    config = ClusteringConfig(max_clusters=2, min_cluster_size=3, merge_ratio=0.5)
    after = lloyd_step(truth, measured(z, truth), None, config)
    assert adjusted_rand_score(truth, after) == 1.0


# ------------------------------------------------------------------- (f) split


@pytest.mark.parametrize("seed", range(4))
def test_cluster_of_two_far_blobs_is_split(seed):
    z, truth = blobs([4, 4, 4, 4], seed=seed, sep=20.0, spread=0.2)
    # Blobs 2 and 3 start as one cluster; clusters 0 and 1 are tight.
    labels = np.minimum(truth, 2)
    config = ClusteringConfig(max_clusters=4, min_cluster_size=3, seed=seed)
    for _ in range(4):
        labels = lloyd_step(labels, measured(z, labels), None, config)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_split_respects_max_clusters():
    z, truth = blobs([4, 4, 4, 4], seed=0, sep=20.0, spread=0.2)
    labels = np.minimum(truth, 2)
    config = ClusteringConfig(max_clusters=3, min_cluster_size=3)
    after = lloyd_step(labels, measured(z, labels), None, config)
    assert len(np.unique(after)) <= 3


def test_split_needs_twice_the_floor():
    z, truth = blobs([4, 4, 2, 3], seed=0, sep=20.0, spread=0.2)
    labels = np.minimum(truth, 2)  # the mixed cluster has 5 < 2 * 3 members
    config = ClusteringConfig(max_clusters=4, min_cluster_size=3)
    after = lloyd_step(labels, measured(z, labels), None, config)
    assert len(np.unique(after)) == 3


# ------------------------------------------------------------------- (g) centre distances


@FAST
@given(
    n=st.integers(3, 20),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    drop=st.floats(0.0, 0.5),
)
def test_centre_sq_distances_match_direct_computation(n, k, seed, drop):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * rng.uniform(0.1, 10)
    labels = rng.integers(0, k, size=n)
    active = rng.random(n) >= drop
    groups = groups_from_labels(labels, active)
    got = centre_sq_distances(labels, measured(z, labels, active), active)
    for a in range(labels.max() + 1):
        for b in range(labels.max() + 1):
            if groups[a] and groups[b]:
                mu_a, mu_b = z[groups[a]].mean(axis=0), z[groups[b]].mean(axis=0)
                assert got[a, b] == pytest.approx(((mu_a - mu_b) ** 2).sum(), rel=1e-9, abs=1e-9)
            else:
                assert np.isnan(got[a, b])


def test_true_sq_distances_undoes_the_scaling():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(9, 3))
    groups = [[0, 1, 2], [3, 4, 5, 6], [7, 8, 0, 1, 2]]
    sizes = np.array([len(g) for g in groups])
    scaled = np.stack([((len(g) * z - z[g].sum(axis=0)) ** 2).sum(axis=1) for g in groups], axis=1)
    np.testing.assert_allclose(true_sq_distances(scaled, sizes), sq_distances(z, groups))
    with pytest.raises(ValueError, match="sizes"):
        true_sq_distances(scaled, np.array([3, 0, 5]))


def test_groups_from_labels_respects_active():
    labels = np.array([1, 0, 1, 2, 0])
    assert groups_from_labels(labels) == [[1, 4], [0, 2], [3]]
    active = np.array([True, False, True, True, True])
    assert groups_from_labels(labels, active) == [[4], [0, 2], [3]]


def test_landmark_groups_balanced_and_seeded():
    config = ClusteringConfig(max_clusters=3, min_cluster_size=3, seed=5)
    groups = landmark_groups(20, config)
    assert len(groups) == 6  # min(2 * 3, 20 // 3)
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert groups == landmark_groups(20, config)
    assert groups != landmark_groups(20, dataclasses.replace(config, seed=6))
    with pytest.raises(ValueError, match="n_sites"):
        landmark_groups(2, config)


def test_labels_are_in_first_appearance_order():
    z, truth = blobs([4, 4, 4], seed=2)
    labels = lloyd_step(truth, measured(z, truth), None, ClusteringConfig(max_clusters=3))
    first = [labels[np.flatnonzero(labels == c)[0]] for c in range(labels.max() + 1)]
    assert first == sorted(first)
    _, idx = np.unique(labels, return_index=True)
    assert list(labels[np.sort(idx)]) == list(range(labels.max() + 1))


# ------------------------------------------------------------------- (h) config validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_clusters", 0),
        ("max_clusters", 2.5),
        ("min_cluster_size", 0),
        ("min_cluster_size", True),
        ("split_ratio", 0.0),
        ("split_ratio", float("nan")),
        ("merge_ratio", -0.1),
        ("silhouette_threshold", 1.5),
        ("seed", -1),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ClusteringConfig(**{field: value})


@FAST
@given(n=st.integers(4, 20), dim=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_profile_embedding_never_stretches_and_is_exact_in_the_landmark_span(n, dim, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim))
    config = ClusteringConfig(max_clusters=4, min_cluster_size=2, seed=seed)
    groups = landmark_groups(n, config)
    emb = profile_embedding(sq_distances(z, groups), groups)
    true = np.linalg.norm(z[:, None] - z[None], axis=2)
    got = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    assert np.all(got <= true + 1e-6 * (1 + true))
    if len(groups) > dim:  # landmark means span the space: the embedding is an isometry
        np.testing.assert_allclose(got, true, atol=1e-6 * (1 + true.max()))
