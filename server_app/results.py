"""Per-round table, ``results.json`` and an accuracy plot for one run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from strategies.base import RoundRecord
from strategies.results_io import write_json_atomic

log = logging.getLogger("secfpp.server")

_COLUMNS = (
    ("round", 5),
    ("mean acc", 8),
    ("worst acc", 9),
    ("sites", 5),
    ("train loss", 10),
    ("seconds", 7),
)


class ResultsWriter:
    """Prints one table row per round and keeps ``results.json`` current.

    Parameters
    ----------
    folder : str or Path
        ``<output-dir>/<run-name>``; created if missing.
    header : dict
        Run-level facts stored at the top of ``results.json`` (strategy, settings).
    echo : callable
        Where table lines go (the Flower log in a ServerApp, ``print`` elsewhere).
    """

    def __init__(self, folder: str | Path, header: dict[str, Any], echo=None) -> None:
        self.folder = Path(folder).expanduser()
        self.header = header
        self.records: list[RoundRecord] = []
        self.kept_rounds: list[dict] = []
        self.echo = echo or (lambda line: log.info("%s", line))

    @property
    def results_path(self) -> Path:
        """The JSON file."""
        return self.folder / "results.json"

    @property
    def plot_path(self) -> Path:
        """The PNG plot."""
        return self.folder / "accuracy.png"

    def resume_from(self, completed_round: int) -> None:
        """Keep the rows of rounds up to ``completed_round`` from the previous results file."""
        if not self.results_path.is_file():
            return
        import json

        previous = json.loads(self.results_path.read_text())
        self.kept_rounds = [
            r for r in previous.get("rounds", []) if r["server_round"] <= completed_round
        ]

    def on_round(self, record: RoundRecord) -> None:
        """Print the round's row and rewrite the JSON file."""
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
        )
        self.echo(" | ".join(row))
        write_json_atomic(self.results_path, self.payload())

    def payload(self) -> dict[str, Any]:
        """The ``results.json`` document."""
        final = self.records[-1] if self.records else None
        return {
            **self.header,
            "rounds": self.kept_rounds + [r.to_json() for r in self.records],
            "final_mean_accuracy": final.to_json()["mean_accuracy"] if final else None,
            "final_worst_accuracy": final.to_json()["worst_accuracy"] if final else None,
        }

    def finish(self) -> None:
        """Write the final JSON and the accuracy-per-round plot."""
        write_json_atomic(self.results_path, self.payload())
        if self.records:
            plot_accuracy(self.records, self.plot_path, title=str(self.header.get("strategy", "")))
        self.echo(f"results: {self.results_path}")


def plot_accuracy(records: list[RoundRecord], path: Path, title: str = "") -> None:
    """Mean and worst-site personalized accuracy per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r.server_round for r in records]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(rounds, [r.mean_accuracy for r in records], marker="o", label="mean over sites")
    ax.plot(rounds, [r.worst_accuracy for r in records], marker="s", label="worst site")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("personalized test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"SecFPP: {title}" if title else "SecFPP")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
