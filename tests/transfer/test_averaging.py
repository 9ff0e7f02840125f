"""Suffix averaging of prompt iterates: the window of each epoch count and its mean."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prompts.transfer.averaging import SuffixAverages, suffix_length


@given(
    fraction=st.floats(0, 1),
    steps_per_epoch=st.integers(1, 12),
    epochs=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_each_epoch_count_averages_its_own_last_iterates(fraction, steps_per_epoch, epochs, seed):
    gen = torch.Generator().manual_seed(seed)
    iterates = torch.randn(steps_per_epoch * epochs, 3, 2, generator=gen)
    avg = SuffixAverages(fraction, steps_per_epoch, epochs)
    for step, prompt in enumerate(iterates, start=1):
        avg.update(step, prompt)
    for k in range(1, epochs + 1):
        end = k * steps_per_epoch
        n = max(1, math.ceil(fraction * end))
        expected = iterates[end - n : end].double().mean(0).float()
        assert torch.allclose(avg.mean(k), expected, atol=1e-6)


@given(steps=st.integers(1, 500), fraction=st.floats(0, 1))
def test_suffix_length_is_within_one_step_of_the_fraction(steps, fraction):
    n = suffix_length(fraction, steps)
    assert 1 <= n <= steps
    assert n >= fraction * steps and n - 1 < max(1.0, fraction * steps)


def test_fraction_zero_is_the_last_iterate_and_one_the_mean_of_all():
    iterates = [torch.full((2, 2), float(i)) for i in range(1, 6)]
    last, every = SuffixAverages(0.0, 5, 1), SuffixAverages(1.0, 5, 1)
    for step, prompt in enumerate(iterates, start=1):
        last.update(step, prompt)
        every.update(step, prompt)
    assert torch.equal(last.mean(1), iterates[-1])
    assert torch.equal(every.mean(1), torch.full((2, 2), 3.0))


def test_a_window_with_missing_iterates_is_refused():
    avg = SuffixAverages(0.5, 4, 1)
    avg.update(3, torch.ones(2))
    with pytest.raises(RuntimeError, match="1 of the 2 iterates of epoch count 1"):
        avg.mean(1)


@pytest.mark.parametrize("fraction, steps", [(-0.1, 4), (1.5, 4), (0.5, 0)])
def test_bad_fraction_or_steps_are_named(fraction, steps):
    with pytest.raises(ValueError, match="fraction|steps"):
        suffix_length(fraction, steps)
