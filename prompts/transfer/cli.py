"""``secfpp-transfer distill | tune | transfer | evaluate`` (see prompts/transfer/README.md)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import PromptMismatchError
from .config import STEPS, ConfigError, add_arguments, build_config

DESCRIPTIONS = {
    "distill": "build a student from chosen teacher layers and distill it on public text",
    "tune": "PEFT prompt tuning on the student with private labelled data (--dp-epsilon for DP)",
    "transfer": "learn a teacher prompt from public text that mimics the student's prompt",
    "evaluate": "teacher zero-shot, student + prompt, teacher + transferred prompt, side by side",
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with one subcommand per step."""
    parser = argparse.ArgumentParser(
        prog="secfpp-transfer",
        description="POST: distill a teacher, tune a prompt on the student, transfer it back.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls in STEPS.items():
        p = sub.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name])
        add_arguments(p, cls)
    return parser


def run_step(name: str, cfg) -> dict:
    """Run one step with its config; returns its summary."""
    if name == "distill":
        from .distill import run_distill

        return run_distill(cfg)[0]
    if name == "tune":
        from .tune import run_tune

        return run_tune(cfg)[0]
    if name == "transfer":
        from .transfer import run_transfer

        return run_transfer(cfg)[0]
    from .evaluate import run_evaluate

    return run_evaluate(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``secfpp-transfer``."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    name = args.pop("command")
    yaml_path = args.pop("config", None)
    try:
        cfg = build_config(STEPS[name], yaml_path, args)
    except (ConfigError, FileNotFoundError) as err:
        parser.exit(2, f"secfpp-transfer {name}: config error: {err}\n")
    try:
        summary = run_step(name, cfg)
    except (PromptMismatchError, FileNotFoundError, ValueError) as err:
        parser.exit(1, f"secfpp-transfer {name}: {err}\n")
    keep = {
        k: v for k, v in summary.items() if k not in ("config", "versions", "losses", "loss_parts")
    }
    print(json.dumps(keep, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
