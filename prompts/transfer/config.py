"""One validated config dataclass per ``secfpp-transfer`` step, from flags or a YAML file.

Every field is a command-line flag (``snake_case`` → ``--kebab-case``) and a YAML key; flags
given on the command line override the YAML file, which overrides the defaults. Errors name the
offending key.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .common import DEFAULT_TEACHER
from .data import DEFAULT_PUBLIC, DEFAULT_TASK, DEFAULT_TEMPLATE, TASKS, task_spec

DEFAULT_INIT_TEXT = TASKS[DEFAULT_TASK].init_text
# Teacher layers kept by default, chosen by the layer sweep in the README (``--sweep``).
DEFAULT_LAYERS = "0,1,2,3,4,5,6,7,28,29"


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the key."""


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _positive(cfg: Any, *keys: str) -> None:
    for key in keys:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(cfg, key)}")


def _nonneg(cfg: Any, *keys: str) -> None:
    for key in keys:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(cfg, key)}")


def _required(cfg: Any, *keys: str) -> None:
    for key in keys:
        if not getattr(cfg, key):
            raise ConfigError(f"{key} is required")


def _common_checks(cfg: Any) -> None:
    if cfg.device != "auto" and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    _nonneg(cfg, "seed", "threads")
    _positive(cfg, "log_every")


@dataclass
class DistillConfig:
    """``distill``: a student made of chosen teacher layers, trained on public text."""

    out: str = _opt("", "output folder of the student model (required)")
    teacher: str = _opt(DEFAULT_TEACHER, "teacher: 'smollm2' (packaged), a local path or a hub id")
    layers: str = _opt(DEFAULT_LAYERS, "teacher layers kept in the student, comma-separated")
    public_corpus: str = _opt(DEFAULT_PUBLIC, "public text: 'pydoc' or a .txt file / folder")
    num_texts: int = _opt(400, "public paragraphs used for distillation")
    seq_len: int = _opt(64, "tokens per training block")
    batch_size: int = _opt(8, "blocks per step")
    steps: int = _opt(100, "optimizer steps")
    lr: float = _opt(5e-4, "AdamW learning rate")
    temperature: float = _opt(2.0, "softmax temperature T of the KL term")
    alpha_ce: float = _opt(5.0, "weight of KL(teacher || student) at T")
    alpha_lm: float = _opt(2.0, "weight of the language-modelling loss")
    alpha_cos: float = _opt(1.0, "weight of the cosine loss on last hidden states")
    train_embeddings: bool = _opt(
        False, "also train the copied embeddings and LM head (off: they stay the teacher's)"
    )
    cache_dir: str = _opt("", "cache for dequantized packaged weights (default ~/.cache/secfpp)")
    device: str = _opt("auto", "auto, cpu or cuda[:N]")
    threads: int = _opt(0, "CPU threads for torch (0: torch's default)")
    seed: int = _opt(0, "random seed")
    log_every: int = _opt(10, "progress line every N steps")

    def __post_init__(self) -> None:
        _required(self, "out", "teacher", "public_corpus")
        _common_checks(self)
        _positive(self, "num_texts", "seq_len", "batch_size", "steps", "lr", "temperature")
        _nonneg(self, "alpha_ce", "alpha_lm", "alpha_cos")
        if self.alpha_ce + self.alpha_lm + self.alpha_cos <= 0:
            raise ConfigError("alpha_ce, alpha_lm and alpha_cos cannot all be 0")
        try:
            parsed = self.layer_list()
        except ValueError as err:
            msg = f"layers must be comma-separated integers, got {self.layers!r}"
            raise ConfigError(msg) from err
        if not parsed:
            raise ConfigError("layers must name at least one layer")

    def layer_list(self) -> list[int]:
        """``layers`` as integers (negative counts from the end)."""
        return [int(x) for x in str(self.layers).split(",") if x.strip()]


