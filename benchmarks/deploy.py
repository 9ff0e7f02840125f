"""Latency of the real deployment: a TLS-secured loopback federation running the SecFPP app.

    python -m benchmarks.deploy --rounds 3 --sites 6 --secure-t 2 --out FILE

Starts the same federation as ``tests/deploy/test_deployment.py`` (``deploy.local_federation``:
SuperLink with TLS and SuperNode authentication, one SuperNode per site with its own site YAML,
registered, and by default each site's worker and prefork SuperExec beside its SuperNode, as
``deploy/run-supernode.sh`` starts them; ``--no-worker``/``--no-prefork`` leave them out), runs ``promptfl`` and then
``secfpp`` (when the strategy registry has it) for ``--rounds`` rounds each, then the same
SecFPP run config on the in-process grid (``server_app.inprocess_grid``: the same site YAMLs,
data, seed and rounds, one process, sites one after another, runtimes loaded before the first
round), and prints one JSON object as its last line:

- ``seconds_per_round_<strategy>``: mean wall time of a round as the ServerApp records it in
  ``results.json`` (null when the strategy does not exist yet);
- ``exchanges_per_round_<strategy>``: message exchanges (one message to every sampled site and
  its replies) per round, counted from the replies the SuperLink logs, key setup included;
- ``seconds_per_exchange``: PromptFL's round time divided by its exchanges per round;
- ``secfpp_over_promptfl``: the ratio of the two round times;
- ``seconds_per_round_secfpp_inprocess``: mean round time of the in-process SecFPP run;
- ``deployed_over_inprocess_secfpp``: deployed SecFPP round time over the in-process one (what
  deployment itself costs: processes, TLS, Flower's polling; null without ``secfpp``);
- ``worker``, ``prefork``: whether the sites' workers and prefork SuperExecs ran.

Each message to a site runs in a process of its own. With Flower's SuperExec (``--no-prefork``)
that is a fresh ``flwr-clientapp`` process, so an exchange costs a process start, Flower's
imports, the FAB install and the app's imports; the prefork SuperExec forks it from a process
that has Flower's runtime imported already. Without a worker, train and evaluate also import
torch and load the backbone, the site's data and its cached features every time.
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


def inprocess_rounds(config: dict, site_yamls: list[Path]) -> list[float]:
    """Round times of ``config`` on the in-process grid over the deployed sites' YAMLs.

    Run after the federation stopped, under another run name (so no private prompt of the
    deployed run is picked up), with each site's runtime (backbone, data, cached features)
    loaded before the first round, as the deployed sites' workers have them.
    """
    from benchmarks.federation import run_federation
    from client_app.runtime import site_runtime
    from client_app.settings import ClientSettings, site_config_from_context

    overrides = {**config, "run-name": f"{config['run-name']}-inprocess"}
    node_configs = [{"site-config": str(path)} for path in site_yamls]
    settings = ClientSettings.from_run_config(overrides)
    for node_config in node_configs:
        site_runtime(site_config_from_context(node_config, settings), settings)
    previous = os.environ.get("SECFPP_WORKER")
    os.environ["SECFPP_WORKER"] = "off"  # in-process means in-process, worker or not
    try:
        run_federation(
            len(node_configs),
            overrides,
            node_configs=node_configs,
            echo=lambda *a, **k: print(*a, file=sys.stderr, **k),
        )
    finally:
        if previous is None:
            os.environ.pop("SECFPP_WORKER", None)
        else:
            os.environ["SECFPP_WORKER"] = previous
    results = json.loads(
        (Path(config["output-dir"]) / overrides["run-name"] / "results.json").read_text()
    )
    return [round(float(r["seconds"]), 2) for r in results["rounds"]]


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
        "worker": args.worker,
        "prefork": args.prefork,
    }
    secfpp_config: dict | None = None
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
                    worker=args.worker,
                    prefork=args.prefork,
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
                    secfpp_config = dict(config)
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
        if secfpp_config is not None and args.inprocess:
            yamls = [work / "federation" / "sites" / site / "site.yaml" for site in sites]
            out["seconds_per_round_secfpp_inprocess_all"] = inprocess_rounds(secfpp_config, yamls)
            out["seconds_per_round_secfpp_inprocess"] = round(
                statistics.fmean(out["seconds_per_round_secfpp_inprocess_all"]), 2
            )
    promptfl = out.get("seconds_per_round_promptfl")
    exchanges = out.get("exchanges_per_round_promptfl")
    out["seconds_per_exchange"] = round(promptfl / exchanges, 2) if promptfl and exchanges else None
    secfpp = out.get("seconds_per_round_secfpp")
    out["secfpp_over_promptfl"] = round(secfpp / promptfl, 3) if secfpp and promptfl else None
    inprocess = out.get("seconds_per_round_secfpp_inprocess")
    out["deployed_over_inprocess_secfpp"] = (
        round(secfpp / inprocess, 3) if secfpp and inprocess else None
    )
    out.setdefault("seconds_per_round_secfpp", None)
    out.setdefault("seconds_per_round_secfpp_inprocess", None)
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
    parser.add_argument(
        "--worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start each site's worker beside its SuperNode (--no-worker: without)",
    )
    parser.add_argument(
        "--prefork",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each SuperNode with --isolation process and the site's prefork SuperExec "
        "(deploy/prefork_superexec.py), as deploy/run-supernode.sh does (--no-prefork: "
        "Flower's SuperExec, one new process per message)",
    )
    parser.add_argument(
        "--inprocess",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run SecFPP on the in-process grid (deployed_over_inprocess_secfpp)",
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
