"""The prefork SuperExec: each ClientApp task in a forked child, the SuperExec unharmed.

Fast tests drive :class:`deploy.prefork_superexec.PreforkExecutor` with Flower's own
``ExecutionSpec`` and a stand-in for Flower's ``run_clientapp`` (the child calls whatever the
module holds when it forks). The slow test runs the SecFPP app on a TLS federation whose
SuperNodes use ``--isolation process`` with the prefork SuperExec beside each.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import flwr.supernode.runtime.run_clientapp as flwr_runtime
import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus

from deploy import prefork_superexec
from deploy.prefork_superexec import PreforkExecutor

REPO = Path(__file__).resolve().parents[2]


def _spec(task_id: int, task_type: TaskType = TaskType.CLIENT_APP) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:1",
        token=f"{task_id:064x}",
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=os.getpid(),
        suppress_output=False,
        task_id=task_id,
    )


def _reap(executor: PreforkExecutor, task_ids: set[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not task_ids <= set(executor.exit_codes):
        assert time.monotonic() < deadline, (executor.children, executor.exit_codes)
        executor.reconcile()
        time.sleep(0.05)


def test_each_task_runs_flower_runtime_in_its_own_child_with_its_token(monkeypatch, tmp_path):
    def fake_run_clientapp(**kwargs):
        # What the child was given, and that it is not the test process.
        (tmp_path / f"{os.getpid()}.json").write_text(json.dumps(kwargs, default=str))
        raise SystemExit(0)  # Flower's run_clientapp always ends in flwr_exit -> sys.exit

    monkeypatch.setattr(flwr_runtime, "run_clientapp", fake_run_clientapp)
    executor = PreforkExecutor()
    for task_id in (1, 2):
        assert executor.launch(_spec(task_id)).status == LaunchResultStatus.ACCEPTED
    pids = set(executor.children)
    _reap(executor, {1, 2})
    assert executor.exit_codes == {1: 0, 2: 0} and executor.children == {}
    seen = {int(p.stem): json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(seen) == pids and os.getpid() not in seen
    assert sorted(c["token"] for c in seen.values()) == [f"{1:064x}", f"{2:064x}"]
    for call in seen.values():
        assert call["runtime_api_address"] == "127.0.0.1:1" and call["insecure"] is True
        assert call["certificates"] is None and call["parent_pid"] == os.getpid()


def test_a_failing_or_exiting_app_ends_its_child_with_a_status_not_the_superexec(monkeypatch):
    def crash(**_):
        raise RuntimeError("boom")

    def exit_7(**_):
        raise SystemExit(7)

    executor = PreforkExecutor()
    monkeypatch.setattr(flwr_runtime, "run_clientapp", crash)
    executor.launch(_spec(10))
    monkeypatch.setattr(flwr_runtime, "run_clientapp", exit_7)
    executor.launch(_spec(11))
    _reap(executor, {10, 11})
    assert executor.exit_codes == {10: 1, 11: 7}


def test_other_task_types_are_started_as_flower_starts_them(monkeypatch):
    executor = PreforkExecutor()
    started = []
    monkeypatch.setattr(executor._fallback, "launch", lambda spec: started.append(spec) or "x")
    monkeypatch.setattr(prefork_superexec.os, "fork", lambda: pytest.fail("forked a ServerApp"))
    assert executor.launch(_spec(3, TaskType.SERVER_APP)) == "x"
    assert [s.task_id for s in started] == [3] and executor.children == {}


def test_options_are_checked():
    with pytest.raises(SystemExit):
        prefork_superexec.parse_args(["--runtime-api-address", "127.0.0.1:9094"])  # no TLS choice
    with pytest.raises(SystemExit):
        prefork_superexec.parse_args(
            ["--runtime-api-address", "a:1", "--insecure", "--poll-interval", "0"]
        )
    args = prefork_superexec.parse_args(["--runtime-api-address", "a:1", "--insecure"])
    assert args.preload.split(",") == list(prefork_superexec.DEFAULT_PRELOAD)
    assert prefork_superexec.preload(["numpy", "no_such_module_here"]) == ["no_such_module_here"]


@pytest.mark.slow
def test_a_federation_of_prefork_sites_runs_secfpp_without_flowers_superexec(tmp_path):
    from deploy.credentials import generate
    from deploy.local_federation import LocalFederation, marked_processes

    sites = ["site-0", "site-1", "site-2"]
    creds = generate(tmp_path / "credentials", sites, ["127.0.0.1"])
    with LocalFederation(tmp_path / "fed", tls_dir=creds.root, supernode_auth=True) as fed:
        for i, site in enumerate(sites):
            data = {"source": "digits-domains", "partition-id": i, "num-partitions": 3}
            fed.add_site(
                site,
                {**data, "num-domains": 3, "max-images": 60},
                credentials=creds.root,
                site_identities=True,
                prefork=True,
            )
        commands = [cmd for _, cmd in marked_processes(fed.marker)]
        # Only the SuperLink's own SuperExec: the SuperNodes (--isolation process) start none.
        assert sum("flower-superexec" in c for c in commands) == 1, commands
        assert sum("deploy.prefork_superexec" in c for c in commands) == len(sites), commands
        config = {
            "strategy": "secfpp",
            "num-server-rounds": 2,
            "local-epochs": 1,
            "min-sites": 3,
            "output-dir": str(tmp_path / "outputs"),
            "run-name": "prefork",
            "device": "cpu",
            "site-identities": str(creds.identities),
            "secure-k": 1,
            "secure-t": 1,
        }
        result = fed.run(REPO, config, timeout=400)
        assert result.ok, result.describe() + fed.logs()
        forks = [
            (fed.log_dir / f"superexec-{site}.log").read_text().count("forked ClientApp")
            for site in sites
        ]
    results = json.loads((tmp_path / "outputs" / "prefork" / "results.json").read_text())
    assert results["status"] == "completed"
    assert [len(r["sites"]) for r in results["rounds"]] == [3, 3]
    # Every message a site handled was forked: key setup, and per round train (with shares),
    # the coded answers and the evaluation that rides on the next train.
    assert all(n >= 2 * 2 for n in forks), forks
    assert fed.leftovers == [], fed.leftovers