@dataclass
class TuneConfig:
    """``tune``: PEFT prompt tuning on the student with private labelled data (optionally DP)."""

    model: str = _opt("", "model to tune: a student folder from distill, a path, hub id or smollm2")
    out: str = _opt("", "output folder of the prompt (required)")
    task: str = _opt(
        DEFAULT_TASK, "private task: 'bbc', 'spam' or a folder with one subfolder per class"
    )
    train_size: int = _opt(400, "training examples (class-balanced)")
    test_size: int = _opt(250, "examples held out for evaluate (never used here)")
    data_seed: int = _opt(0, "seed of the train/test split (evaluate reuses it)")
    template: str = _opt("", "input template with {text} (default: the task's, else bbc's)")
    label_words: str = _opt(
        "", "comma-separated label words (default: the task's, else the class folder names)"
    )
    max_text_tokens: int = _opt(48, "text tokens kept per example")
    prompt_length: int = _opt(16, "virtual tokens of the soft prompt")
    init_text: str = _opt("", "sentence the prompt is initialised from (default: the task's)")
    epochs: int = _opt(2, "passes over the training set")
    batch_size: int = _opt(16, "examples per step (expected batch under DP's Poisson sampling)")
    lr: float = _opt(3e-2, "Adam learning rate of the prompt")
    tail_average: float = _opt(
        0.0,
        "save the mean of the prompts after each of the last FRACTION of the steps (0: the last"
        " step's prompt; 0.5: Polyak-Ruppert averaging over the second half; free under DP)",
    )
    dp_epsilon: float | None = _opt(None, "switch to DP-SGD (opacus) with this target epsilon")
    dp_delta: float | None = _opt(None, "DP delta (default 1/N, N = train_size)")
    max_grad_norm: float = _opt(1.0, "per-example clipping norm under DP")
    cache_dir: str = _opt("", "cache for dequantized packaged weights")
    device: str = _opt("auto", "auto, cpu or cuda[:N]")
    threads: int = _opt(0, "CPU threads for torch (0: torch's default)")
    seed: int = _opt(0, "random seed")
    log_every: int = _opt(10, "progress line every N steps")

    def __post_init__(self) -> None:
        _required(self, "model", "out", "task")
        _common_checks(self)
        _positive(self, "train_size", "max_text_tokens", "prompt_length", "epochs")
        _positive(self, "batch_size", "lr", "max_grad_norm")
        _nonneg(self, "test_size", "data_seed")
        if not 0 <= self.tail_average <= 1:
            raise ConfigError(f"tail_average must be in [0, 1], got {self.tail_average}")
        if self.template and "{text}" not in self.template:
            raise ConfigError("template must contain {text}")
        if self.dp_epsilon is not None and self.dp_epsilon <= 0:
            raise ConfigError(f"dp_epsilon must be > 0, got {self.dp_epsilon}")
        if self.dp_delta is not None and not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp_delta must be in (0, 1), got {self.dp_delta}")
        if self.dp_delta is not None and self.dp_epsilon is None:
            raise ConfigError("dp_delta is set but dp_epsilon is not")

    def resolved_template(self) -> str:
        """The template: as given, else the built-in task's, else the BBC one."""
        spec = task_spec(self.task)
        return self.template or (spec.template if spec else DEFAULT_TEMPLATE)

    def resolved_init_text(self) -> str:
        """The init sentence: as given, else the built-in task's, else the BBC one."""
        spec = task_spec(self.task)
        return self.init_text or (spec.init_text if spec else DEFAULT_INIT_TEXT)

    def label_word_list(self, names: list[str]) -> list[str]:
        """Label words, one per class (default: the task's, else the class names)."""
        spec = task_spec(self.task)
        default = list(spec.label_words) if spec and spec.label_words else list(names)
        words = [w.strip() for w in self.label_words.split(",") if w.strip()] or default
        if len(words) != len(names):
            raise ConfigError(f"label_words has {len(words)} words for {len(names)} classes")
        return words


