"""Run a whole federation in this process: the ServerApp's loop over the in-process grid.

The benchmarks and the tests share this one harness, so a figure in a closing note and an
assertion in a test come from the same code path.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from client_app.app import app as client_app
from server_app.app import run_server
from server_app.inprocess_grid import InProcessGrid, ReplyHook
from server_app.results import ResultsWriter
from strategies.metering import MeteredGrid

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def default_run_config() -> dict[str, Any]:
    """``[tool.flwr.app.config]`` from pyproject.toml, as ``flwr run`` would start from."""
    with PYPROJECT.open("rb") as handle:
        return dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


@dataclass
class FederationRun:
    """What an in-process run leaves behind."""

    writer: ResultsWriter
    grid: InProcessGrid
    meter: MeteredGrid

    @property
    def views(self) -> list:
        """What the SecFPP server learned, round by round (empty for other strategies)."""
        return list(getattr(self.meter.strategy, "views", []))

    run_config: dict[str, Any]
    final_arrays: ArrayRecord


def run_federation(
    num_sites: int,
    overrides: dict[str, Any] | None = None,
    node_configs: list[dict[str, Any]] | None = None,
    reply_hook: ReplyHook | None = None,
    echo=print,
) -> FederationRun:
    """Run the ServerApp against ``num_sites`` ClientApp contexts in this process.

    Parameters
    ----------
    num_sites : int
        Number of sites (simulated partitions unless ``node_configs`` is given).
    overrides : dict, optional
        Run-config keys to change, as with ``flwr run --run-config``.
    node_configs : list of dict, optional
        One node config per site (e.g. ``{"site-config": "/path/site.yaml"}``); default:
        simulation's ``partition-id`` / ``num-partitions``.
    reply_hook : callable, optional
        Sees (and may drop or alter) each reply; for fault-injection tests.
    echo : callable
        Where the per-round table goes.

    Returns
    -------
    FederationRun
        The results writer (per-round records, files), the grid (wire log), the config and
        the final shared arrays.
    """
    run_config = {**default_run_config(), **(overrides or {})}
    unknown = set(overrides or {}) - set(default_run_config())
    if unknown:
        raise ValueError(f"unknown run-config keys {sorted(unknown)}; see README.md")
    if node_configs is None:
        node_configs = [{"partition-id": i, "num-partitions": num_sites} for i in range(num_sites)]
    grid = InProcessGrid(client_app, node_configs, run_config, reply_hook=reply_hook)
    meter = MeteredGrid(grid)
    writer, result = run_server(meter, run_config, echo=echo)
    return FederationRun(
        writer=writer, grid=grid, meter=meter, run_config=run_config, final_arrays=result.arrays
    )
