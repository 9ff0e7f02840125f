"""Model outputs the attacks need, computed with the frozen backbone (torch).

The attacker owns the public backbone, so it can score any prompt it holds on any images it
has; the benchmark also scores prompts on a site's own images to measure an attack's
success (ground truth the attacker never sees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from prompts.learner import HierarchicalPrompt
from prompts.training import TrainConfig, class_logits, train_prompt


@dataclass
class PromptScores:
    """Per-image outputs of one prompt on one set of images.

    Attributes
    ----------
    losses : np.ndarray
        ``(N,)`` cross-entropy per image.
    probs : np.ndarray
        ``(N, C)`` softmax outputs.
    accuracy : float
        Top-1 accuracy (``nan`` for an empty set).
    """

    losses: np.ndarray
    probs: np.ndarray
    accuracy: float


def make_prompt(
    global_ctx: np.ndarray | torch.Tensor,
    num_classes: int,
    local_ctx: np.ndarray | torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> HierarchicalPrompt:
    """A :class:`HierarchicalPrompt` with the given parts (``P_L`` zero when not given)."""
    global_ctx = torch.as_tensor(np.asarray(global_ctx), dtype=torch.float32)
    prompt = HierarchicalPrompt(global_ctx, num_classes)
    if local_ctx is not None:
        prompt.load_parts(local_ctx=torch.as_tensor(np.asarray(local_ctx), dtype=torch.float32))
    return prompt.to(device).eval()


@torch.no_grad()
def score_prompt(
    backbone,
    prompt: HierarchicalPrompt,
    text_inputs,
    features: torch.Tensor,
    labels: torch.Tensor,
    use_local: bool,
) -> PromptScores:
    """Per-image loss, probabilities and accuracy of ``prompt`` (as ``evaluate_prompt`` scores)."""
    if features.shape[0] == 0:
        n_cls = prompt.n_cls
        return PromptScores(np.zeros(0), np.zeros((0, n_cls)), float("nan"))
    logits = class_logits(backbone, prompt, text_inputs, features, use_local).float()
    losses = F.cross_entropy(logits, labels, reduction="none")
    return PromptScores(
        losses=losses.cpu().double().numpy(),
        probs=torch.softmax(logits, dim=1).cpu().double().numpy(),
        accuracy=float((logits.argmax(dim=1) == labels).float().mean()),
    )


def train_shadow(
    backbone,
    start_global: np.ndarray,
    num_classes: int,
    text_inputs,
    features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> HierarchicalPrompt:
    """A shadow prompt trained on images the attacker chose as members.

    It starts from the prompt the attacker holds and trains ``P_G`` and ``P_L`` with the
    federation's public recipe, so its members' losses fall about as the target's do.
    """
    prompt = make_prompt(start_global, num_classes, device=features.device)
    train_prompt(
        backbone,
        prompt,
        text_inputs,
        features,
        labels,
        TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
    )
    return prompt.eval()
