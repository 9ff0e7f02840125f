"""Per-round table, ``results.json`` and an accuracy plot for one run, kept across failures.

``results.json`` is rewritten atomically (and the plot redrawn) after every round record the
strategy publishes, so a crash, a ``flwr stop`` or a lost SuperLink never costs a finished
round. Its top-level ``status`` says how the run stands:

``running``
    the ServerApp is working (or was killed without a chance to write; see ``updated``);
``completed``
    every round ran;
``failed``
    the ServerApp stopped on an error (``error`` holds the message);
``stopped``
    the run was stopped from outside (``flwr stop``, Ctrl-C).

A resumed run (``resume=true``) continues the same file: earlier rows are kept, including
skipped or failed rounds that the resumed run does again, and each start is one entry of
``segments``. ``python -m server_app.status <folder>`` reads the file for scripts.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from strategies.base import RoundRecord
from strategies.results_io import write_json_atomic

log = logging.getLogger("secfpp.server")

#: Values of the top-level ``status`` field.
STATUSES = ("running", "completed", "failed", "stopped")

_COLUMNS = (
    ("round", 5),
    ("mean acc", 8),
    ("worst acc", 9),
    ("sites", 5),
    ("train loss", 10),
    ("seconds", 7),
    ("clusters", 8),
)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ResultsWriter:
    """Prints one table row per round and keeps ``results.json`` and the plot current.

    Parameters
    ----------
    folder : str or Path
        ``<output-dir>/<run-name>``; created if missing.
    header : dict
        Run-level facts stored at the top of ``results.json`` (strategy, settings).
    echo : callable
        Where table lines go (the Flower log in a ServerApp, ``print`` elsewhere).
    run_id : int, optional
        Flower's run id, stored with the segment so a script can tell this run's file from an
        older one (``python -m server_app.status --run-id``).
    """

    def __init__(
        self, folder: str | Path, header: dict[str, Any], echo=None, run_id: int | None = None
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.header = header
        self.run_id = run_id
        self.records: list[RoundRecord] = []
        # Rows written by earlier segments of a resumed run, kept verbatim.
        self.kept_rounds: list[dict] = []
        self.segments: list[dict] = []
        self.echo = echo or (lambda line: log.info("%s", line))

    @property
    def results_path(self) -> Path:
        """The JSON file."""
        return self.folder / "results.json"

    @property
    def plot_path(self) -> Path:
        """The PNG plot."""
        return self.folder / "accuracy.png"

    @property
    def segment(self) -> dict:
        """The current run's entry of ``segments`` (started on first use)."""
        if not self.segments:
            self.start()
        return self.segments[-1]

    @property
    def status(self) -> str:
        """The current top-level status."""
        return self.segment["status"]

    def start(self, resumed_after: int | None = None, continue_file: bool = False) -> None:
        """Open this run's segment and write the file with status ``running``.

        Parameters
        ----------
        resumed_after : int, optional
            Last completed round of the checkpoint this run resumes from.
        continue_file : bool
            Keep the rows and segments of an existing ``results.json`` (a resumed run).
            Without it the file starts afresh, as a new run of the same ``run-name`` does.
        """
        if continue_file or resumed_after is not None:
            self._load_previous()
        self.segments.append(
            {
                "segment": len(self.segments),
                "started": _now(),
                "run_id": self.run_id,
                "resumed_after_round": resumed_after,
                "status": "running",
                "error": None,
            }
        )
        self._write(plot=bool(self.kept_rounds))

    def _load_previous(self) -> None:
        if not self.results_path.is_file():
            return
        try:
            previous = json.loads(self.results_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            # Atomic writes make this unlikely; refuse rather than overwrite a result.
            raise RuntimeError(
                f"cannot continue {self.results_path}: {exc}; move it aside and resume again"
            ) from exc
        self.kept_rounds = list(previous.get("rounds", []))
        self.segments = list(previous.get("segments", []))
        if not self.segments:
            # A file from before segments existed: all its rows were one segment.
            self.segments = [{"segment": 0, "status": previous.get("status", "unknown")}]
            for row in self.kept_rounds:
                row.setdefault("segment", 0)

    def resume_from(self, completed_round: int) -> None:
        """Continue the previous results of a run resumed after ``completed_round``."""
        self.start(resumed_after=completed_round)

    def unmeasured_round(self, server_round: int) -> RoundRecord | None:
        """A record for a kept round that has no evaluation yet, to be measured on resume.

        Parameters
        ----------
        server_round : int
            The round a resumed run continues after.

        Returns
        -------
        RoundRecord or None
            ``None`` when the latest kept row of ``server_round`` holds site evaluations;
            otherwise a record with that row's training facts (or none, when the row was never
            written) marked ``evaluation: measured after resume``.
        """
        rows = [r for r in self.kept_rounds if r["server_round"] == server_round]
        if rows and rows[-1].get("sites"):
            return None
        last = rows[-1] if rows else {}
        return RoundRecord(
            server_round=server_round,
            train_metrics=dict(last.get("train_metrics") or {}),
            seconds=float(last.get("seconds") or 0.0),
            extra={**(last.get("extra") or {}), "evaluation": "measured after resume"},
            cost=dict(last.get("cost") or {}),
        )

    def on_round(self, record: RoundRecord) -> None:
        """Print the round's row and rewrite the JSON file and the plot."""
        if not self.records:
            self.echo(" | ".join(f"{h:>{w}}" for h, w in _COLUMNS))
        self.records.append(record)
        loss = record.train_metrics.get("train-loss", float("nan"))
        row = (
            f"{record.server_round:>5}",
            f"{record.mean_accuracy:>8.4f}",
            f"{record.worst_accuracy:>9.4f}",
            f"{len(record.sites):>5}",
            f"{loss:>10.4f}",
            f"{record.seconds:>7.1f}",
            # SecFPP's clusters this round ("skipped" when the round changed nothing).
            f"{_clusters(record):>8}",
        )
        self.echo(" | ".join(row))
        self._write(plot=True)

    def rows(self) -> list[dict]:
        """Every round row of every segment, in the order written.

        A row is marked ``superseded`` when a later segment ran the same round again.
        """
        index = self.segment["segment"]
        rows = [dict(r) for r in self.kept_rounds]
        rows += [{**r.to_json(), "segment": index} for r in self.records]
        latest: dict[int, int] = {}
        for i, row in enumerate(rows):
            latest[row["server_round"]] = i
        for i, row in enumerate(rows):
            row["superseded"] = latest[row["server_round"]] != i
        return rows

    def payload(self) -> dict[str, Any]:
        """The ``results.json`` document."""
        rows = self.rows()
        current = [r for r in rows if not r["superseded"]]
        last = max(current, key=lambda r: r["server_round"]) if current else None
        done = self.status == "completed" and last is not None
        return {
            **self.header,
            "status": self.status,
            "error": self.segment["error"],
            "updated": _now(),
            "segments": self.segments,
            "rounds": rows,
            "last_round": last["server_round"] if last else None,
            # "final" only once the run completed: a failed run's last row may cover only
            # the sites that answered before the failure.
            "final_mean_accuracy": last["mean_accuracy"] if done else None,
            "final_worst_accuracy": last["worst_accuracy"] if done else None,
        }

    def _write(self, plot: bool) -> None:
        doc = self.payload()
        write_json_atomic(self.results_path, doc)
        if plot and doc["rounds"]:
            try:
                plot_accuracy(doc, self.plot_path)
            except Exception as exc:  # a plot is never worth losing the JSON or the run
                log.warning("accuracy plot not written: %s", exc)

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """Write the final JSON and plot with ``status`` (and the error message, if any)."""
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, got {status!r}")
        self.segment.update(status=status, error=error, ended=_now())
        self._write(plot=True)
        self.echo(f"results: {self.results_path} (status: {status})")

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` as the reason the run failed (``stopped`` for an outside stop).

        An outside stop reaches the ServerApp as Ctrl-C (``KeyboardInterrupt``), as Flower's
        signal handler exiting the ``flwr-serverapp`` process (``SystemExit``), or as the grid
        noticing the run was stopped (Flower's ``RunNotRunningException``).
        """
        stopped = isinstance(exc, KeyboardInterrupt | SystemExit) or type(exc).__name__ == (
            "RunNotRunningException"
        )
        message = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        self.finish("stopped" if stopped else "failed", message)


def _atomic_savefig(fig, path: Path, metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_accuracy(doc: dict[str, Any], path: Path) -> None:
    """Mean and worst-site accuracy per (real) round, resumes and superseded rows marked.

    Parameters
    ----------
    doc : dict
        A ``results.json`` document (:meth:`ResultsWriter.payload`).
    path : Path
        The PNG to (atomically) replace.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def value(x):
        return float("nan") if x is None else x

    rows = doc["rounds"]
    current = sorted((r for r in rows if not r.get("superseded")), key=lambda r: r["server_round"])
    old = [r for r in rows if r.get("superseded")]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    xs = [r["server_round"] for r in current]
    ax.plot(xs, [value(r["mean_accuracy"]) for r in current], marker="o", label="mean over sites")
    ax.plot(xs, [value(r["worst_accuracy"]) for r in current], marker="s", label="worst site")
    if old:
        ax.plot(
            [r["server_round"] for r in old],
            [value(r["mean_accuracy"]) for r in old],
            linestyle="none",
            marker="o",
            markerfacecolor="none",
            color="grey",
            label="mean, before resume (superseded)",
        )
    for seg in doc.get("segments", []):
        after = seg.get("resumed_after_round")
        if after is not None:
            ax.axvline(after + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                f"resumed after {after}",
                (after + 0.5, 0.02),
                rotation=90,
                fontsize=7,
                color="grey",
                ha="right",
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("personalized test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    strategy = str(doc.get("strategy", ""))
    status = doc.get("status", "")
    title = f"SecFPP: {strategy}" if strategy else "SecFPP"
    if status and status != "completed":
        title += f" ({status})"
    ax.set_title(title)
    fig.tight_layout()
    # PNG text chunks say what is drawn, so a reader (or a test) need not trust the pixels.
    _atomic_savefig(fig, path, metadata=plot_metadata(doc))
    plt.close(fig)


def plot_metadata(doc: dict[str, Any]) -> dict[str, str]:
    """The PNG text chunks of the plot: the rounds drawn, the resumes marked, the status."""
    current = sorted(r["server_round"] for r in doc["rounds"] if not r.get("superseded"))
    resumes = [
        s["resumed_after_round"]
        for s in doc.get("segments", [])
        if s.get("resumed_after_round") is not None
    ]
    return {
        "Title": f"SecFPP accuracy: {doc.get('strategy', '')}",
        "Rounds": ",".join(map(str, current)),
        "Resumed-after": ",".join(map(str, resumes)),
        "Status": str(doc.get("status", "")),
    }


def _clusters(record: RoundRecord) -> str:
    if "skipped" in record.extra:
        return "skipped"
    count = record.extra.get("num_clusters")
    return "-" if count is None else str(count)
