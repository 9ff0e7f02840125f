"""One real `flwr run` in simulation against a private SuperLink on 127.0.0.1."""

import json
from pathlib import Path

import pytest

from deploy.local_federation import LocalFederation

APP = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_flwr_run_simulation_writes_results(tmp_path):
    fed = LocalFederation(
        tmp_path / "fed", simulation=True, simulation_options={"num-supernodes": 4}
    )
    run_config = {
        "strategy": "hierarchical",
        "num-server-rounds": 2,
        "local-epochs": 1,
        "batch-size": 128,
        "num-domains": 2,
        "device": "cpu",
        "sim-state-root": str(tmp_path / "sites"),
        "output-dir": str(tmp_path / "out"),
        "run-name": "sim",
    }
    with fed:
        result = fed.run(APP, run_config, timeout=420)
        assert result.ok, result.describe() + fed.logs()
    assert fed.leftovers == []
    doc = json.loads((tmp_path / "out" / "sim" / "results.json").read_text())
    assert [r["server_round"] for r in doc["rounds"]] == [1, 2]
    assert len(doc["rounds"][-1]["sites"]) == 4
    assert doc["final_mean_accuracy"] > 0.3
    # Every simulated site kept its private prompt in its own state folder.
    assert sorted(
        p.parent.parent.name for p in (tmp_path / "sites").glob("site-*/prompts/sim.pt")
    ) == [f"site-{i}" for i in range(4)]
