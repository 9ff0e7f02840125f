"""The SecFPP ServerApp: read the run config, run the chosen strategy, write results."""

from __future__ import annotations

import json
import logging
import random
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from strategies.registry import strategy_class

from .results import ResultsWriter
from .settings import ServerSettings

app = ServerApp()


def run_server(grid: Grid, run_config: dict, echo=None) -> tuple[ResultsWriter, Result]:
    """Run one federation with the strategy and settings of ``run_config``.

    Parameters
    ----------
    grid : Grid
        Flower's grid (a SuperLink) or the in-process grid.
    run_config : dict
        The run config (``[tool.flwr.app.config]`` plus overrides).
    echo : callable, optional
        Where the per-round table goes (default: the Flower log).

    Returns
    -------
    tuple of ResultsWriter and Result
        The writer holds the per-round records and the paths of the files written; the
        Flower ``Result`` holds the final shared arrays.
    """
    settings = ServerSettings.from_run_config(run_config)
    # Node sampling uses Python's global generator inside Flower's strategies.
    random.seed(settings.seed)
    writer = ResultsWriter(
        Path(settings.output_dir) / settings.run_name,
        header={"strategy": settings.strategy, "run_config": dict(run_config)},
        echo=echo or (lambda line: flwr_log(INFO, "%s", line)),
    )
    checkpoint = writer.folder / "checkpoint.json"
    strategy = strategy_class(settings.strategy).from_settings(
        settings, on_round_end=writer.on_round, checkpoint_path=checkpoint
    )
    rounds = 1 if settings.strategy == "zeroshot" else settings.num_server_rounds
    if settings.resume:
        if not hasattr(strategy, "load_state_dict"):
            raise ValueError(
                f"run config 'resume': strategy {settings.strategy!r} keeps no checkpoint"
            )
        if not checkpoint.is_file():
            raise ValueError(f"run config 'resume': no checkpoint at {checkpoint}")
        done = strategy.load_state_dict(json.loads(checkpoint.read_text()))
        writer.resume_from(done)
        rounds -= done
        if rounds <= 0:
            writer.echo(f"resume: all {settings.num_server_rounds} rounds were already done")
            writer.finish()
            return writer, Result()
        writer.echo(f"resume: continuing after round {done} of {settings.num_server_rounds}")
    result = strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=settings.round_timeout)
    writer.finish()
    return writer, result


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``."""
    logging.getLogger("secfpp").setLevel(logging.INFO)
    run_server(grid, dict(context.run_config))
