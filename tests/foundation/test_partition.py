import numpy as np
import pytest

from client_app.data import load_site_data
from client_app.data.domains import DOMAINS, render
from client_app.data.partition import partition_indices, train_test_split
from client_app.data.sources import digits_glyphs
from client_app.site_config import simulated_site_config


@pytest.fixture(scope="module")
def labels():
    return digits_glyphs()[1]


@pytest.mark.parametrize("sites,domains", [(12, 4), (5, 2), (3, 3), (4, 1)])
def test_partition_is_disjoint_and_complete(labels, sites, domains):
    parts = partition_indices(labels, sites, domains, alpha=0.5, seed=0)
    assert len(parts) == sites
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(labels)
    assert all(len(p) > 0 for p in parts)


def test_partition_is_deterministic_and_seeded(labels):
    a = partition_indices(labels, 12, 4, 0.5, seed=0)
    b = partition_indices(labels, 12, 4, 0.5, seed=0)
    c = partition_indices(labels, 12, 4, 0.5, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_small_alpha_skews_labels_more(labels):
    def mean_tv(alpha):
        parts = partition_indices(labels, 12, 4, alpha, seed=0)
        global_dist = np.bincount(labels, minlength=10) / len(labels)
        return np.mean(
            [
                0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - global_dist).sum()
                for p in parts
            ]
        )

    assert mean_tv(0.1) > mean_tv(100.0) + 0.15


def test_train_test_split_is_disjoint():
    train, test = train_test_split(100, 0.3, seed=0)
    assert len(test) == 30 and len(train) == 70
    assert not set(train.tolist()) & set(test.tolist())


def test_domains_render_differently():
    glyphs = digits_glyphs()[0][:16]
    images = {d: render(glyphs, d, 32, seed=0) for d in DOMAINS}
    assert all(img.shape == (16, 32, 32, 3) and img.dtype == np.uint8 for img in images.values())
    # clean is dark-on-light, inverted light-on-dark: their means sit on opposite sides of grey.
    assert images["clean"].mean() > 128 > images["inverted"].mean()
    assert not np.array_equal(images["clean"], images["rotated"])
    assert images["photo"].std(axis=(1, 2, 3)).mean() > 0
    assert np.array_equal(render(glyphs, "photo", 32, seed=0), images["photo"])


def test_site_data_matches_its_domain_and_partition(tmp_path):
    cfg = simulated_site_config(5, 12, tmp_path)
    data = load_site_data(cfg)
    assert data.domain == DOMAINS[5 % 4]
    assert len(data.train_labels) + len(data.test_labels) == len(data.indices)
    assert data.class_names[0] == "zero" and len(data.class_names) == 10
