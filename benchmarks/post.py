"""Benchmark of the POST stage on the offline default (SmolLM2-135M-Instruct, BBC News, pydoc).

``python -m benchmarks.post --out FILE [--quick]`` runs, in one process: distill (timed on its
own, a one-time cost), prompt tuning on the student, the same with DP-SGD at ε=8, transfer of
both prompts to the teacher, prompt tuning directly on the teacher (same data and epochs), and
the evaluation of all of them on the held-out test split at the final step. The last line
printed is one JSON object (also written to FILE).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from prompts.transfer.common import load_model
from prompts.transfer.config import DistillConfig, EvaluateConfig, TransferConfig, TuneConfig
from prompts.transfer.distill import run_distill
from prompts.transfer.evaluate import run_evaluate
from prompts.transfer.transfer import run_transfer
from prompts.transfer.tune import run_tune

FULL = {
    "distill": {"steps": 40, "batch_size": 8, "seq_len": 48, "num_texts": 200},
    "tune": {
        "train_size": 240,
        "test_size": 150,
        "epochs": 2,
        "batch_size": 16,
        "prompt_length": 8,
        "max_text_tokens": 32,
    },
    "transfer": {
        "num_texts": 64,
        "heldout_texts": 32,
        "steps": 20,
        "batch_size": 8,
        "max_text_tokens": 32,
    },
}
QUICK = {
    "distill": {"steps": 4, "batch_size": 4, "seq_len": 32, "num_texts": 40},
    "tune": {
        "train_size": 40,
        "test_size": 30,
        "epochs": 1,
        "batch_size": 8,
        "prompt_length": 8,
        "max_text_tokens": 24,
    },
    "transfer": {
        "num_texts": 16,
        "heldout_texts": 8,
        "steps": 3,
        "batch_size": 8,
        "max_text_tokens": 24,
    },
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="write the result JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a fast end-to-end check")
    parser.add_argument("--workdir", default="", help="artifact folder (default: a temp folder)")
    parser.add_argument("--teacher", default="smollm2")
    parser.add_argument("--cache-dir", default="")
    parser.add_argument("--dp-epsilon", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest on a shared 2-core machine)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    work = Path(args.workdir or tempfile.mkdtemp(prefix="post-bench-"))
    common = {
        "cache_dir": args.cache_dir,
        "seed": args.seed,
        "device": "auto",
        "threads": args.threads,
    }
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    teacher, tok, teacher_id = load_model(args.teacher, args.cache_dir or None, "auto")
    seconds_load = time.perf_counter() - t0

    d_sum, student = run_distill(
        DistillConfig(
            out=str(work / "student"), teacher=args.teacher, **sizes["distill"], **common
        ),
        teacher=teacher,
        tok=tok,
        model_id=teacher_id,
    )
    student_id = d_sum["model_id"]

    def tune(model, model_id, out, **kw):
        cfg = TuneConfig(
            model=str(work / "student"), out=str(work / out), **sizes["tune"], **common, **kw
        )
        return run_tune(cfg, model=model, tok=tok, model_id=model_id)[0]

    def transfer(prompt_dir, out):
        cfg = TransferConfig(
            student=str(work / "student"),
            student_prompt=str(work / prompt_dir),
            out=str(work / out),
            teacher=args.teacher,
            **sizes["transfer"],
            **common,
        )
        return run_transfer(cfg, teacher=teacher, tok=tok, model_id=teacher_id, student=student)[0]

    s_tune = tune(student, student_id, "student_prompt")
    post = transfer("student_prompt", "post_prompt")
    s_tune_dp = tune(student, student_id, "student_prompt_dp", dp_epsilon=args.dp_epsilon)
    post_dp = transfer("student_prompt_dp", "post_dp_prompt")
    full = tune(teacher, teacher_id, "full_prompt")

    folders = ["post_prompt", "post_dp_prompt", "full_prompt", "student_prompt"]
    ev = run_evaluate(
        EvaluateConfig(
            teacher=args.teacher,
            student=str(work / "student"),
            student_prompt=str(work / "student_prompt"),
            teacher_prompt=",".join(str(work / f) for f in folders),
            **common,
        ),
        teacher=teacher,
        tok=tok,
        student=student,
        quiet=True,
    )
    acc = {f: ev[f"teacher_prompt_acc[{work / f}]"] for f in folders}
    ev_dp = (
        run_evaluate(
            EvaluateConfig(
                teacher=args.teacher,
                student=str(work / "student"),
                student_prompt=str(work / "student_prompt_dp"),
                **common,
            ),
            teacher=teacher,
            tok=tok,
            student=student,
            quiet=True,
        )
        if not args.quick
        else {"student_prompt_acc": None}
    )

    zero = ev["teacher_zero_shot_acc"]
    gain = acc["full_prompt"] - zero
    seconds_post = s_tune["seconds"] + post["seconds"]
    result = {
        "teacher_zero_shot_acc": zero,
        "student_prompt_acc": ev["student_prompt_acc"],
        "student_prompt_dp_acc": ev_dp["student_prompt_acc"],
        "naive_transfer_acc": acc["student_prompt"],
        "post_acc": acc["post_prompt"],
        "post_dp_acc": acc["post_dp_prompt"],
        "epsilon": s_tune_dp["epsilon"],
        "delta": s_tune_dp["delta"],
        "noise_multiplier": s_tune_dp["noise_multiplier"],
        "teacher_full_tuning_acc": acc["full_prompt"],
        "seconds_post": seconds_post,
        "seconds_student_tuning": s_tune["seconds"],
        "seconds_transfer": post["seconds"],
        "seconds_full_tuning": full["seconds"],
        "seconds_distill": d_sum["seconds"],
        "seconds_load_teacher": seconds_load,
        "recovered_gain_fraction": (acc["post_prompt"] - zero) / gain if gain > 0 else None,
        "targets": {
            "post_recovers_60pct_of_full_gain": gain > 0
            and acc["post_prompt"] - zero >= 0.6 * gain,
            "post_at_most_half_full_time": seconds_post <= 0.5 * full["seconds"],
            "post_dp_within_5_points": acc["post_dp_prompt"] >= acc["post_prompt"] - 0.05,
        },
        "transfer_heldout_agreement": [
            post["heldout_agreement_before"],
            post["heldout_agreement_after"],
        ],
        "transfer_loss": [post["initial_loss"], post["final_loss"]],
        "transfer_dp_heldout_agreement": [
            post_dp["heldout_agreement_before"],
            post_dp["heldout_agreement_after"],
        ],
        "seconds_transfer_dp": post_dp["seconds"],
        "distill_loss": [d_sum["first_loss"], d_sum["final_loss"]],
        "train_acc": {
            "student": s_tune["train_accuracy"],
            "student_dp": s_tune_dp["train_accuracy"],
            "teacher_full": full["train_accuracy"],
        },
        "settings": {
            "quick": args.quick,
            "teacher": teacher_id,
            "layers": d_sum["layers"],
            "dp_epsilon": args.dp_epsilon,
            "seed": args.seed,
            **sizes,
            "test_size": ev["test_size"],
            "threads": torch.get_num_threads(),
            "device": str(teacher.device),
            "workdir": str(work),
        },
        "seconds_total": time.perf_counter() - t0,
    }
    text = json.dumps(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(text, flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
