"""deploy/run-superlink.sh and deploy/run-supernode.sh: clear errors, and a real start (slow)."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from client_app.worker_link import socket_path
from deploy.credentials import generate
from deploy.local_federation import (
    HOST,
    LocalFederation,
    SuperNode,
    free_port,
    marked_processes,
    write_site_yaml,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SUPERLINK = DEPLOY / "run-superlink.sh"
SUPERNODE = DEPLOY / "run-supernode.sh"


def _run(argv, **kwargs):
    return subprocess.run(
        ["bash", *map(str, argv)], capture_output=True, text=True, timeout=60, **kwargs
    )


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("c") / "creds", ["site-a"], ["127.0.0.1"])


def test_superlink_script_names_missing_things(tmp_path, creds):
    done = _run([SUPERLINK])
    assert done.returncode == 2 and "--credentials DIR is required" in done.stderr
    done = _run([SUPERLINK, "--credentials", tmp_path / "nope", "--state-dir", tmp_path])
    assert done.returncode == 2 and "does not exist" in done.stderr
    partial = tmp_path / "partial"
    shutil.copytree(creds.root, partial)
    (partial / "superlink" / "server.key").unlink()
    done = _run([SUPERLINK, "--credentials", partial, "--state-dir", tmp_path / "s"])
    assert done.returncode == 2 and "superlink/server.key" in done.stderr
    done = _run([SUPERLINK, "--bogus"])
    assert done.returncode == 2 and "unknown argument" in done.stderr


def test_supernode_script_names_missing_things(tmp_path, creds):
    done = _run([SUPERNODE, "--superlink", "x:1"])
    assert done.returncode == 2 and "--site-config" in done.stderr
    done = _run([SUPERNODE, "--site-config", tmp_path / "none.yaml", "--superlink", "x:1"])
    assert done.returncode == 2 and "does not exist" in done.stderr
    # identity key missing
    site = write_site_yaml(
        tmp_path / "a.yaml", "site-a", state_dir=tmp_path / "st", identity_key=tmp_path / "k"
    )
    done = _run([SUPERNODE, "--site-config", site, "--superlink", "x:1"])
    assert done.returncode == 2 and "identity" in done.stderr
    # auth key found next to the identity key, but the CA is not where it should be
    site = write_site_yaml(
        tmp_path / "b.yaml",
        "site-a",
        state_dir=tmp_path / "st",
        identity_key=creds.identity_key("site-a"),
    )
    done = _run([SUPERNODE, "--site-config", site, "--superlink", "x:1", "--ca-cert", "/no/ca"])
    assert done.returncode == 2 and "/no/ca" in done.stderr
    # a loose auth key is refused
    loose = tmp_path / "loose.key"
    shutil.copy(creds.auth_key("site-a"), loose)
    os.chmod(loose, 0o644)
    done = _run([SUPERNODE, "--site-config", site, "--superlink", "x:1", "--auth-key", loose])
    assert done.returncode == 2 and "chmod 600" in done.stderr


def test_supernode_script_reports_schema_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("site-id: a\nstate-dir: ./s\ndevice: tpu\n")
    done = _run([SUPERNODE, "--site-config", bad, "--superlink", "x:1"], cwd=DEPLOY.parent)
    assert done.returncode != 0
    assert "device" in done.stderr


@pytest.mark.slow
def test_scripts_start_a_tls_federation_with_a_registered_site(tmp_path, creds):
    """What deploy/README.md tells an operator to do, minus `flwr run`."""
    fed = LocalFederation(tmp_path / "fed", tls_dir=creds.root, supernode_auth=True)
    fed.port = free_port()
    fed.write_flwr_config()
    state = tmp_path / "superlink-state"
    fed.superlink = fed.spawn(
        "superlink",
        ["bash", SUPERLINK, "--credentials", creds.root, "--state-dir", state]
        + ["--host", HOST, "--port", str(fed.port)],
        cwd=tmp_path,
    )
    try:
        fed.wait_ready()
        node_id = fed.register(creds.auth_pub("site-a"), name="site-a")
        site = write_site_yaml(
            tmp_path / "site-a" / "site.yaml",
            "site-a",
            state_dir=tmp_path / "site-a" / "state",
            identity_key=creds.identity_key("site-a"),
            data={"source": "digits-domains", "num-partitions": 1, "num-domains": 1},
        )
        proc = fed.spawn(
            "supernode-site-a",
            ["bash", SUPERNODE, "--site-config", site, "--superlink", fed.address]
            + ["--port", str(free_port())],
            cwd=tmp_path,
        )
        fed.supernodes.append(SuperNode("site-a", proc, 0, "", creds.auth_key("site-a")))
        for _ in range(60):
            if node_id in fed._online_ids():
                break
            assert proc.alive(), fed.logs()
            time.sleep(0.5)
        else:
            raise AssertionError("site-a never came online" + fed.logs())
        assert (state / "superlink.db").is_file()
        assert (state / "superlink.log").is_file()
        assert (tmp_path / "site-a" / "state").is_dir()
        # The script starts the site's worker beside the SuperNode and restarts it if it dies.
        sock = socket_path(tmp_path / "site-a" / "state")
        first = _wait_for_worker(fed, sock)
        os.kill(first, signal.SIGKILL)
        second = _wait_for_worker(fed, sock, not_pid=first)
        assert second != first
        # ... and the prefork SuperExec, with the SuperNode in --isolation process, restarted
        # likewise.
        commands = [cmd for _, cmd in marked_processes(fed.marker)]
        assert any("flower-supernode" in c and "--isolation process" in c for c in commands)
        first = _wait_for(fed, "deploy.prefork_superexec")
        os.kill(first, signal.SIGKILL)
        assert _wait_for(fed, "deploy.prefork_superexec", not_pid=first, timeout=60) != first
    finally:
        fed.stop()
    # The worker, the prefork SuperExec and their restart loops stopped with the SuperNode.
    assert fed.leftovers == []


def _listening(sock) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _wait_for(fed, module: str, not_pid=None, timeout=180.0) -> int:
    """PID of a running ``python -m <module>`` of the federation other than ``not_pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, cmd in marked_processes(fed.marker):
            if f"-m {module}" in cmd and pid != not_pid:
                return pid
        time.sleep(0.5)
    raise AssertionError(f"{module} never (re)started" + fed.logs())


def _wait_for_worker(fed, sock, not_pid=None, timeout=180.0):
    """PID of the site worker once one (other than ``not_pid``) runs and its socket exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [
            pid
            for pid, cmd in marked_processes(fed.marker)
            if "client_app.worker" in cmd and "-c" not in cmd.split()
        ]
        pids = [pid for pid in pids if pid != not_pid]
        if pids and _listening(sock):
            return pids[0]
        time.sleep(0.5)
    raise AssertionError("the site worker never (re)started" + fed.logs())
