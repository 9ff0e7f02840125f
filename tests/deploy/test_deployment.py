"""The real thing: a TLS-secured SuperLink with SuperNode authentication, three SuperNodes with
their own site YAMLs and state folders, `flwr run` of the SecFPP app for two rounds.

Slow (starts real Flower processes; each message to a site runs in a fresh `flwr-clientapp`
process). Budget: 6 minutes on 2 cores. Run with `pytest -m slow tests/deploy`.
"""

import json
import math
import time
from pathlib import Path

import pytest

from deploy.credentials import generate
from deploy.local_federation import LocalFederation, marked_processes

REPO = Path(__file__).resolve().parents[2]
SITES = ["site-0", "site-1", "site-2"]
ROUNDS = 2


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status


def site_data(index: int) -> dict:
    """Site ``index`` of three on the embedded digits, one domain each, few images (fast)."""
    return {
        "source": "digits-domains",
        "partition-id": index,
        "num-partitions": len(SITES),
        "num-domains": len(SITES),
        "max-images": 120,
    }


def run_config(workdir: Path, identities: Path) -> dict:
    return {
        "strategy": "secfpp",
        "num-server-rounds": ROUNDS,
        "local-epochs": 1,
        "min-sites": len(SITES),
        "output-dir": str(workdir / "outputs"),
        "run-name": "deploy-test",
        "device": "cpu",
        "site-identities": str(identities),
        # Three sites: K=1 slice, T=1 colluder, so a degree-2 result decodes from 2(K+T-1)+1 = 3.
        "secure-k": 1,
        "secure-t": 1,
    }


@pytest.mark.slow
def test_tls_authenticated_federation_runs_the_app(tmp_path):
    started = time.monotonic()
    creds = generate(tmp_path / "credentials", [*SITES, "rogue"], ["127.0.0.1"])
    strategy = "secfpp"
    fed = LocalFederation(tmp_path / "federation", tls_dir=creds.root, supernode_auth=True)
    with fed:
        nodes = [
            fed.add_site(
                site,
                site_data(i),
                credentials=creds.root,
                site_identities=True,
            )
            for i, site in enumerate(SITES)
        ]
        registered = {int(n["node-id"]) for n in fed.list_nodes() if n["status"] == "online"}
        assert registered == {n.node_id for n in nodes}

        # A SuperNode whose key was never registered is refused and does not join.
        rogue = fed.add_supernode(
            "rogue",
            {"site-config": str(tmp_path / "nowhere.yaml")},
            auth_key=creds.auth_key("rogue"),
            register=False,
            wait_online=False,
            max_wait_time=5,
        )
        assert rogue.process.popen.wait(60) != 0, rogue.process.log()
        assert "Failed to activate SuperNode" in rogue.process.log(200)

        result = fed.run(REPO, run_config(tmp_path, creds.identities), timeout=300)
        assert result.ok, result.describe()
        online = {int(n["node-id"]) for n in fed.list_nodes() if n["status"] == "online"}
        assert online == {n.node_id for n in nodes}  # the rogue never joined
        # Everything the federation runs now, found through the marker every process inherits
        # (the SuperLink starts its SuperExec in a new session: process groups alone miss it).
        seen = marked_processes(fed.marker)
        assert sum("flower-superexec" in cmd for _, cmd in seen) == 1 + len(SITES), seen

    # Every process we started is gone, and nothing Flower started outlived it.
    assert fed.leftovers == [], fed.leftovers
    for proc in [fed.superlink, *(n.process for n in fed.supernodes)]:
        assert proc.popen.poll() is not None, proc.name
    alive = [(pid, cmd) for pid, cmd in seen if _alive(pid)]
    assert alive == [], alive

    results_file = tmp_path / "outputs" / "deploy-test" / "results.json"
    assert results_file.is_file(), result.describe()
    results = json.loads(results_file.read_text())
    assert results["strategy"] == strategy
    assert len(results["rounds"]) == ROUNDS
    for record in results["rounds"]:
        # Every site answered every round with a real accuracy.
        assert len(record["sites"]) == len(SITES), f"{record}\n{result.describe()}\n{fed.logs()}"
        # ... and trained (a failed train exchange leaves no training metrics).
        assert "train-loss" in record["train_metrics"], f"{record}\n{result.describe()}"
        assert not math.isnan(record["train_metrics"]["train-loss"]), record
        assert 0.0 <= record["mean_accuracy"] <= 1.0 and not math.isnan(record["mean_accuracy"])
    # Each site kept its state in its own folder.
    for site in SITES:
        state = fed.workdir / "sites" / site / "state"
        assert state.is_dir() and any(state.rglob("*")), site
    assert time.monotonic() - started < 360
