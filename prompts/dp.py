"""Site-level DP-SGD for prompt training: per-example clipping, Gaussian noise, RDP accounting.

The prompt parameters are the only trainable tensors, and they reach every example through one
shared computation (the text encoder over the class names), not through per-example inputs, so
opacus' ``GradSampleModule`` hooks do not apply. Per-example gradients are computed in two
vector-Jacobian products instead (:func:`per_sample_gradients`); clipping, noise and the
averaging are opacus' own ``DPOptimizer`` (fed through ``p.grad_sample``), and the privacy
accounting is opacus' ``RDPAccountant`` (sampled Gaussian mechanism, Poisson sampling).

Privacy caveats (as in Opacus, read before relying on a number):

* **Unit of privacy**: one training example (image) of the site, under add/remove-one
  neighbouring with Poisson sampling at rate ``q`` per step, as the RDP accountant assumes.
  The training loop samples batches that way; do not feed it shuffled fixed-size batches.
* **What is covered**: every trainable prompt part (``P_G`` and, when trained, ``P_L``) is
  clipped jointly per example, so the whole prompt state after training is DP, and so is
  anything computed from it alone (the ``P_G`` update, the reduced prompt ``z_i``, distances).
  A part trained *without* DP would leak through later updates of the other part.
* **Not covered**: the loss and accuracy that training reports are computed from the private
  examples without noise, and so are evaluation metrics on held-out images. Releasing them
  spends privacy that this accounting does not count.
* **Budget over the run**: ``ε`` accumulates over every round the site trains; the caller must
  persist the accountant history (``TrainResult.dp_history``) on the site and pass it back in
  the next round, or the reported ``ε`` restarts from zero while the real loss does not.
* **Randomness**: batch sampling and noise use a generator seeded from ``os.urandom`` unless
  ``secret_seed`` is set (tests only: a known seed makes the noise removable). Noise is drawn in
  opacus' ``secure_mode`` (robust to the floating-point attacks it documents).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: One opacus ``RDPAccountant.history`` entry: ``(noise_multiplier, sample_rate, steps)``.
HistoryEntry = tuple[float, float, int]


class PrivacyBudgetExceededError(ValueError):
    """Training would take ``ε`` past ``DPSGDConfig.target_epsilon``."""


@dataclass(frozen=True)
class DPSGDConfig:
    """DP-SGD settings of a site's prompt training.

    Give either ``noise_multiplier`` (``ε`` is only reported) or ``target_epsilon`` together
    with ``planned_epochs`` (the noise multiplier is calibrated so that training
    ``planned_epochs`` epochs in total, over all rounds, spends at most ``target_epsilon``, and
    training beyond that is refused).

    Attributes
    ----------
    max_grad_norm : float
        Per-example L2 clip ``C`` of the gradient over all trained prompt parts together.
    target_delta : float
        ``δ`` at which ``ε`` is reported; conventionally below ``1 / (examples on the site)``.
    noise_multiplier : float or None
        Gaussian noise standard deviation divided by ``C``; 0 disables the noise (no privacy).
    target_epsilon : float or None
        Total budget of the run.
    planned_epochs : int or None
        Epochs the site will train over the whole run (rounds x local epochs); required with
        ``target_epsilon``.
    secret_seed : int or None
        Seed of batch sampling and noise. ``None`` (production) seeds from ``os.urandom``;
        a fixed seed is for tests only.
    """

    max_grad_norm: float = 1.0
    target_delta: float = 1e-5
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    planned_epochs: int | None = None
    secret_seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(
                f"max_grad_norm: expected a finite number > 0, got {self.max_grad_norm!r}"
            )
        if not 0 < self.target_delta < 1:
            raise ValueError(
                f"target_delta: expected a number in (0, 1), got {self.target_delta!r}"
            )
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0
        ):
            raise ValueError(
                f"noise_multiplier: expected a finite number >= 0, got {self.noise_multiplier!r}"
            )
        if self.target_epsilon is not None:
            if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
                raise ValueError(
                    f"target_epsilon: expected a finite number > 0, got {self.target_epsilon!r}"
                )
            if not isinstance(self.planned_epochs, int) or self.planned_epochs < 1:
                raise ValueError(
                    "planned_epochs: expected an integer >= 1 (rounds x local epochs) with "
                    f"target_epsilon, got {self.planned_epochs!r}"
                )
        if self.secret_seed is not None and not isinstance(self.secret_seed, int):
            raise ValueError(f"secret_seed: expected None or an integer, got {self.secret_seed!r}")


def poisson_schedule(n_examples: int, batch_size: int) -> tuple[int, float]:
    """Steps per epoch and Poisson sampling rate, as opacus' ``DPDataLoader`` sets them.

    ``steps = ceil(n / batch_size)`` and ``q = 1 / steps``, so the expected batch is
    ``q n <= batch_size`` and one epoch covers each example once in expectation.
    """
    if n_examples < 1 or batch_size < 1:
        raise ValueError(
            f"need n_examples >= 1 and batch_size >= 1, got {n_examples}, {batch_size}"
        )
    steps = math.ceil(n_examples / batch_size)
    return steps, 1.0 / steps


def resolve_noise_multiplier(
    config: DPSGDConfig, sample_rate: float, steps_per_epoch: int
) -> float:
    """The noise multiplier to train with.

    ``config.noise_multiplier`` when given; otherwise opacus'
    ``opacus.accountants.utils.get_noise_multiplier(target_epsilon=..., target_delta=...,
    sample_rate=sample_rate, steps=planned_epochs * steps_per_epoch, accountant="rdp")``, whose
    result spends at most ``target_epsilon`` (within its 0.01 search tolerance, from below).
    """
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier)
    return _calibrated_noise_multiplier(
        config.target_epsilon,
        config.target_delta,
        sample_rate,
        config.planned_epochs * steps_per_epoch,
    )


@functools.lru_cache(maxsize=32)
def _calibrated_noise_multiplier(
    target_epsilon: float, target_delta: float, sample_rate: float, steps: int
) -> float:
    # Cached: the search takes seconds and every round of a run asks the same question.
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
        )
    )


def normalize_history(history: Sequence[Sequence[float]] | None) -> tuple[HistoryEntry, ...]:
    """Validate a stored accountant history (e.g. read back from JSON) into tuples."""
    out = []
    for entry in history or ():
        if len(entry) != 3:
            raise ValueError(
                f"dp history: expected (noise_multiplier, sample_rate, steps), got {entry!r}"
            )
        sigma, q, steps = float(entry[0]), float(entry[1]), int(entry[2])
        if not (sigma >= 0 and 0 < q <= 1 and steps >= 0):
            raise ValueError(f"dp history: invalid entry {entry!r}")
        out.append((sigma, q, steps))
    return tuple(out)


def epsilon_from_history(history: Sequence[HistoryEntry], delta: float) -> float:
    """``ε`` at ``delta`` of an opacus ``RDPAccountant`` with this history.

    ``RDPAccountant.get_epsilon(delta)`` with its default orders (the accountant
    ``get_noise_multiplier`` calibrates with); 0 for an empty history, ``inf`` if any step had no
    noise.
    """
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [tuple(e) for e in normalize_history(history) if e[2] > 0]
    if not accountant.history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in accountant.history):
        return math.inf  # a noiseless step releases the gradient itself: no privacy
    return float(accountant.get_epsilon(delta=delta))


def append_steps(
    history: Sequence[HistoryEntry], noise_multiplier: float, sample_rate: float, steps: int
) -> tuple[HistoryEntry, ...]:
    """``history`` plus ``steps`` steps, merged into the last entry when it has the same rates."""
    history = list(normalize_history(history))
    if steps <= 0:
        return tuple(history)
    if history and history[-1][:2] == (noise_multiplier, sample_rate):
        history[-1] = (noise_multiplier, sample_rate, history[-1][2] + steps)
    else:
        history.append((noise_multiplier, sample_rate, steps))
    return tuple(history)


def secret_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device``, seeded from ``os.urandom`` unless ``seed`` is given.

    torch's default generator starts from a fixed seed in every process, so it must not drive
    DP sampling or noise.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(
        int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else int(seed)
    )
    return generator


def per_sample_gradients(
    shared: torch.Tensor,
    params: Sequence[torch.Tensor],
    per_example_losses: Callable[[torch.Tensor], torch.Tensor],
    vectorized: bool = True,
) -> list[torch.Tensor]:
    """Per-example gradients of losses that reach ``params`` only through ``shared``.

    ``loss_i = per_example_losses(shared)[i]`` must depend on example ``i`` alone. With ``G_i =
    d loss_i / d shared`` (one batched backward through the cheap head), the per-example
    gradient is the vector-Jacobian product ``J^T G_i`` of ``shared`` w.r.t. ``params``, done
    for all ``i`` at once with ``is_grads_batched`` (torch's vmap over the backward pass).

    Parameters
    ----------
    shared : torch.Tensor
        Output of the parameter-dependent computation shared by the batch (the per-class text
        features), still attached to the graph of ``params``.
    params : sequence of torch.Tensor
        Parameters to differentiate (the trained prompt parts).
    per_example_losses : callable
        Maps a tensor like ``shared`` to the ``(B,)`` per-example losses (no reduction).
    vectorized : bool
        Use the batched backward; ``False`` (or an operation vmap cannot batch) loops over
        examples instead, with the same result.

    Returns
    -------
    list of torch.Tensor
        One ``(B, *p.shape)`` tensor per parameter (zeros where ``p`` is unused).
    """
    detached = shared.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = per_example_losses(detached)
    if losses.dim() != 1:
        raise ValueError(f"per_example_losses: expected shape (B,), got {tuple(losses.shape)}")
    batch = losses.shape[0]
    eye = torch.eye(batch, device=losses.device, dtype=losses.dtype)
    if vectorized:
        try:
            (g_shared,) = torch.autograd.grad(losses, detached, eye, is_grads_batched=True)
            # retain_graph: should this fail half-way, the loop below still needs the graph.
            grads = torch.autograd.grad(
                shared,
                list(params),
                g_shared,
                retain_graph=True,
                is_grads_batched=True,
                allow_unused=True,
            )
            return [
                torch.zeros(batch, *p.shape, device=p.device, dtype=p.dtype) if g is None else g
                for g, p in zip(grads, params, strict=True)
            ]
        except RuntimeError:
            # Some operations have no batching rule; the loop below computes the same thing.
            pass
    rows = []
    for i in range(batch):
        (g_i,) = torch.autograd.grad(losses, detached, eye[i], retain_graph=True)
        grads = torch.autograd.grad(shared, list(params), g_i, retain_graph=True, allow_unused=True)
        rows.append(
            [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
        )
    return [torch.stack([row[k] for row in rows]) for k in range(len(params))]


def make_dp_optimizer(
    optimizer: torch.optim.Optimizer,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator | None,
):
    """Wrap ``optimizer`` in opacus' ``DPOptimizer`` (mean over the *expected* batch size).

    Returns
    -------
    opacus.optimizers.DPOptimizer
        Its ``step`` clips each example's gradient (all parameters jointly) to
        ``max_grad_norm``, sums, adds ``N(0, (noise_multiplier * max_grad_norm)^2)`` per
        coordinate (``secure_mode``), divides by ``expected_batch_size`` and steps.
    """
    from opacus.optimizers import DPOptimizer

    return DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        generator=generator,
        secure_mode=True,
    )


def dp_step(
    optimizer, params: Sequence[torch.Tensor], grad_samples: Sequence[torch.Tensor]
) -> None:
    """One private step: hand per-example gradients to a ``DPOptimizer`` and step it.

    ``grad_samples[k]`` is ``(B, *params[k].shape)``; ``B`` may be 0 (an empty Poisson batch:
    the step then applies noise only, as the accounting assumes).
    """
    optimizer.zero_grad(set_to_none=True)
    for p, g in zip(params, grad_samples, strict=True):
        p.grad_sample = g.detach()
    optimizer.step()
