"""`python -m deploy.local_superlink` finds and stops only the SuperLink `flwr run .` started."""

import subprocess
import sys
import time

import pytest

from deploy import local_superlink


def fake_superlink(tmp_path, home, port):
    # A stand-in with the argv shape Flower's local SuperLink has; it only sleeps.
    exe = tmp_path / "bin" / "flower-superlink"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text("import time\ntime.sleep(120)\n")
    argv = [sys.executable, str(exe), "--insecure", "--simulation", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-file", str(home / "local-superlink" / "superlink.log")]
    return subprocess.Popen(argv)


@pytest.fixture
def processes():
    started = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_stops_the_local_superlink_and_leaves_a_deployed_one(tmp_path, monkeypatch, processes):
    home = tmp_path / "flwr-home"
    local = fake_superlink(tmp_path, home, 39591)
    other_home = fake_superlink(tmp_path, tmp_path / "elsewhere", 39591)
    other_port = fake_superlink(tmp_path, home, 8000)
    processes += [local, other_home, other_port]
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39591")
    deadline = time.monotonic() + 10
    while not local_superlink.find_local_superlinks() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert local_superlink.find_local_superlinks() == [local.pid]
    assert local_superlink.main(["status"]) == 0
    assert local_superlink.main(["stop", "--grace", "5"]) == 0
    assert local.wait(timeout=5) is not None
    assert other_home.poll() is None and other_port.poll() is None
    assert local_superlink.main(["status"]) == 1
