"""The SecFPP ServerApp: read the run config, run the chosen strategy, write results."""

from __future__ import annotations

import json
import logging
import random
import time
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from strategies.metering import MeteredGrid
from strategies.registry import strategy_class

from .config_check import RUN_NAME, RunConfigError, check_run_config, sites_needed
from .results import ResultsWriter
from .settings import ServerSettings

app = ServerApp()


def run_server(
    grid: Grid, run_config: dict, echo=None, run_id: int | None = None
) -> tuple[ResultsWriter, Result]:
    """Run one federation with the strategy and settings of ``run_config``.

    The whole run config is checked first (:func:`server_app.config_check.check_run_config`),
    before the strategy is built or any site is contacted. ``results.json`` carries a
    ``status`` from the start; on any exception it is rewritten with ``failed`` (or
    ``stopped``) and the error, the plot is drawn, and the exception propagates.

    Parameters
    ----------
    grid : Grid
        Flower's grid (a SuperLink) or the in-process grid.
    run_config : dict
        The run config (``[tool.flwr.app.config]`` plus overrides).
    echo : callable, optional
        Where the per-round table goes (default: the Flower log).
    run_id : int, optional
        Flower's run id, recorded in ``results.json``.

    Returns
    -------
    tuple of ResultsWriter and Result
        The writer holds the per-round records and the paths of the files written; the
        Flower ``Result`` holds the final shared arrays.

    Raises
    ------
    RunConfigError
        If a run-config value is unknown, of the wrong type or out of range (one line naming
        the key, the value, the expectation and the fix).
    """
    echo = echo or (lambda line: flwr_log(INFO, "%s", line))
    writer: ResultsWriter | None = None
    try:
        checked, notes = check_run_config(run_config)
        settings = ServerSettings.from_run_config(checked)
        for note in notes:
            echo(note)
        _check_simulated_sites(grid, checked)
        # Node sampling uses Python's global generator inside Flower's strategies.
        random.seed(settings.seed)
        writer = ResultsWriter(
            Path(settings.output_dir) / settings.run_name,
            header={"strategy": settings.strategy, "run_config": dict(run_config)},
            echo=echo,
            run_id=run_id,
        )
        return _run(grid, settings, writer)
    except BaseException as exc:
        writer = writer or _fallback_writer(run_config, echo, run_id)
        if writer is not None:
            try:
                writer.fail(exc)
            except Exception as write_error:  # the run's own error matters more
                flwr_log(ERROR, "could not record the failure: %s", write_error)
        raise


#: Grids whose sites are all registered at start: Flower's simulation and the in-process grid.
_FIXED_SIZE_GRIDS = ("InMemoryGrid", "InProcessGrid")


def _check_simulated_sites(
    grid: Grid, checked: dict, settle: float = 3.0, limit: float = 60.0
) -> None:
    """In simulation, refuse a federation too small for the run instead of waiting forever.

    Flower's strategies wait for ``min-sites`` sites without a deadline, which is right for
    deployed sites that connect over time but hangs a simulation whose size is fixed (Flower's
    default is 2 SuperNodes). Flower registers the simulated nodes just after starting the
    ServerApp, so the count is read once it stops growing.

    Raises
    ------
    RunConfigError
        If the simulation has fewer sites than ``min-sites`` (already raised to what the
        strategy needs).
    """
    inner = grid
    for _ in range(3):  # wrappers such as a metering grid keep the real one as `inner`
        inner = getattr(inner, "inner", inner)
    if type(inner).__name__ not in _FIXED_SIZE_GRIDS:
        return
    need = checked["min-sites"]
    start = last_change = time.monotonic()
    count = len(list(grid.get_node_ids()))
    while count < need and time.monotonic() - start < limit:
        if count > 0 and time.monotonic() - last_change >= settle:
            break
        time.sleep(0.2)
        now = len(list(grid.get_node_ids()))
        if now != count:
            count, last_change = now, time.monotonic()
    if count < need:
        _, why = sites_needed(checked)
        raise RunConfigError(
            "min-sites",
            need,
            f"at most the {count} simulated sites ({why})",
            f'run with --federation-config "num-supernodes={max(need, 12)}" '
            "(Flower's default is 2), or choose settings that need fewer sites",
        )


def _run(
    grid: Grid, settings: ServerSettings, writer: ResultsWriter
) -> tuple[ResultsWriter, Result]:
    checkpoint = writer.folder / "checkpoint.json"
    strategy = strategy_class(settings.strategy).from_settings(
        settings, on_round_end=writer.on_round, checkpoint_path=checkpoint
    )
    # Every exchange of every strategy goes through one meter (exchanges, bytes, seconds).
    if not isinstance(grid, MeteredGrid):
        grid = MeteredGrid(grid)
    strategy.meter = grid
    grid.strategy = strategy
    rounds = 1 if settings.strategy == "zeroshot" else settings.num_server_rounds
    if not settings.resume:
        writer.start()
    else:
        if not checkpoint.is_file():
            # Keep whatever results exist; the failure is recorded next to them.
            writer.start(continue_file=True)
            raise ValueError(
                f"run config 'resume' = True: no checkpoint at {checkpoint}; "
                "run without resume=true to start afresh"
            )
        done = strategy.load_state_dict(json.loads(checkpoint.read_text()))
        writer.start(resumed_after=done)
        if hasattr(strategy, "unmeasured"):
            # A stop between round `done` and the exchange that evaluates it lost that
            # evaluation; this run's first exchange measures the same (checkpointed) prompts.
            strategy.unmeasured = writer.unmeasured_round(done)
        rounds -= done
        if rounds <= 0:
            writer.echo(f"resume: all {settings.num_server_rounds} rounds were already done")
            writer.finish()
            return writer, Result()
        # Flower numbers the rounds of this run from 1; our table and files use the real ones.
        writer.echo(
            f"resume: continuing after round {done} of {settings.num_server_rounds}; "
            f"Flower's [ROUND 1/{rounds}] is round {done + 1} of {settings.num_server_rounds}"
        )
    result = strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=settings.round_timeout)
    writer.finish()
    return writer, result


def _fallback_writer(run_config: dict, echo, run_id: int | None) -> ResultsWriter | None:
    """A writer for a run refused before its settings were read, when the folder is known.

    A refused run still leaves ``status: failed`` where a script looks for it, unless the
    output folder itself is what is wrong.
    """
    output_dir, run_name = run_config.get("output-dir"), run_config.get("run-name")
    if not isinstance(output_dir, str) or not output_dir.strip():
        return None
    if not isinstance(run_name, str) or not RUN_NAME.match(run_name):
        return None
    writer = ResultsWriter(
        Path(output_dir) / run_name,
        header={"strategy": run_config.get("strategy"), "run_config": dict(run_config)},
        echo=echo,
        run_id=run_id,
    )
    try:
        # A refused resume must not wipe the rounds it was meant to continue.
        writer.start(continue_file=run_config.get("resume") is True)
    except Exception:
        return None
    return writer


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``."""
    logging.getLogger("secfpp").setLevel(logging.INFO)
    run_server(grid, dict(context.run_config), run_id=int(context.run_id))
