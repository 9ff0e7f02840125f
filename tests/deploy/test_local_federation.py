"""deploy.local_federation against Flower's real processes, with a torch-free echo app.

These start real `flower-superlink` / `flower-supernode` processes (slow marker). The full
federation with the SecFPP app is in test_deployment.py.
"""

import json
import os
import time
from pathlib import Path

import pytest

from deploy.credentials import generate
from deploy.local_federation import (
    FLOWER_ENV,
    FederationError,
    LocalFederation,
    marked_processes,
    toml_pairs,
)

ECHO_APP = Path(__file__).resolve().parent / "echo_app"


def test_toml_pairs():
    assert toml_pairs({"a": 1, "b": "x y", "c": True, "d": 0.5}) == 'a=1 b="x y" c=true d=0.5'
    assert toml_pairs('site-config="/x"') == 'site-config="/x"'
    assert toml_pairs(None) == ""


def test_missing_tls_files_are_named(tmp_path):
    with pytest.raises(FederationError, match="ca.crt"):
        LocalFederation(tmp_path / "fed", tls_dir=tmp_path / "nothing")


@pytest.mark.slow
def test_insecure_run_start_stop_no_orphans(tmp_path):
    fed = LocalFederation(tmp_path / "fed")
    with fed:
        config = (fed.flwr_home / "config.toml").read_text()
        assert f'address = "{fed.address}"' in config and "insecure = true" in config
        node = fed.add_supernode("a", {"site-config": "/abs/a.yaml"})
        assert node.node_id is not None
        result = fed.run(ECHO_APP, {"num-server-rounds": 1}, timeout=120)
        assert result.ok, result.describe()
        # Every process of the federation carries the switches.
        for pid, _ in marked_processes(fed.marker):
            env = dict(
                item.split("=", 1)
                for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
                if "=" in item
            )
            for key, value in FLOWER_ENV.items():
                assert env.get(key) == value, (pid, key)
            assert env["FLWR_HOME"] == str(fed.flwr_home)
        pids = [node.process.pid, fed.superlink.pid]
    # The ServerApp's relative outputs/ lands in the SuperLink's working directory.
    (results,) = (fed.superlink_dir / "outputs").glob("run-*/results.json")
    data = json.loads(results.read_text())
    assert data["rounds"][0]["sites"] == ["/abs/a.yaml"]
    assert fed.leftovers == [] and fed.stragglers == []
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


@pytest.mark.slow
def test_failing_run_is_reported_and_cleaned_up(tmp_path):
    with LocalFederation(tmp_path / "fed") as fed:
        fed.add_supernode("a")
        result = fed.run(ECHO_APP, {"fail": True}, timeout=120)
        assert not result.ok
        assert result.status.startswith("finished:") and result.status != "finished:completed"
    assert fed.leftovers == []


@pytest.mark.slow
def test_tls_node_auth_and_unregistered_node_is_refused(tmp_path):
    creds = generate(tmp_path / "creds", ["site-a", "rogue"], ["127.0.0.1"]).root
    with LocalFederation(tmp_path / "fed", tls_dir=creds, supernode_auth=True) as fed:
        config = (fed.flwr_home / "config.toml").read_text()
        assert f'root-certificates = "{creds / "ca.crt"}"' in config
        node = fed.add_supernode("site-a", auth_key=creds / "site-a" / "auth.key")
        rogue = fed.add_supernode(
            "rogue",
            auth_key=creds / "rogue" / "auth.key",
            register=False,
            wait_online=False,
            max_wait_time=5,
        )
        assert rogue.process.popen.wait(60) != 0
        assert "Failed to activate SuperNode" in rogue.process.log(200)
        online = [n for n in fed.list_nodes() if n["status"] == "online"]
        assert [int(n["node-id"]) for n in online] == [node.node_id]
        result = fed.run(ECHO_APP, {"num-server-rounds": 1}, timeout=120)
        assert result.ok, result.describe()
    assert fed.leftovers == []


@pytest.mark.slow
def test_superlink_refuses_plaintext_when_tls_is_on(tmp_path):
    creds = generate(tmp_path / "creds", ["site-a"], ["127.0.0.1"]).root
    with LocalFederation(tmp_path / "fed", tls_dir=creds, supernode_auth=True) as fed:
        # The same node, but without the CA: it must not connect over plaintext or unverified TLS.
        argv_fed = LocalFederation(tmp_path / "plain")
        argv_fed.port = fed.port
        argv_fed.write_flwr_config()
        with pytest.raises(FederationError):
            argv_fed.flwr_json("ls", argv_fed.connection, timeout=30)
    assert fed.leftovers == []
    assert os.environ.get("FLWR_HOME") != str(fed.flwr_home)


@pytest.mark.slow
def test_superlink_restart_keeps_registrations_and_unregister_removes_a_site(tmp_path):
    """What deploy/README.md promises about restarts and removing a site."""
    creds = generate(tmp_path / "creds", ["site-a", "site-b"], ["127.0.0.1"]).root
    with LocalFederation(tmp_path / "fed", tls_dir=creds, supernode_auth=True) as fed:
        a = fed.add_supernode("site-a", auth_key=creds / "site-a" / "auth.key")
        b = fed.add_supernode("site-b", auth_key=creds / "site-b" / "auth.key")
        argv = fed.superlink.argv
        fed.superlink.stop()
        fed.superlink = fed.spawn("superlink-restarted", argv, cwd=fed.superlink_dir)
        fed.wait_ready()
        deadline = time.monotonic() + 60
        while fed._online_ids() != {a.node_id, b.node_id}:
            assert time.monotonic() < deadline, fed.logs()
            time.sleep(1)
        fed.unregister(b.node_id)
        assert b.process.popen.wait(60) is not None
        status = {int(n["node-id"]): n["status"] for n in fed.list_nodes()}
        assert status == {a.node_id: "online", b.node_id: "unregistered"}
        result = fed.run(ECHO_APP, {"num-server-rounds": 1}, timeout=120)
        assert result.ok, result.describe()
    assert fed.leftovers == []
    (results,) = (fed.superlink_dir / "outputs").glob("run-*/results.json")
    assert json.loads(results.read_text())["nodes"] == 1


@pytest.mark.slow
def test_simulation_mode(tmp_path):
    """`--simulation` SuperLink: the run brings its own virtual SuperNodes (Ray)."""
    fed = LocalFederation(
        tmp_path / "fed",
        simulation=True,
        simulation_options={"num-supernodes": 3},
    )
    with fed:
        assert "num-supernodes = 3" in (fed.flwr_home / "config.toml").read_text()
        with pytest.raises(FederationError):
            fed.add_supernode("a")
        result = fed.run(ECHO_APP, {"num-server-rounds": 1, "min-nodes": 3}, timeout=240)
        assert result.ok, result.describe() + fed.logs()
        # --federation-config overrides the connection's options per run.
        result = fed.run(
            ECHO_APP,
            {"num-server-rounds": 1, "min-nodes": 2},
            federation_config={"num-supernodes": 2},
            timeout=240,
        )
        assert result.ok, result.describe() + fed.logs()
    assert fed.leftovers == []
    nodes = sorted(
        json.loads(p.read_text())["nodes"]
        for p in (fed.superlink_dir / "outputs").glob("run-*/results.json")
    )
    assert nodes == [2, 3]
