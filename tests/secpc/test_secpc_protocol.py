"""The SecPC round in pure numpy: share -> coded answers -> decode -> clustering, exactly as the
strategy and the sites run it, on synthetic prompts with well-separated clusters."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from secpc.protocol import (
    ProtocolConfig,
    decode_distances,
    decode_sums,
    groups_from_labels,
    participant_answer,
    plain_cluster_sums,
    plain_scaled_distances,
    share_round,
)
from strategies.clustering import (
    ClusteringConfig,
    initial_labels,
    landmark_groups,
    lloyd_step,
    true_sq_distances,
)

PROTO = ProtocolConfig(k=1, t=2, z_dim=8, z_scale_bits=16, z_bound=8.0)


def secure_round(z, updates, sum_labels, dist_labels, n_dist, dropped=(), committee=None):
    """Run exchange 1 on every site and exchange 2 on every surviving receiver.

    ``committee``: the number of receivers ``M`` (default: every participant receives).
    """
    n = len(z)
    m = n if committee is None else committee
    plaintexts = [share_round(updates[i], z[i], m, n_dist, PROTO)[0] for i in range(n)]
    answers_sum, answers_dist = {}, {}
    sum_groups = groups_from_labels(sum_labels)
    dist_groups = groups_from_labels(dist_labels, n_dist)
    for j in range(m):
        if j in dropped:
            continue
        received = {i: plaintexts[i][j] for i in range(n)}
        sums, dists = participant_answer(received, n, sum_groups, dist_groups, PROTO)
        answers_sum[j], answers_dist[j] = sums, dists
    return decode_sums(answers_sum, updates.shape[1], PROTO), decode_distances(answers_dist, PROTO)


def synthetic(sizes, seed, dim=8, spread=3.0, noise=0.05):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-spread, spread, size=(len(sizes), dim))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    z = centres[truth] + noise * rng.standard_normal((len(truth), dim))
    return np.clip(z, -7.5, 7.5), truth


def test_decoded_round_equals_plaintext_twin():
    z, truth = synthetic([3, 3, 3], seed=1)
    updates = np.random.default_rng(2).uniform(-0.5, 0.5, size=(9, 12))
    sum_labels = list(truth)
    dist_labels = list(truth)
    sums, dists = secure_round(z, updates, sum_labels, dist_labels, 3)
    plain_sums = plain_cluster_sums(dict(enumerate(updates)), groups_from_labels(sum_labels))
    plain_dists = plain_scaled_distances(dict(enumerate(z)), 9, groups_from_labels(dist_labels))
    # Quantization: each update value is off by at most 2^-(24+1); a sum of 3 by 3x that.
    assert np.abs(sums - plain_sums).max() <= 3 * 2.0 ** -(PROTO.update_scale_bits + 1)
    # Distances carry scale 2^(2*16); the relative error is tiny for these magnitudes.
    np.testing.assert_allclose(dists, plain_dists, rtol=1e-3, atol=1e-2)


@settings(max_examples=6, deadline=None)
@given(
    sizes=st.sampled_from([(3, 3, 3, 3), (4, 5), (3, 4, 5), (6, 3)]),
    seed=st.integers(0, 10_000),
    drop=st.integers(0, 2),
    committee=st.sampled_from([None, 7]),
)
def test_well_separated_clusters_are_recovered_through_the_protocol(sizes, seed, drop, committee):
    z, truth = synthetic(list(sizes), seed)
    n = len(truth)
    config = ClusteringConfig(max_clusters=4, min_cluster_size=3, seed=seed)
    updates = np.zeros((n, 4))
    dropped = set(range(drop))  # participants whose exchange-2 answers never arrive
    groups = landmark_groups(n, config)
    dist_labels = [-1] * n
    for g, members in enumerate(groups):
        for m in members:
            dist_labels[m] = g
    _, scaled = secure_round(z, updates, [0] * n, dist_labels, len(groups), dropped, committee)
    sizes_l = np.array([len(g) for g in groups], dtype=float)
    labels = initial_labels(true_sq_distances(scaled, sizes_l), config, groups=groups)
    for _ in range(3):
        k = labels.max() + 1
        _, scaled = secure_round(z, updates, list(labels), list(labels), k, dropped, committee)
        sizes_c = np.bincount(labels, minlength=k).astype(float)
        labels = lloyd_step(labels, true_sq_distances(scaled, sizes_c), None, config)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_too_many_dropouts_refuse_to_decode():
    from secpc import NotEnoughAnswersError

    z, truth = synthetic([3, 3], seed=0)
    with pytest.raises(NotEnoughAnswersError):
        secure_round(z, np.zeros((6, 2)), list(truth), list(truth), 2, dropped={0, 1})


def test_protocol_refuses_settings_it_cannot_decode():
    with pytest.raises(ValueError, match="secure-t"):
        ProtocolConfig(k=1, t=3).check(n_sites=6, update_dim=10)


def test_each_distance_row_is_blinded_by_its_own_sender_only():
    """Sender i's blinding moves row i of every answer, off the data points, and nothing else."""
    from secpc import decode_slices, pack_field_arrays, unpack_field_arrays

    zp = PROTO.z_params
    z, truth = synthetic([3, 3], seed=4)
    n, m, target = 6, 5, 2
    plaintexts = [share_round(np.zeros(3), z[i], m, 2, PROTO)[0] for i in range(n)]
    groups = groups_from_labels(list(truth))
    unblinded = []
    for j in range(m):
        arrays = unpack_field_arrays(plaintexts[target][j], PROTO.update_params)
        assert arrays["blind"].shape == (2, zp.field.r)  # one row, not a block per participant
        arrays["blind"] = np.zeros_like(arrays["blind"])
        unblinded.append(pack_field_arrays(arrays, PROTO.update_params))
    diffs = {}
    for j in range(m):
        received = {i: plaintexts[i][j] for i in range(n)}
        _, with_blind = participant_answer(received, n, groups, groups, PROTO)
        _, without = participant_answer(
            {**received, target: unblinded[j]}, n, groups, groups, PROTO
        )
        diffs[j] = (with_blind - without) % zp.field.p
        others = [i for i in range(n) if i != target]
        assert not np.any(diffs[j][others])
    assert all(np.any(d[target]) for d in diffs.values())
    # The blinding vanishes at the data points: the decoded distances are unchanged.
    assert not np.any(decode_slices(diffs, zp, 2))
