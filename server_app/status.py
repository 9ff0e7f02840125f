"""Tell a script or CI how a run ended: ``python -m server_app.status <results folder>``.

``flwr run --stream`` exits with status 0 even when the ServerApp fails, so a script cannot
rely on it. This command reads the run's ``results.json`` (written by the ServerApp after
every round and on every exit path), prints one line, and exits with:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     ``completed``
1     ``failed`` (the line carries the error message)
2     ``stopped`` from outside (``flwr stop``, Ctrl-C)
3     still ``running`` (after ``--wait`` seconds, if given), or killed without a word
4     no readable ``results.json``, or it belongs to another run (``--run-id``)
====  ==========================================================================

With ``--run-id ID --connection NAME`` a file that cannot tell (still ``running`` because the
ServerApp was killed, e.g. by ``flwr stop`` in simulation; or missing) is settled by asking
Flower (``flwr ls --run-id ID NAME --format json``: ``finished:failed`` and so on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_CODES = {"completed": 0, "failed": 1, "stopped": 2, "running": 3}
#: Flower's final run states (``flwr ls --format json``) in our terms.
FLOWER_STATES = {
    "finished:completed": "completed",
    "finished:failed": "failed",
    "finished:stopped": "stopped",
}
#: No results file, an unreadable one, or one written by another run.
EXIT_NO_RESULTS = 4


def read_status(path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """Load ``results.json`` from a results folder (or the file itself).

    Returns
    -------
    tuple of dict or None, and str
        The document, or ``None`` with the reason it could not be read.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        return None, f"no results file at {path}"
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"{path}: not readable as JSON ({exc})"


def describe(doc: dict[str, Any]) -> str:
    """One line: status, rounds, final accuracy or error."""
    status = doc.get("status", "unknown")
    parts = [status, f"strategy {doc.get('strategy')}", f"last round {doc.get('last_round')}"]
    if doc.get("final_mean_accuracy") is not None:
        parts.append(f"final mean accuracy {doc['final_mean_accuracy']:.4f}")
    resumes = [s for s in doc.get("segments", []) if s.get("resumed_after_round") is not None]
    if resumes:
        parts.append(
            "resumed after round " + ", ".join(str(s["resumed_after_round"]) for s in resumes)
        )
    if doc.get("error"):
        parts.append(f"error: {doc['error']}")
    return "; ".join(parts)


def flower_run_status(run_id: int, connection: str) -> str | None:
    """Flower's own status of a run (``finished:failed`` etc.), or ``None`` if unavailable.

    Used when ``results.json`` cannot say: a ServerApp killed by ``flwr stop`` in simulation,
    or a run refused before it could write anything.
    """
    import subprocess

    argv = ["flwr", "ls", "--run-id", str(run_id), connection, "--format", "json"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        runs = json.loads(done.stdout[done.stdout.index("{") :]).get("runs", [])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    return str(runs[0].get("status")) if runs else None


def _run_ids(doc: dict[str, Any]) -> list[int]:
    return [s["run_id"] for s in doc.get("segments", []) if s.get("run_id") is not None]


def main(argv: list[str] | None = None) -> int:
    """Print the run's status and return the exit code (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m server_app.status",
        description="Print a SecFPP run's status from its results.json; exit 0 only if it "
        "completed (1 failed, 2 stopped, 3 running, 4 no results).",
    )
    parser.add_argument("results", help="<output-dir>/<run-name> folder, or its results.json")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="poll while the status is 'running', for at most SECONDS",
    )
    parser.add_argument(
        "--run-id",
        type=int,
        default=None,
        help="Flower run id (printed by `flwr run`): fail with 4 if the file was not written "
        "by this run (e.g. it was refused before it could write anything)",
    )
    parser.add_argument(
        "--connection",
        default=None,
        help="with --run-id: ask this flwr connection (e.g. 'local') for the run's final state "
        "when results.json cannot tell (still 'running', missing, or another run's)",
    )
    parser.add_argument("--json", action="store_true", help="print the whole document")
    args = parser.parse_args(argv)

    deadline = time.monotonic() + max(args.wait, 0.0)
    while True:
        doc, problem = read_status(args.results)
        if args.run_id is not None and doc is not None and args.run_id not in _run_ids(doc):
            problem = f"the file was written by run(s) {_run_ids(doc)}, not {args.run_id}"
            doc = None
        if doc is not None and doc.get("status") != "running":
            break
        # The file cannot tell (missing, another run's, or 'running' after a kill): Flower can.
        if args.run_id is not None and args.connection:
            flower = flower_run_status(args.run_id, args.connection)
            if flower in FLOWER_STATES:
                said = problem if doc is None else "results.json still says running"
                print(f"{FLOWER_STATES[flower]} (Flower: {flower}; {said})")
                return EXIT_CODES[FLOWER_STATES[flower]]
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))
    if doc is None:
        print(f"no results: {problem}")
        return EXIT_NO_RESULTS
    print(json.dumps(doc, indent=2) if args.json else describe(doc))
    return EXIT_CODES.get(doc.get("status"), EXIT_NO_RESULTS)


if __name__ == "__main__":
    sys.exit(main())
