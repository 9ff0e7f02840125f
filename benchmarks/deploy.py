"""Latency of the real deployment: a TLS-secured loopback federation running the SecFPP app.

    python -m benchmarks.deploy --rounds 3 --out FILE

Starts the same federation as ``tests/deploy/test_deployment.py`` (``deploy.local_federation``:
SuperLink with TLS and SuperNode authentication, one SuperNode per site with its own site YAML,
registered), runs ``promptfl`` and then ``secfpp`` (when the strategy registry has it) for
``--rounds`` rounds each, and prints one JSON object as its last line:

- ``seconds_per_round_<strategy>``: mean wall time of a round as the ServerApp records it in
  ``results.json`` (null when the strategy does not exist yet);
- ``exchanges_per_round_<strategy>``: message exchanges (one message to every sampled site and
  its replies) per round, counted from the replies the SuperLink logs, key setup included;
- ``seconds_per_exchange``: PromptFL's round time divided by its exchanges per round;
- ``secfpp_over_promptfl``: the ratio of the two round times.

Each message to a site runs in a fresh ``flwr-clientapp`` process, so an exchange costs a process
start plus the handler's imports; that is what this measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from deploy.credentials import generate
from deploy.local_federation import LocalFederation

REPO = Path(__file__).resolve().parents[1]
_REPLY = re.compile(r"Push replies from node_id=(\d+)")


def _replies(log_path: Path) -> int:
    try:
        return len(_REPLY.findall(log_path.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return 0


def _available_strategies(app_dir: Path) -> set[str]:
    sys.path.insert(0, str(app_dir))
    try:
        from strategies.registry import STRATEGIES

        return set(STRATEGIES)
    finally:
        sys.path.remove(str(app_dir))


def _schema_has_site_identities(app_dir: Path) -> bool:
    sys.path.insert(0, str(app_dir))
    try:
        from client_app.site_config import SiteConfig

        return "site_identities" in SiteConfig.__dataclass_fields__
    finally:
        sys.path.remove(str(app_dir))


def site_data(index: int, num_sites: int, max_images: int) -> dict:
    """Embedded digits, one domain per site (at most four)."""
    return {
        "source": "digits-domains",
        "partition-id": index,
        "num-partitions": num_sites,
        "num-domains": min(num_sites, 4),
        "max-images": max_images,
    }


def measure(args: argparse.Namespace) -> dict:
    app_dir = Path(args.app).resolve()
    strategies = [s for s in args.strategies.split(",") if s]
    known = _available_strategies(app_dir)
    sites = [f"site-{i}" for i in range(args.sites)]
    out: dict = {
        "rounds": args.rounds,
        "sites": args.sites,
        "max_images_per_site": args.max_images,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "tls": True,
        "supernode_auth": True,
        "secure_k": args.secure_k,
        "secure_t": args.secure_t,
    }
    with tempfile.TemporaryDirectory(prefix="secfpp-bench-deploy-") as tmp:
        work = Path(tmp)
        creds = generate(work / "credentials", sites, ["127.0.0.1"])
        started = time.monotonic()
        with LocalFederation(work / "federation", tls_dir=creds.root, supernode_auth=True) as fed:
            for i, site in enumerate(sites):
                fed.add_site(
                    site,
                    site_data(i, args.sites, args.max_images),
                    credentials=creds.root,
                    site_identities=_schema_has_site_identities(app_dir),
                )
            out["startup_seconds"] = round(time.monotonic() - started, 2)
            log = fed.superlink.log_path
            for strategy in strategies:
                key = strategy.replace("-", "_")
                if strategy not in known:
                    out[f"seconds_per_round_{key}"] = None
                    out[f"exchanges_per_round_{key}"] = None
                    continue
                config = {
                    "strategy": strategy,
                    "num-server-rounds": args.rounds,
                    "local-epochs": args.local_epochs,
                    "min-sites": args.sites,
                    "output-dir": str(work / "outputs"),
                    "run-name": f"bench-{strategy}",
                    "device": "cpu",
                }
                if strategy == "secfpp":
                    config["site-identities"] = str(creds.identities)
                    config["secure-k"] = args.secure_k
                    config["secure-t"] = args.secure_t
                before = _replies(log)
                result = fed.run(app_dir, config, timeout=args.timeout)
                if not result.ok:
                    raise SystemExit(f"{strategy} run failed:\n{result.describe()}")
                replies = _replies(log) - before
                results = json.loads(
                    (work / "outputs" / f"bench-{strategy}" / "results.json").read_text()
                )
                seconds = [float(r["seconds"]) for r in results["rounds"]]
                out[f"seconds_per_round_{key}"] = round(statistics.fmean(seconds), 2)
                out[f"seconds_per_round_{key}_all"] = [round(s, 2) for s in seconds]
                out[f"exchanges_per_round_{key}"] = round(replies / args.sites / args.rounds, 2)
                out[f"run_seconds_{key}"] = round(result.seconds, 2)
        out["leftover_processes"] = len(fed.leftovers)
    promptfl = out.get("seconds_per_round_promptfl")
    exchanges = out.get("exchanges_per_round_promptfl")
    out["seconds_per_exchange"] = round(promptfl / exchanges, 2) if promptfl and exchanges else None
    secfpp = out.get("seconds_per_round_secfpp")
    out["secfpp_over_promptfl"] = round(secfpp / promptfl, 3) if secfpp and promptfl else None
    out.setdefault("seconds_per_round_secfpp", None)
    out.setdefault("exchanges_per_round_secfpp", None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--max-images", type=int, default=120, help="images per site")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--strategies", default="promptfl,secfpp")
    parser.add_argument("--secure-k", type=int, default=1, help="SecFPP data slices K")
    parser.add_argument(
        "--secure-t",
        type=int,
        default=1,
        help="SecFPP colluders T (degree-2 decoding needs 2(K+T-1)+1 <= sites)",
    )
    parser.add_argument("--app", default=str(REPO), help="the Flower app folder (`flwr run`)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    args = parser.parse_args(argv)
    result = measure(args)
    line = json.dumps(result, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
