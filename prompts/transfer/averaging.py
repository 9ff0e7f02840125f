"""Suffix averaging of the prompt's iterates (Polyak-Ruppert averaging over the last steps).

At a constant learning rate the last iterate of a short tuning run lands wherever the last few
batches push it, so prompts tuned with different shuffles of the same data differ widely
(README, "The default runs at the selected α"). The mean of the iterates over the last fraction
of the steps averages that walk out at no extra forward or backward pass.

Privacy caveat: under DP-SGD every iterate is already released to the accountant (it composes
the noisy steps), so their mean is post-processing and costs no privacy.
"""

from __future__ import annotations

import math

import torch


def suffix_length(fraction: float, steps: int) -> int:
    """Number of final iterates averaged: ``fraction`` of ``steps``, at least the last one.

    Parameters
    ----------
    fraction
        In [0, 1]; 0 keeps only the last iterate, 1 averages every iterate.
    steps
        Steps of the run (> 0).
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    return max(1, min(steps, math.ceil(fraction * steps)))


class SuffixAverages:
    """The mean of the iterates over the last ``fraction`` of the steps of each epoch count.

    One tuning run of E epochs yields, for every k ≤ E, the prompt a k-epoch run would save
    (the shuffle depends only on the seed and the learning rate is constant), so the window of
    each epoch count is kept apart: E running sums of one prompt each.

    Parameters
    ----------
    fraction
        Fraction of each run's steps whose iterates are averaged (see :func:`suffix_length`).
    steps_per_epoch, epochs
        Shape of the run.
    """

    def __init__(self, fraction: float, steps_per_epoch: int, epochs: int):
        self._ends = [k * steps_per_epoch for k in range(1, epochs + 1)]
        self._starts = [end - suffix_length(fraction, end) + 1 for end in self._ends]
        self._sums: list[torch.Tensor | None] = [None] * epochs
        self._counts = [0] * epochs

    def update(self, step: int, prompt: torch.Tensor) -> None:
        """Add the prompt after ``step`` (counted from 1) to every window that holds it."""
        # float64 sums: the mean of up to thousands of float32 iterates keeps its digits. One
        # copy serves every window: the sums are never changed in place.
        p = prompt.detach().to(torch.float64, copy=True)
        for k, (start, end) in enumerate(zip(self._starts, self._ends, strict=True)):
            if start <= step <= end:
                self._sums[k] = p if self._sums[k] is None else self._sums[k] + p
                self._counts[k] += 1

    def mean(self, epochs: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The averaged prompt of an ``epochs``-epoch run (all its window's steps must be in)."""
        k = epochs - 1
        window = self._ends[k] - self._starts[k] + 1
        total = self._sums[k]
        if total is None or self._counts[k] != window:
            raise RuntimeError(
                f"{self._counts[k]} of the {window} iterates of epoch count {epochs} were added"
            )
        return (total / window).to(dtype)
