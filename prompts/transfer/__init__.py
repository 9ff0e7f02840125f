"""POST: distill a teacher LM, tune a soft prompt on the student, transfer it to the teacher.

Steps (also the ``secfpp-transfer`` subcommands): :func:`~prompts.transfer.distill.run_distill`,
:func:`~prompts.transfer.tune.run_tune`, :func:`~prompts.transfer.transfer.run_transfer`,
:func:`~prompts.transfer.evaluate.run_evaluate`; each takes its config dataclass from
:mod:`prompts.transfer.config`. Modules import torch and transformers lazily through their
submodules; importing this package alone is cheap.
"""

from .common import PromptMismatchError
from .config import ConfigError, DistillConfig, EvaluateConfig, TransferConfig, TuneConfig

__all__ = [
    "ConfigError",
    "DistillConfig",
    "EvaluateConfig",
    "PromptMismatchError",
    "TransferConfig",
    "TuneConfig",
]
