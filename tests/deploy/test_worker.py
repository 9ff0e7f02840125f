"""The per-site worker: same answers as in-process, authenticated, and optional.

A real ``python -m client_app.worker`` process serves one site; the ClientApp's train and
evaluate paths (:func:`client_app.worker_link.run_handler`) must give the same reply and the
same context state through it as in-process, refuse a wrong key, and fall back to in-process
when the worker is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client_app import prompt_handlers
from client_app.worker_link import (
    WorkerUnavailableError,
    forward,
    key_path,
    run_handler,
    socket_path,
)
from deploy.local_federation import write_site_yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DATA = {
    "source": "digits-domains",
    "partition-id": 1,
    "num-partitions": 6,
    "num-domains": 4,
    "max-images": 48,
}
RUN_CONFIG = {"run-name": "worker-test", "seed": 0}


def _site(root: Path, name: str) -> Path:
    return write_site_yaml(
        root / name / "site.yaml",
        "site-1",
        state_dir=root / name / "state",
        data=DATA,
        device="cpu",
    )


def _context(yaml: Path) -> Context:
    return Context(
        run_id=7,
        node_id=11,
        node_config={"site-config": str(yaml)},
        state=RecordDict(),
        run_config=dict(RUN_CONFIG),
    )


def _message(kind: str, server_round: int) -> Message:
    TaskIdentity.run_id = 7
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    config = {"mode": "hierarchical", "server-round": server_round}
    if kind == "train":
        config.update({"local-epochs": 1, "batch-size": 16, "learning-rate": 0.01})
    message = Message(RecordDict({"config": ConfigRecord(config)}), 11, kind)
    message.metadata.__dict__["_message_id"] = f"{kind}-{server_round}"
    return message


def _in_process(op: str):
    return getattr(prompt_handlers, op)


def _flat(records: RecordDict) -> dict:
    """Every value of a RecordDict, arrays as numpy, for comparison."""
    out = {}
    for name, record in records.items():
        for key, value in record.items():
            out[f"{name}/{key}"] = value.numpy() if hasattr(value, "numpy") else value
    return out


def _assert_same(a: RecordDict, b: RecordDict, skip: tuple[str, ...] = ()) -> None:
    # Both sides run torch on one thread, so their reductions match; the absolute 1e-6
    # leaves room only for float32 last bits, while a real divergence (another prompt,
    # other data, another thread count: CI saw 4e-5 with unpinned threads) is larger.
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for key, value in fa.items():
        if key.split("/")[-1] in skip:
            continue
        if isinstance(value, np.ndarray):
            np.testing.assert_allclose(value, fb[key], rtol=0, atol=1e-6, err_msg=key)
        elif isinstance(value, float):
            assert value == pytest.approx(fb[key], rel=0, abs=1e-6), key
        else:
            assert value == fb[key], key


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    yaml = _site(root, "served")
    # Both sides run torch on one thread: with different thread counts their float sums
    # differ in the last bits, and Adam turns those into visibly different prompts.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # The worker's log goes to a file: a pipe nobody reads would block it.
    log = root / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "client_app.worker", "--site-config", str(yaml)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    sock = socket_path(root / "served" / "state")
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the worker did not open its socket"
        time.sleep(0.2)
    yield proc, root, yaml
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def test_worker_key_and_socket_are_private(worker):
    _, root, _ = worker
    state = root / "served" / "state"
    assert key_path(state).stat().st_mode & 0o777 == 0o600
    assert socket_path(state).stat().st_mode & 0o077 == 0


def test_worker_answers_equal_in_process_answers(worker, tmp_path, caplog, one_torch_thread):
    _, root, yaml = worker
    local = _site(tmp_path, "local")  # same data, its own state folder
    ctx_worker, ctx_local = _context(yaml), _context(local)
    caplog.set_level(logging.INFO, logger="secfpp.client")
    for server_round in (1, 2):
        for op in ("train", "evaluate"):
            via = run_handler(op, _message(op, server_round), ctx_worker, _in_process(op))
            here = _in_process(op)(_message(op, server_round), ctx_local)
            # Wall-clock seconds differ; every other value must be equal.
            _assert_same(via.content, here.content, skip=("train-seconds",))
            assert via.metadata.reply_to_message_id == f"{op}-{server_round}"
            _assert_same(ctx_worker.state, ctx_local.state)
    assert "handled by the site worker" in caplog.text
    assert "running in-process" not in caplog.text
    # The private prompt was stored in the worker's site folder, as in-process.
    assert list((root / "served" / "state").rglob("*worker-test*"))


def test_bad_key_is_refused_and_the_worker_keeps_serving(worker):
    proc, root, yaml = worker
    sock = socket_path(root / "served" / "state")
    with pytest.raises(AuthenticationError):
        Client(str(sock), family="AF_UNIX", authkey=b"not-the-key-" * 3)
    assert proc.poll() is None
    reply, _, _ = forward(
        "evaluate",
        _message("evaluate", 1),
        _context(yaml),
        state_dir=root / "served" / "state",
        site_config=str(yaml),
    )
    assert "metrics" in reply.content.metric_records


def test_worker_refuses_other_code_and_other_sites(worker, tmp_path):
    _, root, yaml = worker
    state = root / "served" / "state"
    with pytest.raises(WorkerUnavailableError, match="handler code differs"):
        forward(
            "evaluate",
            _message("evaluate", 1),
            _context(yaml),
            state_dir=state,
            site_config=str(yaml),
            code="0" * 64,
        )
    other = _site(tmp_path, "other")
    with pytest.raises(WorkerUnavailableError, match="not this worker's"):
        forward(
            "evaluate",
            _message("evaluate", 1),
            _context(other),
            state_dir=state,
            site_config=str(other),
        )


def test_dead_worker_falls_back_to_in_process(worker, caplog):
    proc, root, yaml = worker
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up: the socket file stays behind
    proc.wait(20)
    assert socket_path(root / "served" / "state").exists()
    caplog.set_level(logging.INFO, logger="secfpp.client")
    reply = run_handler(
        "evaluate", _message("evaluate", 1), _context(yaml), _in_process("evaluate")
    )
    assert "accuracy" in reply.content["metrics"]
    assert "running in-process (cannot reach the worker" in caplog.text
