"""A large simulated federation: ``flwr run .`` with N SuperNodes, time per round and peak memory.

    python -m benchmarks.scale --sites 1000 --rounds 3 --out FILE

Starts a simulation SuperLink on 127.0.0.1 with a private ``FLWR_HOME``
(``deploy.local_federation``; the connection's options set ``num-supernodes`` and the Ray
backend's resources: ``--cpus`` CPUs in all, one per ClientApp), submits ``flwr run`` of this app
with SecFPP's defaults on small sites (``sim-max-images`` images each) and samples, once a second,
the resident memory of every process the federation started (SuperLink, SuperExec, ServerApp,
Ray and its workers, found through the marker they inherit). Prints one JSON object as its last
line:

- ``seconds_per_round``: each round's wall time as the ServerApp records it in ``results.json``
  (round 1 includes every site's key setup and first feature extraction);
- ``seconds_total``: from ``flwr run`` to the run's end, Ray's start included;
- ``peak_rss_bytes``: the largest sum of resident memory over the federation's processes
  (shared pages are counted once per process, so this is an upper bound);
- ``status`` (``failed`` with the reason in ``error`` when the run passed ``--timeout`` or the
  SuperLink died: the figures then cover the rounds that completed, and the exit status is 1),
  ``mean_accuracy_per_round``, ``num_clusters_per_round``, ``committee_size`` and
  the site count that took part in each round (``senders_per_round``).

Only 127.0.0.1 is used; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

from deploy.local_federation import FederationError, LocalFederation, marked_processes

REPO = Path(__file__).resolve().parents[1]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class MemorySampler:
    """Sum of resident memory over a federation's processes, sampled in a thread."""

    def __init__(self, marker: str, interval: float = 1.0) -> None:
        self.marker = marker
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(_rss(pid) for pid, _ in marked_processes(self.marker))
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_config(args: argparse.Namespace, work: Path) -> dict:
    """SecFPP at the app's defaults, on ``--sites`` small sites."""
    return {
        "strategy": "secfpp",
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "dataset": args.dataset,
        "sim-max-images": args.max_images,
        "min-sites": args.sites,
        "device": "cpu",
        "seed": args.seed,
        "output-dir": str(work / "outputs"),
        "run-name": "scale",
        "sim-state-root": str(work / "sites"),
        "site-wait-timeout": 0.0,
    }


def measure(args: argparse.Namespace) -> dict:
    """Run the federation once; return the figures of the module docstring."""
    with tempfile.TemporaryDirectory(prefix="secfpp-bench-scale-") as tmp:
        work = Path(args.workdir or tmp)
        options = {
            "num-supernodes": args.sites,
            "backend.client-resources.num-cpus": 1,
            "backend.init-args.num-cpus": args.cpus,
        }
        fed = LocalFederation(work / "federation", simulation=True, simulation_options=options)
        config = run_config(args, work)
        error = None
        with fed:
            with MemorySampler(fed.marker) as memory:
                started = time.monotonic()
                try:
                    status = fed.run(REPO, config, timeout=args.timeout).status
                except FederationError as exc:
                    # A run past --timeout (stopped) or a dead SuperLink: still report the
                    # memory sampled and the rounds that completed, which is what was paid for.
                    status, error = "failed", str(exc).splitlines()[0]
                seconds_total = time.monotonic() - started
        results = work / "outputs" / "scale" / "results.json"
        doc = json.loads(results.read_text()) if results.is_file() else {"rounds": []}
        rounds = [r for r in doc["rounds"] if not r.get("superseded")]
        return {
            "sites": args.sites,
            "rounds": args.rounds,
            "dataset": args.dataset,
            "max_images_per_site": args.max_images,
            "cpus": args.cpus,
            "machine_cpus": os.cpu_count(),
            "machine": platform.machine(),
            "status": status,
            "error": error,
            "seconds_total": round(seconds_total, 1),
            "seconds_per_round": [round(float(r["seconds"]), 1) for r in rounds],
            "peak_rss_bytes": memory.peak,
            "mean_accuracy_per_round": [r["mean_accuracy"] for r in rounds],
            "num_clusters_per_round": [r["extra"].get("num_clusters") for r in rounds],
            "senders_per_round": [len(r["extra"].get("senders", [])) for r in rounds],
            "committee_size": config_committee(args.sites),
        }


def config_committee(sites: int) -> int:
    """The automatic committee size at the app's default ``secure-k=1``, ``secure-t=2``."""
    from secpc.committee import committee_size

    return committee_size(sites, quadratic_threshold=2 * (1 + 2 - 1) + 1, requested=0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=1000, help="simulated SuperNodes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dataset", default="fashion-mnist-domains", help="embedded data source of the sites"
    )
    parser.add_argument("--max-images", type=int, default=20, help="images per site")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs Ray may use (one per ClientApp)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds for the run")
    parser.add_argument("--workdir", help="keep the federation's files here (default: temporary)")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    figures = measure(args)
    line = json.dumps(figures)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)
    sys.stdout.flush()
    if figures["error"]:
        raise SystemExit(f"benchmarks.scale: {figures['error']}")
    return figures


if __name__ == "__main__":
    main()