@dataclass
class TransferConfig:
    """``transfer``: a teacher prompt learned from public text to mimic the student's prompt."""

    student: str = _opt("", "student model folder (required)")
    student_prompt: str = _opt("", "prompt folder from tune (required)")
    out: str = _opt("", "output folder of the teacher prompt (required)")
    teacher: str = _opt(DEFAULT_TEACHER, "teacher: 'smollm2', a local path or a hub id")
    public_corpus: str = _opt(DEFAULT_PUBLIC, "public text: 'pydoc' or a .txt file / folder")
    num_texts: int = _opt(64, "public paragraphs used for transfer")
    heldout_texts: int = _opt(32, "other public paragraphs for the agreement check")
    max_text_tokens: int = _opt(48, "text tokens kept per public paragraph")
    steps: int = _opt(30, "optimizer steps")
    batch_size: int = _opt(8, "public texts per step")
    lr: float = _opt(1e-2, "Adam learning rate of the teacher prompt")
    temperature: float = _opt(2.0, "softmax temperature T")
    alpha: float = _opt(0.5, "weight of the prompt-shift KL; (1-alpha) weighs the output KL")
    objective: str = _opt(
        "label",
        "'label': both KLs over the task's label words only; 'full': over the whole vocabulary"
        " (POST's code)",
    )
    init: str = _opt("student", "teacher prompt init: 'student' (copy, if sizes match) or 'text'")
    cache_dir: str = _opt("", "cache for dequantized packaged weights")
    device: str = _opt("auto", "auto, cpu or cuda[:N]")
    threads: int = _opt(0, "CPU threads for torch (0: torch's default)")
    seed: int = _opt(0, "random seed")
    log_every: int = _opt(5, "progress line every N steps")

    def __post_init__(self) -> None:
        _required(self, "student", "student_prompt", "out", "teacher", "public_corpus")
        _common_checks(self)
        _positive(self, "num_texts", "max_text_tokens", "steps", "batch_size", "lr", "temperature")
        _nonneg(self, "heldout_texts")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.objective not in ("label", "full"):
            raise ConfigError(f"objective must be 'label' or 'full', got {self.objective!r}")
        if self.init not in ("student", "text"):
            raise ConfigError(f"init must be 'student' or 'text', got {self.init!r}")


@dataclass
class EvaluateConfig:
    """``evaluate``: accuracies side by side on the held-out private test split."""

    teacher: str = _opt(DEFAULT_TEACHER, "teacher: 'smollm2', a local path or a hub id")
    student: str = _opt("", "student model folder (with --student-prompt)")
    student_prompt: str = _opt("", "student prompt folder from tune; gives template and split")
    teacher_prompt: str = _opt("", "teacher prompt folder(s) from transfer, comma-separated")
    task: str = _opt("", "private task (default: the one recorded with the prompt)")
    test_size: int = _opt(0, "test examples (default: as recorded with the prompt)")
    batch_size: int = _opt(16, "examples per forward pass")
    out: str = _opt("", "write the results JSON here as well")
    cache_dir: str = _opt("", "cache for dequantized packaged weights")
    device: str = _opt("auto", "auto, cpu or cuda[:N]")
    threads: int = _opt(0, "CPU threads for torch (0: torch's default)")
    seed: int = _opt(0, "random seed (unused; kept for the metadata)")
    log_every: int = _opt(5, "progress line every N batches")

    def __post_init__(self) -> None:
        _required(self, "teacher", "student_prompt")
        _common_checks(self)
        _positive(self, "batch_size")
        _nonneg(self, "test_size")
        if self.student_prompt and not self.student:
            raise ConfigError("student is required with student_prompt")


STEPS: dict[str, type] = {
    "distill": DistillConfig,
    "tune": TuneConfig,
    "transfer": TransferConfig,
    "evaluate": EvaluateConfig,
}


def _base_type(tp: Any) -> type:
    """``float | None`` → float; plain types pass through."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of ``cls``; unset flags are left out so YAML values survive."""
    parser.add_argument("--config", help="YAML file with any of the keys below")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        conv = _bool if tp is bool else tp
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=conv,
            default=argparse.SUPPRESS,
            help=f"{f.metadata.get('help', '')} (default: {f.default!r})",
        )


def build_config(cls: type, yaml_path: str | None, overrides: dict[str, Any]):
    """Defaults ← YAML file ← flags, then validate through the dataclass."""
    values: dict[str, Any] = {}
    if yaml_path:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path} must hold a mapping of keys to values")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    values.update(overrides)
    return config_from_dict(cls, values)


def config_from_dict(cls: type, values: dict[str, Any]):
    """Build ``cls`` from a dict, refusing unknown keys and values of the wrong type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    clean: dict[str, Any] = {}
    for key, val in values.items():
        if key not in names:
            raise ConfigError(f"unknown key {key!r} for {cls.__name__}; known: {sorted(names)}")
        tp = _base_type(hints[key])
        if val is None:
            clean[key] = None
        elif tp is bool:
            clean[key] = val if isinstance(val, bool) else _coerce(key, str(val), _bool)
        elif tp is str and isinstance(val, list):
            clean[key] = ",".join(str(v) for v in val)
        else:
            clean[key] = _coerce(key, val, tp)
    return cls(**clean)


def _coerce(key: str, val: Any, conv: Any) -> Any:
    if isinstance(val, bool):  # YAML true/false where a number or text is expected
        raise ConfigError(f"{key}: expected a number or text, got {val!r}")
    try:
        return conv(val)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise ConfigError(f"{key}: cannot read {val!r} ({err})") from err
