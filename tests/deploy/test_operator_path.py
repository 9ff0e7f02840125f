"""The operator's path with real processes: the guide's own command, a site crash, stop and resume.

One TLS-secured federation with SuperNode authentication and three sites, as deploy/README.md
builds it, serves the three tests in order (slow: real ``flower-superlink``, ``flower-supernode``
and one ``flwr-clientapp`` process per message). Run with
``pytest -m slow tests/deploy/test_operator_path.py`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from deploy.credentials import generate
from deploy.local_federation import LocalFederation

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "deploy" / "README.md"
SITES = ["site-a", "site-b", "site-c"]
# The guide's example run config holds exactly these keys; the test replaces the paths (the
# guide's are the SuperLink host's) and the round count (20 would take an hour here).
GUIDE_KEYS = {
    "strategy",
    "secure-t",
    "min-sites",
    "num-server-rounds",
    "output-dir",
    "run-name",
    "site-identities",
}

pytestmark = pytest.mark.slow


def guide_run_config() -> dict:
    """The ``--run-config`` of the guide's ``flwr run . secfpp`` command, parsed as Flower does."""
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(r"flwr run \. secfpp --stream --run-config \\\n\s*('[^']*')", text)
    assert match, "deploy/README.md lost its `flwr run . secfpp --stream --run-config` example"
    (pairs,) = shlex.split(match.group(1))  # the shell's view: one argument
    return parse_config_args([pairs])


def site_data(index: int) -> dict:
    """What the guide tells each of its three sites to write under ``data``."""
    return {
        "source": "digits-domains",
        "partition-id": index,
        "num-partitions": len(SITES),
        "num-domains": len(SITES),
        "max-images": 120,  # not in the guide: fewer images keep the test short
    }


@pytest.fixture(scope="module")
def guide_federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("operator")
    creds = generate(root / "credentials", SITES, ["127.0.0.1"])
    fed = LocalFederation(root / "federation", tls_dir=creds.root, supernode_auth=True)
    with fed:
        for i, site in enumerate(SITES):
            fed.add_site(site, site_data(i), credentials=creds.root, site_identities=True)
        yield fed, creds, root
    assert fed.leftovers == [], fed.leftovers


def config_for(root: Path, creds, run_name: str, rounds: int) -> dict:
    config = guide_run_config()
    assert set(config) == GUIDE_KEYS, sorted(config)
    return {
        **config,
        "output-dir": str(root / "outputs"),
        "site-identities": str(creds.identities),
        "num-server-rounds": rounds,
        "run-name": run_name,
    }


