"""What a curious server learns, per method: attacks run on exactly what it received.

Example::

    python -m benchmarks.privacy --dataset digits-domains --sites 12 --rounds 10 --seed 0 \
        --out outputs/privacy/privacy.json

Runs one federation per method on the same data and seed, records what the server received
(the wire's up-direction messages; for ``secfpp``/``clustered`` also the ``ServerView`` list)
and what it sent (its own state), then runs four attacks (:mod:`privacy.attacks`): prompt
stealing, class-mix inference, membership inference and domain inference. Prints one JSON
object as its last line (also written to ``--out``), and writes ``<out>.md`` (a table),
``<out>.png`` (methods side by side) and ``<out stem>.<method>.view.json`` (the fields sites
sent and the SecFPP server views). A method whose run fails (e.g. a DP option this tree does
not have yet) gets ``{"error": ...}`` instead of figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

#: Method name to (strategy, extra run-config keys). The DP variants use the run-config keys
#: ``dp``, ``dp-epsilon`` and ``dp-delta``; distributed DP adds its noise at the update's
#: quantization scale, which the run-config check caps at 16 bits.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "promptfl": ("promptfl", {}),
    "hierarchical": ("hierarchical", {}),
    "clustered": ("clustered", {}),
    "secfpp": ("secfpp", {}),
    "secfpp-dp": ("secfpp", {"dp": "distributed", "update-scale-bits": 16}),
    "secfpp-dpsgd": ("secfpp", {"dp": "dp-sgd"}),
}
#: Every figure reported per method (``None`` where it does not apply or could not be computed).
METRICS = (
    "prompt_stealing_accuracy",
    "own_prompt_accuracy",
    "class_mix_correlation",
    "membership_auc",
    "membership_auc_full_prompt",
    "domain_ari",
    "mean_personalized_accuracy",
    "epsilon",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.privacy", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--dataset", default="digits-domains", choices=["digits-domains", "fashion-mnist-domains"]
    )
    parser.add_argument("--sites", type=int, default=12, help="number of sites (default 12)")
    parser.add_argument("--rounds", type=int, default=10, help="training rounds (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {', '.join(METHODS)} (default: all)",
    )
    parser.add_argument("--local-epochs", type=int, default=None, help="default: pyproject")
    parser.add_argument("--batch-size", type=int, default=None, help="default: pyproject")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: pyproject")
    parser.add_argument("--dp-epsilon", type=float, default=None, help="DP methods; default 8.0")
    parser.add_argument("--dp-delta", type=float, default=None, help="DP methods; default 1e-5")
    parser.add_argument(
        "--shadow-epochs",
        type=int,
        default=None,
        help="epochs of the membership attack's shadow prompt (default: local epochs x rounds, "
        "at most 20)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key for every method (repeatable); VALUE parsed as JSON",
    )
    parser.add_argument(
        "--state-root",
        default="~/.cache/secfpp/bench",
        help="parent of the sites' state folders (image features are cached there)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run up to this many methods at once, each in its own process (default 1)",
    )
    parser.add_argument("--out", default=None, help="write the JSON result here too")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    return args


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _clean(value):
    """JSON-safe: NaN to ``None``, numpy scalars to floats."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def method_overrides(method: str, args: argparse.Namespace, out_dir: Path, state_root: Path):
    """The run config of one method: the shared settings plus the method's own keys."""
    strategy, extra = METHODS[method]
    overrides: dict[str, Any] = {
        "strategy": strategy,
        "num-server-rounds": args.rounds,
        "seed": args.seed,
        "dataset": args.dataset,
        # One run-name per method: each site stores its private P_L under it.
        "run-name": f"privacy-{method}-{args.dataset}-s{args.sites}-seed{args.seed}",
        "sim-state-root": str(state_root),
        "output-dir": str(out_dir),
        "device": "auto",
    }
    for key, value in (
        ("local-epochs", args.local_epochs),
        ("batch-size", args.batch_size),
        ("learning-rate", args.learning_rate),
    ):
        if value is not None:
            overrides[key] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set: expected KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    overrides.update(extra)
    if "dp" in extra:
        if args.dp_epsilon is not None:
            overrides["dp-epsilon"] = args.dp_epsilon
        if args.dp_delta is not None:
            overrides["dp-delta"] = args.dp_delta
    return overrides


