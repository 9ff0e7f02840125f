"""Soft prompts: the forward pass with a prompt, initialisation, and the saved artifact.

A prompt artifact is a folder holding a PEFT prompt-tuning adapter (``adapter_config.json`` and
``adapter_model.safetensors``, loadable with ``peft.PeftModel.from_pretrained``) and our
``metadata.json``. Loading one checks the tokenizer hash and the hidden size against the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .common import PromptMismatchError, read_metadata, tokenizer_hash, write_metadata

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def prompt_tuning_config(model, num_virtual_tokens: int, init_text: str, model_id: str):
    """PEFT ``PromptTuningConfig`` for a causal LM; :func:`init_from_text` does the text init.

    PEFT's own TEXT init would reload the tokenizer by name, which fails for packaged and
    in-memory tokenizers; we do the same thing (repeat/cut the sentence's token embeddings) here.
    """
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=num_virtual_tokens,
        token_dim=model.config.hidden_size,
        num_transformer_submodules=1,
        prompt_tuning_init=PromptTuningInit.RANDOM,
        base_model_name_or_path=model_id,
        # Recorded for readers of the adapter; the weights were initialised from this sentence.
        prompt_tuning_init_text=init_text,
    )


def init_from_text(model, tok, text: str, length: int) -> torch.Tensor:
    """Token embeddings of ``text``, repeated or cut to ``length`` rows (PEFT's TEXT init)."""
    ids = tok(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError("prompt init text tokenizes to nothing")
    ids = (ids * (length // len(ids) + 1))[:length]
    emb = model.get_input_embeddings().weight
    return emb[torch.tensor(ids, device=emb.device)].detach().clone()


def last_logits(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt: torch.Tensor | None = None,
    hidden: bool = False,
) -> torch.Tensor:
    """Next-token logits at the last position, with ``prompt`` (B, n, H) or (n, H) prepended.

    Inputs are left-padded; position ids count only real tokens, and only the last position's
    logits are computed (``logits_to_keep=1``). With ``hidden`` it returns the final hidden
    state there (after the last norm, what the head reads) instead of the logits.
    """
    embeds = model.get_input_embeddings()(input_ids)
    mask = attention_mask
    if prompt is not None:
        if prompt.dim() == 2:
            prompt = prompt.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
        embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
        ones = torch.ones(prompt.shape[:2], dtype=mask.dtype, device=mask.device)
        mask = torch.cat([ones, mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        logits_to_keep=1,
        output_hidden_states=hidden,
    )
    return out.hidden_states[-1][:, -1] if hidden else out.logits[:, -1]


@torch.no_grad()
def batched_logits(
    model, enc, prompt, batch_size: int, progress=None, hidden: bool = False
) -> torch.Tensor:
    """Last-position logits of every row of ``enc`` (no gradient), ``batch_size`` rows at a time.

    With ``hidden``, the final hidden states there instead (see :func:`last_logits`).
    """
    device = model.get_input_embeddings().weight.device
    out = []
    for b, i in enumerate(range(0, enc["input_ids"].shape[0], batch_size), start=1):
        ids = enc["input_ids"][i : i + batch_size].to(device)
        mask = enc["attention_mask"][i : i + batch_size].to(device)
        out.append(last_logits(model, ids, mask, prompt, hidden))
        if progress is not None:
            progress.update(b)
    return torch.cat(out)


def check_compatible(meta: dict[str, Any], model, tok, prompt: torch.Tensor | None = None) -> None:
    """Refuse a prompt whose tokenizer or hidden size differs from ``model``/``tok``."""
    hidden = model.config.hidden_size
    want_hidden = meta.get("hidden_size")
    if prompt is not None and want_hidden is None:
        want_hidden = prompt.shape[-1]
    if want_hidden != hidden or (prompt is not None and prompt.shape[-1] != hidden):
        raise PromptMismatchError(
            f"prompt has hidden size {want_hidden} but the model "
            f"({meta.get('model_id', '?')} was the prompt's model) has hidden size {hidden}"
        )
    got = tokenizer_hash(tok)
    if meta.get("tokenizer_hash") != got:
        raise PromptMismatchError(
            f"prompt was tuned with tokenizer {str(meta.get('tokenizer_hash'))[:12]}… but this "
            f"model's tokenizer is {got[:12]}…: token ids and label words would not line up"
        )


def save_prompt(
    folder: str | Path, prompt: torch.Tensor, model, tok, model_id: str, meta: dict[str, Any]
) -> Path:
    """Write ``prompt`` (n, H) as a PEFT prompt-tuning adapter plus ``metadata.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prompt = prompt.detach().float().cpu().contiguous()
    cfg = prompt_tuning_config(model, prompt.shape[0], meta.get("init_text", ""), model_id)
    cfg.save_pretrained(str(folder))
    save_file({"prompt_embeddings": prompt}, str(folder / ADAPTER_WEIGHTS))
    write_metadata(
        folder,
        {
            **meta,
            "model_id": model_id,
            "tokenizer_hash": tokenizer_hash(tok),
            "hidden_size": model.config.hidden_size,
            "prompt_length": prompt.shape[0],
        },
    )
    return folder


def load_prompt(folder: str | Path, model, tok) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load a prompt artifact for ``model``; raise :class:`PromptMismatchError` if it won't fit."""
    meta = read_metadata(folder)
    weights = Path(folder) / ADAPTER_WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"{folder} has no {ADAPTER_WEIGHTS}")
    prompt = load_file(str(weights))["prompt_embeddings"]
    check_compatible(meta, model, tok, prompt)
    device = model.get_input_embeddings().weight.device
    return prompt.to(device), meta