def status_code(folder: Path) -> tuple[int, str]:
    """``python -m server_app.status <folder>``, as the guide tells the operator to run it."""
    done = subprocess.run(
        [sys.executable, "-m", "server_app.status", str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def wait_for(predicate, timeout: float, what: str, fed: LocalFederation, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} not seen after {timeout:.0f}s{fed.logs()}"
        time.sleep(poll)
    return value


def checkpointed(folder: Path) -> int:
    """The last round the ServerApp checkpointed (0 before the first)."""
    try:
        return int(json.loads((folder / "checkpoint.json").read_text())["completed_round"])
    except (OSError, ValueError, KeyError):
        return 0


def current_rows(doc: dict) -> list[dict]:
    return [r for r in doc["rounds"] if not r["superseded"]]


def plotted(folder: Path) -> dict:
    from PIL import Image

    return dict(Image.open(folder / "accuracy.png").text)


def test_the_guides_command_runs_its_three_site_federation(guide_federation):
    fed, creds, root = guide_federation
    config = config_for(root, creds, "guide", rounds=2)
    result = fed.run(REPO, config, timeout=900)
    assert result.ok, result.describe()
    folder = root / "outputs" / "guide"
    code, line = status_code(folder)
    assert code == 0, line
    doc = results(folder)
    assert [r["server_round"] for r in current_rows(doc)] == [1, 2]
    for row in current_rows(doc):
        assert sorted(s["site_id"] for s in row["sites"]) == SITES, row
        assert "skipped" not in row["extra"], row
    assert plotted(folder)["Rounds"] == "1,2"


def test_flwr_stop_then_resume_gives_one_continuous_results_file(guide_federation):
    fed, creds, root = guide_federation
    config = config_for(root, creds, "stop-resume", rounds=3)
    folder = root / "outputs" / "stop-resume"
    run_id = fed.submit(REPO, config)

    wait_for(lambda: checkpointed(folder) >= 1, 600, "round 1's checkpoint", fed)
    fed.flwr("stop", str(run_id), fed.connection)
    stopped = fed.wait(run_id, timeout=120)
    assert stopped.status == "finished:stopped", stopped.describe()
    done_before = checkpointed(folder)
    assert 1 <= done_before < 3

    result = fed.run(REPO, {**config, "resume": True}, timeout=900)
    assert result.ok, result.describe()
    doc = results(folder)
    assert doc["status"] == "completed" and status_code(folder)[0] == 0
    rows = current_rows(doc)
    assert [r["server_round"] for r in rows] == [1, 2, 3]
    for row in rows:
        # Every round measured on every site, the one stopped before its evaluation included.
        assert sorted(s["site_id"] for s in row["sites"]) == SITES, row
    assert [s["resumed_after_round"] for s in doc["segments"]] == [None, done_before]
    assert doc["segments"][1]["status"] == "completed"
    png = plotted(folder)
    assert (png["Rounds"], png["Resumed-after"]) == ("1,2,3", str(done_before))


def test_a_site_killed_mid_round_and_restarted_later_misses_no_round(guide_federation):
    """SIGKILL one SuperNode in round 2, start it again once the SuperLink has seen it go."""
    fed, creds, root = guide_federation
    config = config_for(root, creds, "outage", rounds=3)
    folder = root / "outputs" / "outage"
    victim = fed.supernodes[-1]
    run_id = fed.submit(REPO, config)
    # Round 1 is checkpointed just before round 2's train exchange goes out.
    wait_for(lambda: checkpointed(folder) >= 1, 600, "round 1's checkpoint", fed, poll=0.5)
    killed_at = time.monotonic()
    os.killpg(victim.process.pid, signal.SIGKILL)  # a crash: no goodbye to the SuperLink
    victim.process.popen.wait(30)

    def offline():
        nodes = {int(n["node-id"]): n["status"] for n in fed.list_nodes()}
        return nodes.get(victim.node_id) != "online"

    # Flower marks a silent node offline after 2 missed heartbeats (60 s); a node back sooner
    # would leave its lost message unanswered until round-timeout.
    wait_for(offline, 180, f"{victim.name} offline", fed, poll=2.0)
    time.sleep(max(0.0, 60 - (time.monotonic() - killed_at)))
    victim.process = fed.spawn(
        f"supernode-{victim.name}-restarted",
        victim.process.argv,
        cwd=fed.workdir / "sites" / victim.name,
    )
    result = fed.wait(run_id, timeout=900)
    assert result.ok, result.describe()

    doc = results(folder)
    assert doc["status"] == "completed", doc
    rows = current_rows(doc)
    assert [r["server_round"] for r in rows] == [1, 2, 3], rows
    for row in rows:
        assert row["sites"], row  # every round's evaluation is recorded
    assert sorted(s["site_id"] for s in rows[-1]["sites"]) == SITES
    assert any("skipped" in r["extra"] for r in rows[1:]), "the outage cost no round?"
    assert "skipped" not in rows[-1]["extra"], rows[-1]

    # Both sides in step: every site's committed private part is the round the server committed.
    from client_app.local_store import LocalPromptStore

    committed = json.loads((folder / "checkpoint.json").read_text())["committed_round"]
    assert committed == 3
    for site in SITES:
        store = LocalPromptStore(fed.workdir / "sites" / site / "state")
        stored = store.load("outage")
        assert stored is not None and stored.server_round == committed, (site, stored)
