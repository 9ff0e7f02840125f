"""``evaluate``: teacher zero-shot, student + prompt and teacher + transferred prompt(s).

All on the held-out test split recorded with the student prompt (same task, split seed and
template), with the prompts as saved at their final step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .common import Progress, load_model, read_metadata, setup_run
from .config import EvaluateConfig
from .data import encode_templated, label_token_ids, load_task, split_task
from .prompt import batched_logits, load_prompt


def predict(
    model, tok, prompt, texts, template, label_ids, max_text_tokens, batch_size, progress=None
) -> torch.Tensor:
    """Return the predicted class index of each text (argmax over the label words)."""
    enc = encode_templated(tok, texts, template, max_text_tokens)
    logits = batched_logits(model, enc, prompt, batch_size, progress)
    return logits[:, torch.tensor(label_ids, device=logits.device)].argmax(-1).cpu()


def accuracy(
    model,
    tok,
    prompt,
    texts,
    labels,
    template,
    label_ids,
    max_text_tokens,
    batch_size,
    progress=None,
) -> float:
    """Fraction of texts whose top label word is the right one."""
    preds = predict(
        model, tok, prompt, texts, template, label_ids, max_text_tokens, batch_size, progress
    )
    # Correct over total in Python floats: a float32 mean puts 175/250 at 0.69999999 and a
    # ">= 0.70" target would read it as missed.
    return int((preds == torch.tensor(labels)).sum()) / len(labels)


def probe_accuracy(
    model, tok, train, test, template: str, max_text_tokens: int, batch_size: int = 32
) -> float:
    """Test accuracy of a logistic-regression probe on the last position's final hidden state.

    The last position is where the label word is predicted; no prompt is used.

    A diagnostic for choosing a student: it says whether the task is still *in* the model's
    representation where the label is read, apart from whether a prompt can steer the head
    to say it. ``train`` and ``test`` are ``LabelledTexts`` (``split_task``'s two parts).
    """
    from sklearn.linear_model import LogisticRegression

    def features(texts):
        enc = encode_templated(tok, texts, template, max_text_tokens)
        return batched_logits(model, enc, None, batch_size, hidden=True).float().cpu().numpy()

    probe = LogisticRegression(max_iter=2000).fit(features(train.texts), train.labels)
    return float(probe.score(features(test.texts), test.labels))


def run_evaluate(cfg: EvaluateConfig, teacher=None, tok=None, student=None, quiet=False):
    """Evaluate side by side; returns the results dict (also written to ``out``)."""
    setup_run(cfg)
    s_meta = read_metadata(cfg.student_prompt)
    task = cfg.task or s_meta["task"]
    test_size = cfg.test_size or s_meta["test_size"]
    _, test = split_task(load_task(task), s_meta["train_size"], test_size, s_meta["data_seed"])
    template, words = s_meta["template"], s_meta["label_words"]
    max_tokens = s_meta["max_text_tokens"]
    nbatch = -(-len(test.texts) // cfg.batch_size)

    def acc(model, model_tok, prompt, name):
        label_ids = label_token_ids(model_tok, words)
        prog = Progress(f"evaluate {name}", nbatch, cfg.log_every, quiet)
        return accuracy(
            model,
            model_tok,
            prompt,
            test.texts,
            test.labels,
            template,
            label_ids,
            max_tokens,
            cfg.batch_size,
            prog,
        )

    results: dict = {"task": task, "test_size": len(test.texts), "label_words": words}
    if student is None:
        student, s_tok, _ = load_model(cfg.student, cfg.cache_dir or None, cfg.device)
    else:
        s_tok = tok
    s_prompt, _ = load_prompt(cfg.student_prompt, student, s_tok)
    results["student_prompt_acc"] = acc(student, s_tok, s_prompt, "student+prompt")
    if teacher is None:
        teacher, tok, _ = load_model(cfg.teacher, cfg.cache_dir or None, cfg.device)
    results["teacher_zero_shot_acc"] = acc(teacher, tok, None, "teacher zero-shot")
    for folder in [p.strip() for p in cfg.teacher_prompt.split(",") if p.strip()]:
        t_prompt, _ = load_prompt(folder, teacher, tok)
        results[f"teacher_prompt_acc[{folder}]"] = acc(teacher, tok, t_prompt, Path(folder).name)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(results, indent=2))
    return results
