"""Local training and evaluation of a hierarchical prompt on cached image features.

Both towers are frozen and image features are computed once per site (see
:mod:`prompts.features`), so one step costs a single text-encoder pass over the class names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from .device import autocast_for
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
    """

    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.01
    train_global: bool = True
    train_local: bool = True
    use_local: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs: expected an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        if self.train_local and not self.use_local:
            raise ValueError("train_local: cannot train P_L when use_local is false")


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train_prompt` measured."""

    loss: float
    accuracy: float
    num_examples: int
    steps: int
    seconds: float


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

    Returns
    -------
    TrainResult
        Mean loss and accuracy over the last epoch's steps, and timings.
    """
    start = time.perf_counter()
    n = features.shape[0]
    if n == 0 or config.epochs == 0:
        return TrainResult(float("nan"), float("nan"), n, 0, time.perf_counter() - start)
    device = features.device
    optimizer = torch.optim.Adam(
        prompt.parameter_groups(config.train_global, config.train_local), lr=config.lr
    )
    generator = torch.Generator().manual_seed(config.seed)
    prompt.train()
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        total_loss, correct = 0.0, 0
        for begin in range(0, n, config.batch_size):
            idx = order[begin : begin + config.batch_size]
            with autocast_for(device):
                logits = class_logits(
                    backbone, prompt, text_inputs, features[idx], config.use_local
                )
                loss = F.cross_entropy(logits.float(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            total_loss += loss.item() * idx.numel()
            correct += int((logits.argmax(dim=1) == labels[idx]).sum())
    prompt.eval()
    return TrainResult(total_loss / n, correct / n, n, steps, time.perf_counter() - start)


@torch.no_grad()
def evaluate_prompt(
    backbone,
    prompt: HierarchicalPrompt,
    text_inputs,
    features: torch.Tensor,
    labels: torch.Tensor,
    use_local: bool = True,
) -> tuple[float, float]:
    """Cross-entropy loss and accuracy of a prompt on cached features.

    Parameters
    ----------
    backbone, prompt, text_inputs, features, labels
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
    with autocast_for(features.device):
        logits = class_logits(backbone, prompt, text_inputs, features, use_local).float()
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return loss, accuracy
