"""The conflicting-label setting digits-label-swap: same images as digits-domains, group labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from client_app.data import CONFLICT_SOURCES, load_site_data
from client_app.data.partition import domain_of, label_convention
from client_app.site_config import simulated_site_config


@pytest.mark.parametrize("n_classes", [2, 10])
def test_every_convention_is_a_permutation_and_groups_disagree_on_every_class(n_classes):
    perms = [label_convention(g, n_classes) for g in range(min(4, n_classes))]
    for perm in perms:
        assert sorted(perm.tolist()) == list(range(n_classes))
    np.testing.assert_array_equal(perms[0], np.arange(n_classes))
    for a in range(len(perms)):
        for b in range(a + 1, len(perms)):
            # No class is named alike by two groups: one shared classifier must fail one of them.
            assert np.all(perms[a] != perms[b])


def test_convention_rejects_bad_arguments():
    with pytest.raises(ValueError):
        label_convention(-1, 10)
    with pytest.raises(ValueError):
        label_convention(0, 1)


def _swap_config(partition_id: int, tmp_path):
    config = simulated_site_config(partition_id, 12, tmp_path, source="digits-domains")
    # site_config.DATA_SOURCES does not list the new source yet (owned elsewhere); the data
    # layer is tested directly.
    data = dataclasses.replace(config.data)
    object.__setattr__(data, "source", "digits-label-swap")
    clone = dataclasses.replace(config)
    object.__setattr__(clone, "data", data)
    return config, clone


@pytest.mark.parametrize("partition_id", [0, 1, 6])
def test_label_swap_site_has_base_images_and_its_group_convention(partition_id, tmp_path):
    base_config, swap_config = _swap_config(partition_id, tmp_path)
    assert CONFLICT_SOURCES["digits-label-swap"] == "digits-domains"
    base, swap = load_site_data(base_config), load_site_data(swap_config)
    np.testing.assert_array_equal(base.train_images, swap.train_images)
    np.testing.assert_array_equal(base.test_images, swap.test_images)
    assert base.domain == swap.domain and base.class_names == swap.class_names
    perm = label_convention(domain_of(partition_id, 4), 10)
    np.testing.assert_array_equal(swap.train_labels, perm[base.train_labels])
    np.testing.assert_array_equal(swap.test_labels, perm[base.test_labels])
    if partition_id % 4:
        assert np.all(swap.train_labels != base.train_labels)
