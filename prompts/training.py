"""Local training and evaluation of a hierarchical prompt on cached image features.

Both towers are frozen and image features are computed once per site (see
:mod:`prompts.features`), so one step costs a single text-encoder pass over the class names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from .adapter import FeatureAdapter
from .device import autocast_for
from .dp import DPSGDConfig
from .learner import HierarchicalPrompt


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one site's local training.

    Attributes
    ----------
    epochs : int
        Passes over the site's training features.
    batch_size : int
        Images per step.
    lr : float
        Adam learning rate for both prompt parts.
    train_global, train_local : bool
        Which parts of the prompt are trained.
    use_local : bool
        Whether the class-level residual is part of the forward pass.
    seed : int
        Seed of the shuffling; with the same seed, CPU training is bit-for-bit repeatable.
    dp : DPSGDConfig or None
        Train with DP-SGD (per-example clipping, Gaussian noise, Poisson-sampled batches of
        expected size at most ``batch_size``; see :mod:`prompts.dp` for what is and is not
        covered). ``None`` (default) trains exactly as without this option; ``seed`` then
        plays no part in the DP path (its randomness must stay secret).
    """

    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.01
    train_global: bool = True
    train_local: bool = True
    use_local: bool = True
    seed: int = 0
    dp: DPSGDConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs: expected an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        if self.train_local and not self.use_local:
            raise ValueError("train_local: cannot train P_L when use_local is false")
        if self.dp is not None and not isinstance(self.dp, DPSGDConfig):
            raise ValueError(f"dp: expected None or a DPSGDConfig, got {self.dp!r}")


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train_prompt` measured.

    ``epsilon`` and ``dp_history`` are set by DP training only: ``epsilon`` is the RDP
    accountant's ``ε`` at ``dp.target_delta`` over ``dp_history``, the accountant's history
    (``(noise_multiplier, sample_rate, steps)`` entries) including earlier rounds passed in.
    Store ``dp_history`` on the site and pass it to the next :func:`train_prompt` call. With DP,
    ``loss`` and ``accuracy`` are computed from the private examples without noise (not covered
    by ``epsilon``).
    """

    loss: float
    accuracy: float
    num_examples: int
    steps: int
    seconds: float
    epsilon: float | None = None
    dp_history: tuple[tuple[float, float, int], ...] = ()


def class_logits(
    backbone, prompt: HierarchicalPrompt, text_inputs, features: torch.Tensor, use_local: bool
) -> torch.Tensor:
    """Scaled cosine similarities between image features and per-class text features.

    Parameters
    ----------
    backbone : PromptableBackbone
        Frozen two-tower model.
    prompt : HierarchicalPrompt
        The prompt to evaluate.
    text_inputs : TextInputs
        Class names tokenized by ``backbone.tokenize``.
    features : torch.Tensor
        ``(B, feature_dim)`` L2-normalised image features.
    use_local : bool
        Include the class-level residual.

    Returns
    -------
    torch.Tensor
        ``(B, n_cls)`` logits.
    """
    text = backbone.encode_text(prompt(use_local=use_local), text_inputs)
    return backbone.logit_scale * features @ text.t().to(features.dtype)


def train_prompt(
    backbone,
    prompt: HierarchicalPrompt,
    text_inputs,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    dp_history: Sequence[Sequence[float]] = (),
    adapter: FeatureAdapter | None = None,
) -> TrainResult:
    """Train the chosen prompt parts with cross-entropy on cached features.

    Parameters
    ----------
    backbone : PromptableBackbone
        Frozen model (its parameters receive no gradient).
    prompt : HierarchicalPrompt
        Trained in place.
    text_inputs : TextInputs
        Class names tokenized by ``backbone.tokenize``.
    features : torch.Tensor
        ``(N, feature_dim)`` image features on the training device.
    labels : torch.Tensor
        ``(N,)`` class indices on the training device.
    config : TrainConfig
        Hyperparameters.
    dp_history : sequence of (noise_multiplier, sample_rate, steps)
        DP only: the accountant history of the site's earlier rounds (``TrainResult.dp_history``
        of the previous call); ignored without ``config.dp``.
    adapter : FeatureAdapter, optional
        A residual map applied to the image features before the logits
        (:class:`prompts.adapter.FeatureAdapter`), trained together with the prompt at
        ``lr * adapter.lr_scale``. Not supported with DP.

    Returns
    -------
    TrainResult
        Mean loss and accuracy over the last epoch's steps, and timings (and, with DP, the
        privacy spent so far).

    Raises
    ------
    ValueError
        If ``adapter`` is given with ``config.dp``.
    PrivacyBudgetExceededError
        With ``config.dp.target_epsilon``: if this call would take ``ε`` past it (training
        beyond ``planned_epochs``). Nothing is trained then.
    """
    if config.dp is not None:
        if adapter is not None:
            raise ValueError("adapter: not supported with DP-SGD training (config.dp)")
        return _train_prompt_dp(backbone, prompt, text_inputs, features, labels, config, dp_history)
    start = time.perf_counter()
    n = features.shape[0]
    if n == 0 or config.epochs == 0:
        return TrainResult(float("nan"), float("nan"), n, 0, time.perf_counter() - start)
    device = features.device
    groups = prompt.parameter_groups(config.train_global, config.train_local)
    if adapter is not None:
        adapter_lr = config.lr * adapter.lr_scale
        groups.append({"params": list(adapter.parameters()), "name": "adapter", "lr": adapter_lr})
        adapter.train()
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    prompt.train()
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        total_loss, correct = 0.0, 0
        for begin in range(0, n, config.batch_size):
            idx = order[begin : begin + config.batch_size]
            with autocast_for(device):
                batch = features[idx] if adapter is None else adapter(features[idx])
                logits = class_logits(backbone, prompt, text_inputs, batch, config.use_local)
                loss = F.cross_entropy(logits.float(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            total_loss += loss.item() * idx.numel()
            correct += int((logits.argmax(dim=1) == labels[idx]).sum())
    prompt.eval()
    if adapter is not None:
        adapter.eval()
    return TrainResult(total_loss / n, correct / n, n, steps, time.perf_counter() - start)


def _train_prompt_dp(
    backbone,
    prompt: HierarchicalPrompt,
    text_inputs,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    dp_history: Sequence[Sequence[float]],
) -> TrainResult:
    """DP-SGD twin of :func:`train_prompt` (same optimizer, Poisson-sampled batches)."""
    from .dp import (
        PrivacyBudgetExceededError,
        append_steps,
        dp_step,
        epsilon_from_history,
        make_dp_optimizer,
        normalize_history,
        per_sample_gradients,
        poisson_schedule,
        resolve_noise_multiplier,
        secret_generator,
    )

    dp = config.dp
    start = time.perf_counter()
    history = normalize_history(dp_history)
    n = features.shape[0]
    if n == 0 or config.epochs == 0:
        eps = epsilon_from_history(history, dp.target_delta)
        return TrainResult(
            float("nan"), float("nan"), n, 0, time.perf_counter() - start, eps, history
        )
    device = features.device
    steps_per_epoch, sample_rate = poisson_schedule(n, config.batch_size)
    sigma = resolve_noise_multiplier(dp, sample_rate, steps_per_epoch)
    planned_steps = config.epochs * steps_per_epoch
    after = append_steps(history, sigma, sample_rate, planned_steps)
    eps_after = epsilon_from_history(after, dp.target_delta)
    # get_noise_multiplier lands at or below the target; the slack absorbs float noise only.
    if dp.target_epsilon is not None and eps_after > dp.target_epsilon * (1 + 1e-9):
        raise PrivacyBudgetExceededError(
            f"training {config.epochs} more epoch(s) would spend ε={eps_after:.4g}, above "
            f"target_epsilon={dp.target_epsilon} (planned_epochs={dp.planned_epochs})"
        )
    groups = prompt.parameter_groups(config.train_global, config.train_local)
    params = [p for group in groups for p in group["params"]]
    optimizer = make_dp_optimizer(
        torch.optim.Adam(groups, lr=config.lr),
        noise_multiplier=sigma,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=sample_rate * n,
        generator=secret_generator(dp.secret_seed, device),
    )
    # Batch membership must stay secret too: amplification by sampling assumes it.
    sampler = secret_generator(None if dp.secret_seed is None else dp.secret_seed + 1)
    scale = backbone.logit_scale
    prompt.train()
    steps = 0
    for _ in range(config.epochs):
        total_loss, correct, seen = 0.0, 0, 0
        for _ in range(steps_per_epoch):
            idx = (torch.rand(n, generator=sampler) < sample_rate).nonzero().squeeze(1)
            idx = idx.to(device)
            if idx.numel() == 0:
                grads = [p.new_zeros((0, *p.shape)) for p in params]
            else:
                feats, target = features[idx], labels[idx]
                with autocast_for(device):
                    text = backbone.encode_text(prompt(use_local=config.use_local), text_inputs)

                # class_logits split at the text features, so that one text-encoder pass
                # serves every example's gradient.
                def logits_of(text_features, feats=feats):
                    with autocast_for(device):
                        return (scale * feats @ text_features.t().to(feats.dtype)).float()

                def losses(text_features, target=target):
                    return F.cross_entropy(logits_of(text_features), target, reduction="none")

                grads = per_sample_gradients(text, params, losses)
                with torch.no_grad():
                    logits = logits_of(text.detach())
                    total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
                correct += int((logits.argmax(dim=1) == target).sum())
                seen += idx.numel()
            dp_step(optimizer, params, grads)
            steps += 1
    optimizer.zero_grad(set_to_none=True)
    prompt.eval()
    history = append_steps(history, sigma, sample_rate, steps)
    return TrainResult(
        total_loss / seen if seen else math.nan,
        correct / seen if seen else math.nan,
        n,
        steps,
        time.perf_counter() - start,
        epsilon_from_history(history, dp.target_delta),
        history,
    )


@torch.no_grad()
def evaluate_prompt(
    backbone,
    prompt: HierarchicalPrompt,
    text_inputs,
    features: torch.Tensor,
    labels: torch.Tensor,
    use_local: bool = True,
    adapter: FeatureAdapter | None = None,
) -> tuple[float, float]:
    """Cross-entropy loss and accuracy of a prompt on cached features.

    Parameters
    ----------
    backbone, prompt, text_inputs, features, labels, adapter
        As in :func:`train_prompt`.
    use_local : bool
        Evaluate the personalized prompt (``P_G + P_L``) or the shared one alone.

    Returns
    -------
    tuple of float
        ``(loss, accuracy)``; ``(nan, nan)`` for an empty set.
    """
    if features.shape[0] == 0:
        return float("nan"), float("nan")
    if adapter is not None:
        features = adapter(features)
    with autocast_for(features.device):
        logits = class_logits(backbone, prompt, text_inputs, features, use_local).float()
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return loss, accuracy
