"""``transfer``: learn a teacher prompt from public unlabeled text (POST's transfer step).

For each public text ``x`` put through the task template, at the label position:
``L = (1−α)·KL(teacher(p_t+x) ‖ student(p_s+x)) + α·KL(Δteacher ‖ Δstudent)``, where
``Δ = logits(p+x) − logits(x)`` is the shift the prompt induces, every distribution taken at
temperature T and the loss scaled by T². With ``objective="label"`` both distributions are
taken over the task's label words only (the logits of the other tokens are dropped before the
softmax), so the loss is about which label the prompt favours and nothing else; ``"full"`` uses
the whole vocabulary, as POST's code does. Only the teacher prompt ``p_t`` is trained. The student,
its prompt and the teacher without a prompt are fixed, so their logits are computed once. The
private data is never read here: only the template and label words recorded with the prompt.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from .common import (
    Progress,
    PromptMismatchError,
    load_model,
    read_metadata,
    setup_run,
    tokenizer_hash,
)
from .config import TransferConfig
from .data import encode_templated, label_token_ids, load_public, public_split
from .prompt import batched_logits, init_from_text, last_logits, load_prompt, save_prompt


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(p/T) ‖ softmax(q/T)) · T²."""
    log_p = F.log_softmax(p_logits / temp, -1)
    log_q = F.log_softmax(q_logits / temp, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temp**2


def transfer_loss(
    t_prompted: torch.Tensor,
    t_plain: torch.Tensor,
    s_prompted: torch.Tensor,
    s_plain: torch.Tensor,
    alpha: float,
    temp: float,
    label_ids: list[int] | None = None,
) -> torch.Tensor:
    """POST's transfer loss on a batch of last-position logits.

    Parameters
    ----------
    t_prompted, t_plain, s_prompted, s_plain : torch.Tensor
        (B, V) logits of the teacher / student with and without their prompts.
    alpha : float
        Weight of the prompt-shift KL; ``1 - alpha`` weighs the output KL.
    temp : float
        Softmax temperature; the loss is scaled by ``temp**2``.
    label_ids : list of int, optional
        Restrict both KLs to these vocabulary columns (the label words' first tokens). None
        keeps the whole vocabulary.

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    if label_ids is not None:
        cols = torch.as_tensor(label_ids, device=t_prompted.device)
        t_prompted, t_plain = t_prompted[:, cols], t_plain[:, cols]
        s_prompted, s_plain = s_prompted[:, cols], s_plain[:, cols]
    out_kl = _kl(t_prompted, s_prompted, temp)
    shift_kl = _kl(t_prompted - t_plain, s_prompted - s_plain, temp)
    return (1 - alpha) * out_kl + alpha * shift_kl


def agreement(a_logits: torch.Tensor, b_logits: torch.Tensor, label_ids: list[int]) -> float:
    """Fraction of rows whose top label word is the same under both."""
    ids = torch.tensor(label_ids, device=a_logits.device)
    return (a_logits[:, ids].argmax(-1) == b_logits[:, ids].argmax(-1)).float().mean().item()


def run_transfer(
    cfg: TransferConfig, teacher=None, tok=None, model_id=None, student=None, quiet=False
):
    """Learn and save the teacher prompt; returns a summary (losses, agreement, seconds)."""
    setup_run(cfg)
    if student is None:
        student, s_tok, _ = load_model(cfg.student, cfg.cache_dir or None, cfg.device)
    else:
        s_tok = tok
    s_prompt, s_meta = load_prompt(cfg.student_prompt, student, s_tok)
    if teacher is None:
        teacher, tok, model_id = load_model(cfg.teacher, cfg.cache_dir or None, cfg.device)
    if tokenizer_hash(tok) != s_meta["tokenizer_hash"]:
        raise PromptMismatchError(
            "teacher and student tokenizers differ: the same public text would not be the same "
            "token ids for both, so the student prompt cannot be transferred"
        )
    device = teacher.get_input_embeddings().weight.device
    template, words = s_meta["template"], s_meta["label_words"]
    label_ids = label_token_ids(tok, words)
    loss_ids = label_ids if cfg.objective == "label" else None

    corpus = load_public(cfg.public_corpus)
    texts = public_split(corpus, cfg.num_texts, cfg.seed)
    held = public_split(corpus, cfg.heldout_texts, cfg.seed, offset=cfg.num_texts)
    enc = encode_templated(tok, texts, template, cfg.max_text_tokens)
    bs = cfg.batch_size
    start = time.perf_counter()
    s_prompted = batched_logits(student, enc, s_prompt, bs)
    s_plain = batched_logits(student, enc, None, bs)
    t_plain = batched_logits(teacher, enc, None, bs)

    init = cfg.init
    if init == "student" and s_prompt.shape[-1] != teacher.config.hidden_size:
        print("[transfer] hidden sizes differ: init from the task sentence", file=sys.stderr)
        init = "text"
    if init == "student":
        start_prompt = s_prompt.detach().clone()
    else:
        start_prompt = init_from_text(teacher, tok, s_meta["init_text"], s_prompt.shape[0])
    t_prompt = torch.nn.Parameter(start_prompt.to(device))
    opt = torch.optim.Adam([t_prompt], lr=cfg.lr)

    def heldout_agreement() -> float | None:
        if not held:
            return None
        h_enc = encode_templated(tok, held, template, cfg.max_text_tokens)
        a = batched_logits(teacher, h_enc, t_prompt.detach(), bs)
        b = batched_logits(student, h_enc, s_prompt, bs)
        return agreement(a, b, label_ids)

    def full_loss() -> float:
        with torch.no_grad():
            t_prompted = batched_logits(teacher, enc, t_prompt.detach(), bs)
            return transfer_loss(
                t_prompted, t_plain, s_prompted, s_plain, cfg.alpha, cfg.temperature, loss_ids
            ).item()

    seconds = time.perf_counter() - start
    # Diagnostics (loss on the whole transfer set, held-out agreement) are not timed.
    initial_loss, agree_before = full_loss(), heldout_agreement()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    progress = Progress("transfer", cfg.steps, cfg.log_every, quiet)
    history = []
    n = enc["input_ids"].shape[0]
    for step in range(1, cfg.steps + 1):
        idx = torch.randperm(n, generator=gen)[:bs]
        ids = enc["input_ids"][idx].to(device)
        mask = enc["attention_mask"][idx].to(device)
        idx = idx.to(device)
        t_prompted = last_logits(teacher, ids, mask, t_prompt)
        loss = transfer_loss(
            t_prompted,
            t_plain[idx],
            s_prompted[idx],
            s_plain[idx],
            cfg.alpha,
            cfg.temperature,
            loss_ids,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        progress.update(step, loss=loss.item())
    seconds += time.perf_counter() - start
    final_loss = full_loss()
    agree_after = heldout_agreement()

    summary = {
        "step": "transfer",
        "seed": cfg.seed,
        "steps": cfg.steps,
        "student_prompt": str(cfg.student_prompt),
        "init": init,
        "objective": cfg.objective,
        "public_corpus": cfg.public_corpus,
        "template": template,
        "label_names": s_meta["label_names"],
        "label_words": words,
        "max_text_tokens": s_meta["max_text_tokens"],
        "init_text": s_meta["init_text"],
        "task": s_meta["task"],
        "train_size": s_meta["train_size"],
        "test_size": s_meta["test_size"],
        "data_seed": s_meta["data_seed"],
        "student_dp": s_meta.get("dp"),
        "student_epsilon": s_meta.get("epsilon"),
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "batch_losses": [history[0], history[-1]],
        "heldout_agreement_before": agree_before,
        "heldout_agreement_after": agree_after,
        "seconds": seconds,
        "config": vars(cfg),
    }
    save_prompt(Path(cfg.out), t_prompt.detach(), teacher, tok, model_id or cfg.teacher, summary)
    return read_metadata(cfg.out), t_prompt.detach()
