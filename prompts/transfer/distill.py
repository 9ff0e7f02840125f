"""``distill``: build a student from chosen teacher layers and train it on public text.

Loss (DistilBERT-style, weights from POST): ``alpha_ce·T²·KL(teacher_T ‖ student_T)`` +
``alpha_lm·CE(next token)`` + ``alpha_cos·(1 − cos(h_teacher, h_student))`` on the last hidden
states, averaged over tokens.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from .common import Progress, load_model, setup_run, tokenizer_hash, write_metadata
from .config import DistillConfig
from .data import load_public, packed_blocks, public_split


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks (the ModuleList as long as ``num_hidden_layers``)."""
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def resolve_layers(layers: list[int], total: int) -> list[int]:
    """Negative indices count from the end; the result must be distinct, increasing and in range."""
    out = [i + total if i < 0 else i for i in layers]
    if any(not 0 <= i < total for i in out):
        raise ValueError(f"layers {layers} out of range for a {total}-layer teacher")
    if out != sorted(set(out)):
        raise ValueError(f"layers {layers} must be distinct and in increasing order")
    return out


def build_student(teacher, layers: list[int]):
    """Copy ``teacher`` keeping only ``layers`` (plus embeddings, final norm and head)."""
    total = teacher.config.num_hidden_layers
    keep = resolve_layers(layers, total)
    student = copy.deepcopy(teacher)
    stack = decoder_layers(student)
    kept = [stack[i] for i in keep]
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():  # attention modules index the KV cache by layer
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    stack_parent_name = next(n for n, m in student.named_modules() if m is stack)
    parent_name, _, attr = stack_parent_name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    setattr(parent, attr, torch.nn.ModuleList(kept))
    cfg = student.config
    cfg.num_hidden_layers = len(keep)
    layer_types = getattr(cfg, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == total:
        cfg.layer_types = [layer_types[i] for i in keep]
    return student, keep


def distill_loss(t_out, s_out, input_ids: torch.Tensor, cfg: DistillConfig):
    """Return the weighted total and its three parts (KL at T, LM, cosine)."""
    temp = cfg.temperature
    t_logits, s_logits = t_out.logits[:, :-1], s_out.logits[:, :-1]
    vocab = s_logits.shape[-1]
    kl = F.kl_div(
        F.log_softmax(s_logits.reshape(-1, vocab) / temp, -1),
        F.log_softmax(t_logits.reshape(-1, vocab) / temp, -1),
        log_target=True,
        reduction="batchmean",
    ) * (temp**2)
    lm = F.cross_entropy(s_logits.reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
    h_t, h_s = t_out.hidden_states[-1], s_out.hidden_states[-1]
    cos = (1 - F.cosine_similarity(h_s, h_t, dim=-1)).mean()
    total = cfg.alpha_ce * kl + cfg.alpha_lm * lm + cfg.alpha_cos * cos
    return total, {"kl": kl.item(), "lm": lm.item(), "cos": cos.item()}


def run_distill(
    cfg: DistillConfig, teacher=None, tok=None, model_id: str | None = None, quiet: bool = False
):
    """Distill and save the student; returns a summary (losses, seconds, output folder)."""
    setup_run(cfg)
    if teacher is None:
        teacher, tok, model_id = load_model(cfg.teacher, cfg.cache_dir or None, cfg.device)
    student, keep = build_student(teacher, cfg.layer_list())
    student.train()
    head = student.get_output_embeddings()
    embeds = {id(student.get_input_embeddings().weight)} | ({id(head.weight)} if head else set())
    for p in student.parameters():
        p.requires_grad_(cfg.train_embeddings or id(p) not in embeds)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)

    texts = public_split(load_public(cfg.public_corpus), cfg.num_texts, cfg.seed)
    device = next(teacher.parameters()).device
    blocks = packed_blocks(tok, texts, cfg.seq_len).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    progress = Progress("distill", cfg.steps, cfg.log_every, quiet)
    history, parts_history = [], []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(blocks), (cfg.batch_size,), generator=gen)
        batch = blocks[idx.to(device)]
        with torch.no_grad():
            t_out = teacher(input_ids=batch, output_hidden_states=True)
        s_out = student(input_ids=batch, output_hidden_states=True)
        loss, parts = distill_loss(t_out, s_out, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append(loss.item())
        parts_history.append(parts)
        progress.update(step, loss=loss.item(), **parts)
    seconds = time.perf_counter() - start

    student.eval().requires_grad_(False)
    out = Path(cfg.out)
    student.save_pretrained(out)
    tok.save_pretrained(out)
    summary = {
        "step": "distill",
        "teacher_id": model_id,
        "model_id": f"student of {model_id}: layers {keep}",
        "layers": keep,
        "tokenizer_hash": tokenizer_hash(tok),
        "hidden_size": student.config.hidden_size,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "first_loss": history[0],
        "final_loss": history[-1],
        "losses": history,
        "loss_parts": parts_history,
        "seconds": seconds,
        "config": vars(cfg),
    }
    write_metadata(out, summary)
    return summary, student