def _epsilon(records) -> float | None:
    """The privacy spent, if the run reports one (``extra`` or training metrics)."""
    for record in reversed(records):
        for source in (record.extra, record.train_metrics):
            value = source.get("epsilon") if isinstance(source, dict) else None
            if value is not None:
                return float(value)
    return None


def attack_run(run, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every attack on one recorded federation; per-site details and the means."""
    import torch

    from benchmarks.fpl import true_domains
    from client_app.local_store import LocalPromptStore
    from client_app.runtime import site_runtime
    from client_app.settings import ClientSettings, site_config_from_context
    from privacy import attacks
    from privacy.observe import observe, up_fields
    from privacy.scoring import make_prompt, score_prompt, train_shadow

    strategy = METHODS[method][0]
    run_config = run.run_config
    records = run.writer.records
    settings = ClientSettings.from_run_config(run_config)
    n = args.sites
    runtimes = {
        f"site-{i}": site_runtime(
            site_config_from_context({"partition-id": i, "num-partitions": n}, settings), settings
        )
        for i in range(n)
    }
    first = runtimes["site-0"]
    backbone, text_inputs, device = first.backbone, first.text_inputs, first.device
    num_classes = len(first.data.class_names)
    init = first.global_init.cpu().double().numpy()
    domains = true_domains(records, n, int(run_config["num-domains"]))
    obs = observe(strategy, run.grid.wire, init, run.views)

    # Every site's images in one block, so a prompt's text features are computed once and its
    # scores on any subset are a row selection.
    sites = sorted(runtimes, key=lambda s: int(s.split("-")[1]))
    blocks, owner, is_train = [], [], []
    for s in sites:
        rt = runtimes[s]
        for feats, train in ((rt.train_features, True), (rt.test_features, False)):
            blocks.append(feats)
            owner += [s] * feats.shape[0]
            is_train += [train] * feats.shape[0]
    all_feats = torch.cat(blocks).to(device)
    all_labels = torch.cat(
        [torch.cat([runtimes[s].train_labels, runtimes[s].test_labels]) for s in sites]
    ).to(device)
    owner_arr, train_arr = np.array(owner), np.array(is_train)

    def scores(prompt, use_local):
        return score_prompt(backbone, prompt, text_inputs, all_feats, all_labels, use_local)

    init_scores = scores(make_prompt(init, num_classes, device=device), False)
    uses_local = strategy != "promptfl"
    local_epochs = int(run_config["local-epochs"])
    shadow_epochs = args.shadow_epochs or max(1, min(20, local_epochs * args.rounds))
    rng = np.random.default_rng(args.seed)
    declared = {s.site_id: s.accuracy for s in records[-1].sites} if records else {}

    per_site: dict[str, dict] = {}
    stolen_acc: dict[str, dict[str, float]] = {}
    own_acc: dict[str, float] = {}
    for s in sites:
        so = obs.sites.get(s)
        if so is None or so.held is None:
            per_site[s] = {"error": "the server holds no prompt for this site"}
            continue
        rt = runtimes[s]
        mine, test = owner_arr == s, (owner_arr == s) & ~train_arr
        train = mine & train_arr
        # The site's own prompt: the P_G it last received (what it evaluates with) plus its
        # stored P_L; only the benchmark reads the site's store, never the attacker.
        stored = LocalPromptStore(rt.config.state_path).load(str(run_config["run-name"]))
        local = stored.local_ctx.numpy() if stored is not None and uses_local else None
        own = scores(make_prompt(so.held, num_classes, local, device), uses_local)
        own_acc[s] = float((own.probs[test].argmax(1) == all_labels.cpu().numpy()[test]).mean())

        # 1. prompt stealing: each candidate P_G with P_L = 0 on the site's held-out images.
        cand_scores = {
            name: scores(make_prompt(p, num_classes, device=device), False)
            for name, p in attacks.candidate_prompts(so).items()
        }
        labels_np = all_labels.cpu().numpy()
        stolen_acc[s] = {
            name: float((sc.probs[test].argmax(1) == labels_np[test]).mean())
            for name, sc in cand_scores.items()
        }
        attack_name = next(iter(cand_scores))
        attack = cand_scores[attack_name]

        # 2. class mix: predicted class frequencies on public images (every other site's).
        public = ~mine
        mix = attacks.implied_class_mix(attack.probs[public], init_scores.probs[public])
        true_mix = attacks.label_distribution(labels_np[train], num_classes)
        mix_corr = attacks.class_mix_correlation(mix, true_mix)

        # 3. membership: the site's training images against its held-out ones; the threshold
        # is calibrated on a shadow prompt trained on same-domain images of other sites.
        auc_view = attacks.membership_auc(attack.losses[train], attack.losses[test])
        auc_full = attacks.membership_auc(own.losses[train], own.losses[test])
        pool = np.flatnonzero(
            (owner_arr != s) & np.array([domains[o] == domains[s] for o in owner_arr])
        )
        shadow = {}
        if pool.size >= 4:
            pool = rng.permutation(pool)
            half = min(pool.size // 2, int(train.sum()))
            s_in, s_out = pool[:half], pool[half : 2 * half]
            prompt = train_shadow(
                backbone,
                attacks.attack_prompt(so),
                num_classes,
                text_inputs,
                all_feats[s_in],
                all_labels[s_in],
                epochs=shadow_epochs,
                batch_size=int(run_config["batch-size"]),
                lr=float(run_config["learning-rate"]),
                seed=args.seed,
            )
            for key, use_local, target in (("view", False, attack), ("full", True, own)):
                sh = scores(prompt, use_local)
                threshold = attacks.calibrate_loss_threshold(sh.losses[s_in], sh.losses[s_out])
                shadow[key] = attacks.membership_advantage(
                    target.losses[train], target.losses[test], threshold
                )
        per_site[s] = {
            "domain": domains[s],
            "declared_accuracy": declared.get(s),
            "own_prompt_accuracy": own_acc[s],
            "stolen_accuracy": stolen_acc[s],
            "attack_candidate": attack_name,
            "class_mix_correlation": mix_corr,
            "membership_auc": auc_view,
            "membership_auc_full_prompt": auc_full,
            "membership_advantage": shadow.get("view"),
            "membership_advantage_full_prompt": shadow.get("full"),
        }

    # 4. domain inference: the server's clusters, or k-means on the updates it saw.
    if obs.assignment:
        grouping, grouping_source = obs.assignment, "cluster assignment"
    else:
        updates = {s: so.update for s, so in obs.sites.items() if so.update is not None}
        k = min(int(run_config["num-domains"]), n)
        grouping = attacks.kmeans_assignment(updates, k, seed=args.seed)
        grouping_source = f"k-means (k={k}) on uploaded updates"
    ok = [v for v in per_site.values() if "error" not in v]

    def mean(key):
        return attacks.mean_finite([v[key] for v in ok])

    result = {
        **attacks.stealing_summary(stolen_acc, own_acc),
        "class_mix_correlation": mean("class_mix_correlation"),
        "membership_auc": mean("membership_auc"),
        "membership_auc_full_prompt": mean("membership_auc_full_prompt"),
        "membership_advantage": mean("membership_advantage"),
        "membership_advantage_full_prompt": mean("membership_advantage_full_prompt"),
        "domain_ari": attacks.domain_ari(grouping, domains) if grouping else None,
        "domain_grouping": grouping,
        "domain_grouping_source": grouping_source,
        "mean_personalized_accuracy": records[-1].mean_accuracy if records else None,
        "epsilon": _epsilon(records),
        "own_vs_declared_max_abs_diff": max(
            (
                abs(v["own_prompt_accuracy"] - v["declared_accuracy"])
                for v in ok
                if v.get("declared_accuracy") is not None
            ),
            default=None,
        ),
        "rounds_completed": len(records),
        # A skipped round (too few shares, nothing decoded) left the prompts as they were: the
        # figures of a run whose every round was skipped describe the initial prompt only.
        "rounds_skipped": {
            str(r.server_round): r.extra["skipped"] for r in records if r.extra.get("skipped")
        },
        "shadow_epochs": shadow_epochs,
        "per_site": per_site,
        "server_received_fields": up_fields(run.grid.wire),
    }
    return result


def write_table(path: Path, results: dict[str, dict], command: str) -> None:
    """A markdown table, one row per method."""
    cols = METRICS
    lines = [
        f"Command: `{command}`",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for method, res in results.items():
        if "error" in res:
            lines.append(f"| {method} | error: {res['error']} |" + " |" * (len(cols) - 1))
            continue
        cells = []
        for c in cols:
            v = res.get(c)
            cells.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, results: dict[str, dict]) -> None:
    """Grouped bars: one group per figure, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in METRICS if c != "epsilon"]
    methods = [m for m, r in results.items() if "error" not in r]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(cols))
    for j, m in enumerate(methods):
        values = [results[m].get(c) for c in cols]
        values = [np.nan if v is None else v for v in values]
        ax.bar(x + (j - (len(methods) - 1) / 2) * width, values, width, label=m)
    ax.set_xticks(x, [c.replace("_", "\n") for c in cols], fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax.set_ylim(-0.2, 1.05)
    ax.set_title("What a curious server infers, per method (higher: more leaked; AUC 0.5 = chance)")
    ax.legend(fontsize=8, ncol=max(1, len(methods)))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _view_dump(run) -> list[dict]:
    return [_clean(asdict(v)) if is_dataclass(v) else repr(v) for v in run.views]


def _run_in_processes(argv: list[str], args: argparse.Namespace, out_dir: Path) -> dict:
    """Each method in its own process (``--jobs``); their results, or the error of each."""
    import subprocess
    import tempfile

    # Drop --methods/--jobs/--out from the caller's arguments; each child gets its own.
    base, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--methods", "--jobs", "--out"):
            skip = True
            continue
        if item.split("=", 1)[0] in ("--methods", "--jobs", "--out"):
            continue
        base.append(item)
    parts = Path(tempfile.mkdtemp(prefix="privacy-", dir=out_dir))
    pending = list(args.methods)
    running: dict[str, subprocess.Popen] = {}
    results: dict[str, dict] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            method = pending.pop(0)
            cmd = [sys.executable, "-m", "benchmarks.privacy", *base, "--methods", method]
            cmd += ["--out", str(parts / f"{method}.json")]
            log = (parts / f"{method}.log").open("w")
            running[method] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            print(f"[privacy] {method}: started (log {parts / f'{method}.log'})", file=sys.stderr)
        time.sleep(2)
        for method, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[method]
            part = parts / f"{method}.json"
            if proc.returncode == 0 and part.is_file():
                results[method] = json.loads(part.read_text())["methods"][method]
            else:
                results[method] = {
                    "error": f"process exited with {proc.returncode}; see {parts / f'{method}.log'}"
                }
            print(f"[privacy] {method}: done", file=sys.stderr)
    return {m: results[m] for m in args.methods}


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.federation import run_federation

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    state_root = Path(args.state_root).expanduser() / args.dataset
    out = Path(args.out).expanduser() if args.out else None
    out_dir = out.parent if out else state_root / "runs"
    command = "python -m benchmarks.privacy " + " ".join(argv)
    results: dict[str, dict] = {}
    if args.jobs > 1 and len(args.methods) > 1:
        out_dir.mkdir(parents=True, exist_ok=True)
        results = _run_in_processes(argv, args, out_dir)
    for method in args.methods if not results else []:
        overrides = method_overrides(method, args, out_dir, state_root)
        start = time.perf_counter()
        print(f"[privacy] {method}: federation of {args.sites} sites", file=sys.stderr)
        try:
            run = run_federation(
                args.sites, overrides, echo=lambda line: print(line, file=sys.stderr)
            )
        except Exception as exc:  # noqa: BLE001 - a failed method is reported, the rest run
            results[method] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            print(f"[privacy] {method}: run failed: {results[method]['error']}", file=sys.stderr)
            continue
        federation_seconds = time.perf_counter() - start
        try:
            res = attack_run(run, method, args)
        except Exception as exc:  # noqa: BLE001 - keep the other methods' figures
            res = {"error": f"attacks failed: {type(exc).__name__}: {exc}".splitlines()[0]}
        res["seconds_federation"] = federation_seconds
        res["seconds_attacks"] = time.perf_counter() - start - federation_seconds
        if out is not None:
            view_path = out.with_name(f"{out.stem}.{method}.view.json")
            view_path.parent.mkdir(parents=True, exist_ok=True)
            view_path.write_text(
                json.dumps(
                    {
                        "server_received_fields": res.get("server_received_fields"),
                        "server_views": _view_dump(run),
                    }
                )
            )
        results[method] = res
        del run
    result = _clean(
        {
            "dataset": args.dataset,
            "sites": args.sites,
            "rounds": args.rounds,
            "seed": args.seed,
            "command": command,
            "methods": results,
        }
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        write_table(out.with_suffix(".md"), result["methods"], command)
        write_plot(out.with_suffix(".png"), result["methods"])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
