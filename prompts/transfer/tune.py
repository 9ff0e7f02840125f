"""``tune``: PEFT prompt tuning on private labelled data, optionally with DP-SGD (opacus).

Classification is next-token prediction of a label word after a template: the loss is the
cross-entropy over the label words' first tokens at the last position (a verbalizer).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

from .averaging import SuffixAverages
from .common import Progress, load_model, read_metadata, setup_run
from .config import TuneConfig
from .data import encode_templated, label_token_ids, load_task, split_task
from .evaluate import accuracy
from .prompt import init_from_text, last_logits, prompt_tuning_config, save_prompt

# Training examples on which the tuned prompt's training accuracy is reported.
TRAIN_ACC_EXAMPLES = 500


class PromptClassifier(torch.nn.Module):
    """Label-word logits of a frozen LM behind a PEFT prompt embedding (the only trainable part).

    The LM is held outside the module tree so opacus sees only the prompt's ``nn.Embedding``.
    """

    def __init__(self, prompt_encoder: torch.nn.Module, lm, label_ids: list[int]):
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self._lm = (lm,)
        self.register_buffer("label_ids", torch.tensor(label_ids), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return (B, num_labels) logits."""
        n = self.prompt_encoder.embedding.num_embeddings
        idx = torch.arange(n, device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], n)
        prompt = self.prompt_encoder(idx)
        return last_logits(self._lm[0], input_ids, attention_mask, prompt)[:, self.label_ids]

    def prompt(self) -> torch.Tensor:
        """Return the (n, H) prompt."""
        return self.prompt_encoder.embedding.weight.detach().clone()


def run_tune(
    cfg: TuneConfig,
    model=None,
    tok=None,
    model_id: str | None = None,
    quiet=False,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
):
    """Tune and save a prompt; returns a summary (accuracy, epsilon, seconds, folder).

    Parameters
    ----------
    cfg
        The tuning settings.
    model, tok, model_id
        An already loaded model (else ``cfg.model`` is loaded).
    quiet
        No progress output.
    on_epoch
        Called after each epoch with its number (from 1) and a copy of the prompt. The learning
        rate is constant and the shuffle depends only on the seed, so the prompt after epoch k
        equals the prompt of a k-epoch run (with ``cfg.tail_average``, the mean over that run's
        last steps): one run scores every epoch count up to ``cfg.epochs``. Its time is not
        counted in the summary's ``seconds``.
    on_step
        Called after each step (counted from 1, empty Poisson batches included) with its number
        and the prompt as it is then (a detached view: copy what you keep). A caller can average
        the iterates itself (:class:`~prompts.transfer.averaging.SuffixAverages`) and so score
        several tail averages of one run.
    """
    from peft.tuners.prompt_tuning import PromptEmbedding

    setup_run(cfg)
    if model is None:
        model, tok, model_id = load_model(cfg.model, cfg.cache_dir or None, cfg.device)
    device = model.get_input_embeddings().weight.device
    data = load_task(cfg.task)
    train, _ = split_task(data, cfg.train_size, cfg.test_size, cfg.data_seed)
    words = cfg.label_word_list(data.label_names)
    label_ids = label_token_ids(tok, words)
    template, init_text = cfg.resolved_template(), cfg.resolved_init_text()
    enc = encode_templated(tok, train.texts, template, cfg.max_text_tokens)
    labels = torch.tensor(train.labels)

    peft_cfg = prompt_tuning_config(model, cfg.prompt_length, init_text, model_id)
    # PEFT's prompt module on its own: the frozen LM is not wrapped, so it can be reused.
    encoder = PromptEmbedding(peft_cfg, model.get_input_embeddings()).to(device)
    with torch.no_grad():
        encoder.embedding.weight.copy_(init_from_text(model, tok, init_text, cfg.prompt_length))
    clf = PromptClassifier(encoder, model, label_ids).to(device)
    clf.train()

    ds = TensorDataset(enc["input_ids"], enc["attention_mask"], labels)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr)
    dp = cfg.dp_epsilon is not None
    delta = cfg.dp_delta if cfg.dp_delta is not None else 1.0 / len(ds)
    engine = None
    module = clf
    if dp:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module, opt, loader = engine.make_private_with_epsilon(
                module=clf,
                optimizer=opt,
                data_loader=loader,
                target_epsilon=cfg.dp_epsilon,
                target_delta=delta,
                epochs=cfg.epochs,
                max_grad_norm=cfg.max_grad_norm,
            )
    steps_per_epoch = len(loader)
    total = steps_per_epoch * cfg.epochs
    progress = Progress("tune-dp" if dp else "tune", total, cfg.log_every, quiet)
    averages = None
    if cfg.tail_average > 0:
        averages = SuffixAverages(cfg.tail_average, steps_per_epoch, cfg.epochs)

    def current(epochs: int) -> torch.Tensor:
        return averages.mean(epochs) if averages is not None else clf.prompt()

    step, history = 0, []
    start = time.perf_counter()
    paused = 0.0
    for epoch in range(1, cfg.epochs + 1):
        for ids, mask, y in loader:
            step += 1
            # Poisson sampling can draw an empty batch: nothing to learn, the iterate stays.
            if len(y) > 0:
                ids, mask, y = ids.to(device), mask.to(device), y.to(device)
                loss = F.cross_entropy(module(ids, mask), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history.append(loss.item())
                progress.update(step, loss=loss.item())
            weight = clf.prompt_encoder.embedding.weight.detach()
            if averages is not None:
                averages.update(step, weight)
            if on_step is not None:
                on_step(step, weight)
        if on_epoch is not None:
            t = time.perf_counter()
            on_epoch(epoch, current(epoch))
            paused += time.perf_counter() - t
    seconds = time.perf_counter() - start - paused

    prompt = current(cfg.epochs)
    # A class-balanced prefix of the training set (the split interleaves classes): on the whole
    # of a large set this check would cost a third of the tuning itself on the teacher.
    n_check = min(len(train.texts), TRAIN_ACC_EXAMPLES)
    train_acc = accuracy(
        model,
        tok,
        prompt,
        train.texts[:n_check],
        train.labels[:n_check],
        template,
        label_ids,
        cfg.max_text_tokens,
        cfg.batch_size,
    )
    epsilon = engine.get_epsilon(delta) if engine is not None else None
    if epsilon is not None and not math.isfinite(epsilon):
        raise RuntimeError(f"the accountant reported epsilon={epsilon}")
    meta = {
        "step": "tune",
        "seed": cfg.seed,
        "steps": step,
        "task": cfg.task,
        "train_size": cfg.train_size,
        "test_size": cfg.test_size,
        "data_seed": cfg.data_seed,
        "template": template,
        "label_names": data.label_names,
        "label_words": words,
        "max_text_tokens": cfg.max_text_tokens,
        "init_text": init_text,
        "train_accuracy": train_acc,
        "train_accuracy_examples": n_check,
        "first_loss": history[0] if history else None,
        "final_loss": history[-1] if history else None,
        "dp": dp,
        "epsilon": epsilon,
        "delta": delta if dp else None,
        "noise_multiplier": getattr(opt, "noise_multiplier", None),
        "max_grad_norm": cfg.max_grad_norm if dp else None,
        "seconds": seconds,
        "config": vars(cfg),
    }
    save_prompt(Path(cfg.out), prompt, model, tok, model_id, meta)
    return read_metadata(cfg.out), prompt
