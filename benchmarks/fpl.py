"""Federated prompt learning benchmark: one method, one data set, in process.

Example::

    python -m benchmarks.fpl --method hierarchical --dataset digits-domains \
        --sites 12 --rounds 10 --seed 0 --out outputs/bench/hierarchical.json

Prints the per-round table while it runs and one JSON object as its last line (also written
to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.federation import run_federation  # noqa: E402
from strategies.registry import STRATEGIES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fpl", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--method", required=True, choices=sorted(STRATEGIES))
    parser.add_argument(
        "--dataset",
        default="digits-domains",
        choices=["digits-domains", "fashion-mnist-domains", "digits-label-swap"],
    )
    parser.add_argument("--sites", type=int, default=12, help="number of sites (default 12)")
    parser.add_argument("--rounds", type=int, default=10, help="training rounds (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local-epochs", type=int, default=None, help="default: pyproject")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: pyproject")
    parser.add_argument("--batch-size", type=int, default=None, help="default: pyproject")
    parser.add_argument("--n-ctx", type=int, default=None, help="default: pyproject")
    parser.add_argument("--backbone", default=None, help="default: pyproject (two-tower)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key (repeatable); VALUE is parsed as JSON when it can be",
    )
    parser.add_argument(
        "--state-root",
        default="~/.cache/secfpp/bench",
        help="parent of the sites' state folders (image features are cached there)",
    )
    parser.add_argument("--out", default=None, help="write the JSON result here too")
    return parser.parse_args(argv)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def true_domains(records, num_sites: int, num_domains: int) -> dict[str, int]:
    """Each simulated site's domain, from the simulation's own partition (never from a site)."""
    from client_app.data.partition import domain_of

    num_domains = min(num_domains, num_sites)
    return {f"site-{i}": domain_of(i, num_domains) for i in range(num_sites)}


def cost_summary(run, records, sites: int) -> dict:
    """Exchanges, bytes both ways and seconds of the whole run, from the one meter."""
    totals = run.meter.totals()
    trained = max(1, sum(1 for r in records if r.train_metrics or r.extra.get("assignment")))
    rounds = max(1, len(records))
    return {
        "exchanges_total": totals.exchanges,
        "exchanges_per_round": [r.cost.get("exchanges") for r in records],
        "bytes_up_per_site_round": totals.bytes_up / (sites * rounds),
        "bytes_down_per_site_round": totals.bytes_down / (sites * rounds),
        "seconds_train_per_site_round": totals.seconds_train_site / (sites * trained),
        "seconds_crypto_site_per_site_round": totals.seconds_crypto_site / (sites * trained),
        "seconds_crypto_server_per_round": totals.seconds_crypto_server / trained,
    }


def clustering_summary(records, domains: dict[str, int]) -> dict:
    """Assignments per round and their agreement with the true domains."""
    from sklearn.metrics import adjusted_rand_score

    assignments = [r.extra.get("assignment") for r in records]
    ari = [
        adjusted_rand_score([domains[s] for s in sorted(a)], [a[s] for s in sorted(a)])
        if a
        else None
        for a in assignments
    ]
    return {
        "assignments": assignments,
        "num_clusters_per_round": [r.extra.get("num_clusters") for r in records],
        "adjusted_rand_index_vs_domains_per_round": ari,
        "adjusted_rand_index_vs_domains": ari[-1] if ari else None,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    state_root = Path(args.state_root).expanduser() / args.dataset
    overrides = {
        "strategy": args.method,
        "num-server-rounds": args.rounds,
        "seed": args.seed,
        "dataset": args.dataset,
        "run-name": f"bench-{args.method}-{args.dataset}-s{args.sites}-seed{args.seed}",
        "sim-state-root": str(state_root),
        "output-dir": str(Path(args.out).expanduser().parent if args.out else state_root / "runs"),
        "device": "auto",
    }
    for key, value in (
        ("local-epochs", args.local_epochs),
        ("learning-rate", args.learning_rate),
        ("batch-size", args.batch_size),
        ("n-ctx", args.n_ctx),
        ("backbone", args.backbone),
    ):
        if value is not None:
            overrides[key] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set: expected KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)

    start = time.perf_counter()
    run = run_federation(args.sites, overrides, echo=lambda line: print(line, file=sys.stderr))
    seconds = time.perf_counter() - start
    records = run.writer.records
    final = records[-1]
    domains = true_domains(records, args.sites, int(run.run_config["num-domains"]))
    result = {
        "method": args.method,
        "dataset": args.dataset,
        "sites": args.sites,
        "rounds": len(records),
        "seed": args.seed,
        "mean_personalized_accuracy": final.mean_accuracy,
        "worst_site_accuracy": final.worst_accuracy,
        "per_site_accuracy": {s.site_id: s.accuracy for s in final.sites},
        "per_site_domain": {s.site_id: domains.get(s.site_id) for s in final.sites},
        "mean_accuracy_per_round": [r.mean_accuracy for r in records],
        "seconds_total": seconds,
        **cost_summary(run, records, args.sites),
        "run_config": {k: v for k, v in run.run_config.items()},
    }
    result["crypto_over_train"] = (
        (result["seconds_crypto_site_per_site_round"] + result["seconds_crypto_server_per_round"])
        / result["seconds_train_per_site_round"]
        if result["seconds_train_per_site_round"]
        else None
    )
    if args.method in ("secfpp", "clustered"):
        result.update(clustering_summary(records, domains))
    if args.out:
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
