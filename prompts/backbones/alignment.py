"""Fit, cache and load the linear text-to-image alignment of the two-tower backbone.

The alignment is fitted once, with no labelled data of any target task, as a ridge regression:

* inputs: MiniLM sentence embeddings of the 1,000 ImageNet-1k class names (WordNet lemmas,
  ``imagenet_classes.json``), each put into several prompt templates ("a photo of a {}.", ...);
  every (template, name) sentence is one training row, so the map is fitted for the prompt
  distribution it will see, not for one fixed prompt;
* targets: the image tower's own ImageNet classifier rows (the 1280-d weight vector of each
  class, L2-normalized), i.e. the direction in image-feature space that the pretrained network
  itself uses to recognise that class.

The ridge penalty is picked by 5-fold cross-validation over ImageNet *classes* (held-out classes'
names must retrieve their own classifier row among the 200 held-out rows), so the choice uses
only ImageNet metadata and the two pretrained towers. The fitted map, the chosen penalty and the
held-out retrieval accuracy are cached in ``<cache_dir>/two-tower-alignment-<hash>.pt``, keyed
by a hash of every input (class list, templates, settings, both towers' weight files), and
written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

# JSON, not .txt: Flower app bundles (FABs) carry .json files but drop .txt ones.
CLASSES_FILE = Path(__file__).with_name("imagenet_classes.json")

TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a drawing of a {}.",
)
MAX_SYNONYMS = 1
LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
N_FOLDS = 5
FIT_COUNT = 0  # incremented on every real fit; tests use it to check cache hits


def imagenet_classes() -> list[tuple[str, list[str], str]]:
    """The 1,000 ImageNet classes in index order as (synset, lemmas, gloss)."""
    doc = json.loads(CLASSES_FILE.read_text(encoding="utf-8"))
    rows = [(c["synset"], list(c["lemmas"]), c["gloss"]) for c in doc["classes"]]
    if len(rows) != 1000:
        raise RuntimeError(f"{CLASSES_FILE} must list 1000 classes, found {len(rows)}")
    return rows


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(backbone=None) -> str:
    """Hash of every input of the fit: class list, templates, settings and both towers' weights."""
    from .two_tower import ALIGNMENT_VERSION, efficientnet_weights_path, minilm_path

    h = hashlib.sha256()
    settings = {
        "version": ALIGNMENT_VERSION,
        "templates": TEMPLATES,
        "max_synonyms": MAX_SYNONYMS,
        "lambdas": LAMBDAS,
        "folds": N_FOLDS,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(CLASSES_FILE.read_bytes())
    h.update(_file_digest(efficientnet_weights_path()).encode())
    h.update(_file_digest(minilm_path() / "model.safetensors").encode())
    return h.hexdigest()[:16]


def _sentences(classes) -> tuple[list[str], torch.Tensor]:
    texts, labels = [], []
    for idx, (_, lemmas, _) in enumerate(classes):
        for name in lemmas[:MAX_SYNONYMS]:
            for t in TEMPLATES:
                texts.append(t.format(name))
                labels.append(idx)
    return texts, torch.tensor(labels)


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge with an unpenalized intercept: returns weight (d_out, d_in) and bias (d_out,)."""
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    gram = xc.T @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc)  # (d_in, d_out)
    b = ym - xm @ w
    return w.T.contiguous(), b


def _retrieval_accuracy(w, b, x_cls, targets, cls_ids, candidates=None) -> float:
    """Top-1 accuracy of mapped sentences retrieving their own class row among ``candidates``.

    ``candidates`` (class indices, default all) mimics zero-shot over a set of classes.
    """
    if candidates is None:
        candidates = torch.arange(targets.shape[0])
    z = torch.nn.functional.normalize(x_cls @ w.T + b, dim=-1)
    pred = candidates[(z @ targets[candidates].T).argmax(dim=1)]
    return float((pred == cls_ids).double().mean())


def fit(backbone) -> dict:
    """Fit the alignment for ``backbone`` (a :class:`TwoTowerBackbone` under construction)."""
    global FIT_COUNT
    FIT_COUNT += 1
    classes = imagenet_classes()
    texts, labels = _sentences(classes)
    x = backbone.encode_sentences(texts).double()
    w_fc, _ = backbone.imagenet_classifier
    targets = torch.nn.functional.normalize(w_fc.double().cpu(), dim=-1)
    y = targets[labels]

    # Per-class mean input: what one prompt-averaged class name looks like, used for scoring.
    n_cls = len(classes)
    x_cls = torch.zeros(n_cls, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    x_cls /= torch.bincount(labels, minlength=n_cls).unsqueeze(1).to(x.dtype)
    x_one = x[torch.tensor([i for i, t in enumerate(texts) if t.startswith("a photo of a ")])]
    one_labels = labels[
        torch.tensor([i for i, t in enumerate(texts) if t.startswith("a photo of a ")])
    ]

    gen = torch.Generator().manual_seed(0)
    fold_of_class = torch.randperm(n_cls, generator=gen) % N_FOLDS
    cv = {}
    for lam in LAMBDAS:
        correct = 0
        for k in range(N_FOLDS):
            train = fold_of_class[labels] != k
            w, b = _ridge(x[train], y[train], lam)
            held = fold_of_class[one_labels] == k
            cand = torch.nonzero(fold_of_class == k).flatten()
            acc = _retrieval_accuracy(w, b, x_one[held], targets, one_labels[held], cand)
            correct += acc * int(held.sum())
        cv[lam] = correct / len(one_labels)
    best = max(cv, key=cv.get)
    w, b = _ridge(x, y, best)
    return {
        "weight": w.float(),
        "bias": b.float(),
        "lambda": best,
        "cv_heldout_class_top1": cv[best],
        "cv_by_lambda": {str(k): v for k, v in cv.items()},
        "train_top1": _retrieval_accuracy(w, b, x_one, targets, one_labels),
        "logit_scale": _logit_scale(w_fc),
        "n_sentences": len(texts),
    }


def _logit_scale(w_fc: torch.Tensor) -> float:
    """Cosine-to-logit multiplier: median classifier-row norm times a typical feature norm.

    The pretrained classifier's logit is ``|w_c| |f| cos(w_c, f)``; with both sides normalized the
    same spread is recovered by ``|w| * |f|``. ``|f|`` is taken as the typical pooled-feature norm
    (measured once on random crops of scikit-learn's two unlabelled sample photos at the tower's
    native 224 px, median 16.2); a constant keeps the fit independent of the image resolution.
    With the packaged weights this gives about 37.
    """
    return float(w_fc.norm(dim=1).median()) * TYPICAL_FEATURE_NORM


TYPICAL_FEATURE_NORM = 16.0


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_path(cache_dir: str | Path) -> Path:
    """Where the alignment for the installed towers and current settings is cached."""
    return Path(cache_dir) / f"two-tower-alignment-{cache_key()}.pt"


def load_or_fit(backbone, cache_dir: Path) -> dict:
    """Load the cached alignment for ``backbone`` or fit it and cache it atomically."""
    path = cache_path(cache_dir)
    if path.exists():
        try:
            fit_ = torch.load(path, map_location="cpu", weights_only=True)
            fit_["path"] = str(path)
            return fit_
        except Exception:  # noqa: BLE001 - a corrupt cache entry is refitted
            pass
    fit_ = fit(backbone)
    _atomic_save(fit_, path)
    fit_["path"] = str(path)
    return fit_
