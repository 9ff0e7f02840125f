"""The site descriptor: bounded, site-local, public projections, blocks of fixed norm."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prompts.descriptor import DescriptorConfig, feature_statistics, projection, site_descriptor


def features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, dim)) + shift
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 50),
    dim=st.integers(2, 64),
    block_dim=st.integers(1, 24),
    weights=st.tuples(*[st.sampled_from([0.0, 0.25, 0.5, 1.0])] * 3).filter(any),
    scale=st.floats(0.0, 100.0),
    seed=st.integers(0, 2**16),
)
def test_blocks_have_their_weight_as_norm_and_fit_the_bound(
    n, dim, block_dim, weights, scale, seed
):
    config = DescriptorConfig(block_dim, *weights, seed=seed)
    offset = np.random.default_rng(seed).normal(size=(3, 2, 5)) * scale
    z = site_descriptor(offset, features(n, dim, seed), config)
    assert z.shape == (config.dim,)
    present = [w for w in weights if w > 0]
    for b, w in enumerate(present):
        norm = np.linalg.norm(z[b * block_dim : (b + 1) * block_dim])
        # A block is either exactly zero (no direction: zero prompt offset, one image's std)
        # or has norm equal to its weight, whatever the input's scale.
        assert norm == pytest.approx(w, rel=1e-9) or norm == 0.0
    assert np.abs(z).max() <= max(weights) + 1e-12  # within any z-bound >= 1


def test_zero_prompt_offset_gives_a_zero_prompt_block():
    config = DescriptorConfig(block_dim=8, prompt_weight=1.0)
    z = site_descriptor(np.zeros((10, 4, 6)), features(20, 32, 0), config)
    assert z.shape == (24,)
    assert np.all(z[16:] == 0.0) and np.linalg.norm(z[:8]) == pytest.approx(1.0)


def test_default_descriptor_is_image_statistics_only():
    config = DescriptorConfig()
    assert [name for name, _ in config.blocks] == ["mean", "std"] and config.dim == 32
    z = site_descriptor(None, features(20, 32, 0), config)
    assert np.linalg.norm(z) == pytest.approx(np.sqrt(2.0))


def test_descriptor_is_a_function_of_the_site_alone_and_the_public_seed():
    config = DescriptorConfig(block_dim=8, seed=3)
    f, off = features(30, 40, 1), np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(site_descriptor(off, f, config), site_descriptor(off, f, config))
    other = site_descriptor(off, f, DescriptorConfig(block_dim=8, seed=4))
    assert not np.allclose(site_descriptor(off, f, config), other)
    np.testing.assert_array_equal(projection(3, "mean", 40, 8), projection(3, "mean", 40, 8))
    assert not np.allclose(projection(3, "mean", 40, 8), projection(3, "std", 40, 8))


def test_sites_of_different_domains_are_farther_apart_than_sites_of_one():
    # Two "domains": image features around two different directions. Sites of one domain
    # (different images, same distribution) must land closer than sites across domains.
    config = DescriptorConfig(block_dim=16, prompt_weight=0.0)
    dim = 64
    centre = np.random.default_rng(99).normal(size=(2, dim)) * 0.5
    z = [
        site_descriptor(None, features(80, dim, seed, shift=centre[d]), config)
        for d in (0, 1)
        for seed in range(4 * d, 4 * d + 4)
    ]
    z = np.array(z)
    gaps = np.linalg.norm(z[:, None] - z[None], axis=2)
    within = max(gaps[:4, :4].max(), gaps[4:, 4:].max())
    assert gaps[:4, 4:].min() > 2 * within


def test_feature_statistics_are_mean_and_std():
    f = np.array([[1.0, 0.0], [0.0, 1.0]])
    mean, std = feature_statistics(f)
    np.testing.assert_allclose(mean, [0.5, 0.5])
    np.testing.assert_allclose(std, [0.5, 0.5])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("block_dim", 0),
        ("block_dim", 2.0),
        ("mean_weight", 1.5),
        ("std_weight", -0.1),
        ("prompt_weight", float("nan")),
        ("seed", -1),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DescriptorConfig(**{field: value})


def test_all_zero_weights_are_refused_and_prompt_needs_an_offset():
    with pytest.raises(ValueError, match="at least one"):
        DescriptorConfig(mean_weight=0.0, std_weight=0.0, prompt_weight=0.0)
    with pytest.raises(ValueError, match="prompt_offset"):
        site_descriptor(None, features(5, 8, 0), DescriptorConfig(prompt_weight=1.0))
    with pytest.raises(ValueError, match="train_features"):
        site_descriptor(np.ones(3), np.zeros((0, 8)), DescriptorConfig())
