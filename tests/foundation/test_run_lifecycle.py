"""results.json through failure, stop and resume; the status command scripts rely on."""

import json
import time

import pytest

from benchmarks.federation import run_federation
from server_app import status
from server_app.config_check import RunConfigError
from strategies.baselines import LocalOnly
from strategies.registry import STRATEGIES
from strategies.results_io import write_json_atomic

SITES = 3


class CheckpointedLocal(LocalOnly):
    """``local`` with the checkpoint contract of SecFPP, so resume can be tested cheaply.

    Like SecFPP it publishes real round numbers (Flower's round plus the resumed offset) and
    does not checkpoint a skipped round (here: the rounds in ``skip``).
    """

    skip: tuple[int, ...] = (2,)

    @classmethod
    def from_settings(cls, settings, on_round_end=None, checkpoint_path=None):
        strategy = super().from_settings(settings, on_round_end, checkpoint_path)
        strategy.checkpoint_path, strategy.offset = checkpoint_path, 0
        return strategy

    def _publish(self, record):
        record.server_round += self.offset
        super()._publish(record)
        if record.server_round not in self.skip:
            write_json_atomic(self.checkpoint_path, {"completed_round": record.server_round})

    def load_state_dict(self, state):
        self.offset = int(state["completed_round"])
        return self.offset


@pytest.fixture(autouse=True)
def checkpointed_local(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "ckpt-local", CheckpointedLocal)


@pytest.fixture(scope="module")
def sites_root(tmp_path_factory):
    # Shared by every run here, so image features are computed once.
    return tmp_path_factory.mktemp("sites")


def run(tmp_path, sites_root, reply_hook=None, **extra):
    overrides = {
        "strategy": "ckpt-local",
        "num-server-rounds": 3,
        "local-epochs": 1,
        "batch-size": 512,
        "num-domains": 1,
        "device": "cpu",
        "sim-state-root": str(sites_root),
        "output-dir": str(tmp_path / "out"),
        "run-name": "life",
        **extra,
    }
    return run_federation(SITES, overrides, reply_hook=reply_hook, echo=lambda line: None)


def fail_after(replies: int, exc: BaseException):
    """A reply hook that lets ``replies`` replies through, then raises (an outage)."""
    seen = []

    def hook(node_id, reply):
        seen.append(node_id)
        if len(seen) > replies:
            raise exc
        return reply

    return hook


def doc_of(tmp_path):
    return json.loads((tmp_path / "out" / "life" / "results.json").read_text())


def test_failure_then_resume_keeps_every_round(tmp_path, sites_root, capsys):
    folder = tmp_path / "out" / "life"
    # Rounds 1 and 2 finish (train + evaluate: 2 x 3 replies each); round 3 loses the grid.
    with pytest.raises(ConnectionError):
        run(tmp_path, sites_root, fail_after(4 * SITES, ConnectionError("SuperLink gone")))
    doc = doc_of(tmp_path)
    assert doc["status"] == "failed"
    assert doc["error"] == "ConnectionError: SuperLink gone"
    assert [r["server_round"] for r in doc["rounds"]] == [1, 2]
    assert doc["final_mean_accuracy"] is None and doc["last_round"] == 2
    assert (folder / "accuracy.png").stat().st_size > 1000
    assert status.main([str(folder)]) == 1
    assert "SuperLink gone" in capsys.readouterr().out

    # Round 2 was not checkpointed (a skipped round): the resumed run does 2 and 3 again.
    resumed = run(tmp_path, sites_root, resume=True)
    assert [r.server_round for r in resumed.writer.records] == [2, 3]
    doc = doc_of(tmp_path)
    assert doc["status"] == "completed" and doc["error"] is None
    rows = [(r["server_round"], r["segment"], r["superseded"]) for r in doc["rounds"]]
    assert rows == [(1, 0, False), (2, 0, True), (2, 1, False), (3, 1, False)]
    assert [s["resumed_after_round"] for s in doc["segments"]] == [None, 1]
    assert [s["status"] for s in doc["segments"]] == ["failed", "completed"]
    assert doc["final_mean_accuracy"] == pytest.approx(resumed.writer.records[-1].mean_accuracy)
    assert status.main([str(folder)]) == 0
    assert "resumed after round 1" in capsys.readouterr().out


def test_a_stop_from_outside_is_recorded_as_stopped(tmp_path, sites_root):
    with pytest.raises(KeyboardInterrupt):
        run(
            tmp_path,
            sites_root,
            fail_after(2 * SITES, KeyboardInterrupt()),
            **{"num-server-rounds": 2},
        )
    doc = doc_of(tmp_path)
    assert doc["status"] == "stopped"
    assert [r["server_round"] for r in doc["rounds"]] == [1]
    assert status.main([str(tmp_path / "out" / "life")]) == 2


def test_bad_config_fails_before_any_site_is_contacted(tmp_path, sites_root):
    sent = []

    def hook(node_id, reply):
        sent.append(node_id)
        return reply

    with pytest.raises(RunConfigError, match="'dirichlet-alpha' = 0.0"):
        run(tmp_path, sites_root, hook, **{"dirichlet-alpha": 0.0})
    assert sent == []
    doc = doc_of(tmp_path)
    assert doc["status"] == "failed" and "dirichlet-alpha" in doc["error"]
    assert doc["rounds"] == []


def test_a_refused_resume_keeps_the_rounds_it_would_continue(tmp_path):
    folder = tmp_path / "out" / "life"
    previous = {
        "strategy": "ckpt-local",
        "status": "failed",
        "rounds": [{"server_round": 1, "mean_accuracy": 0.5, "worst_accuracy": 0.4}],
    }
    write_json_atomic(folder / "results.json", previous)
    # No checkpoint next to it: resume is refused, the earlier round stays.
    with pytest.raises(ValueError, match="no checkpoint"):
        run(tmp_path, tmp_path / "sites", resume=True)
    doc = doc_of(tmp_path)
    assert doc["status"] == "failed" and "no checkpoint" in doc["error"]
    assert [r["server_round"] for r in doc["rounds"]] == [1]


@pytest.mark.parametrize(
    "state,code",
    [("completed", 0), ("failed", 1), ("stopped", 2), ("running", 3), ("mystery", 4)],
)
def test_status_exit_codes(tmp_path, state, code, capsys):
    write_json_atomic(
        tmp_path / "results.json",
        {"status": state, "strategy": "local", "last_round": 2, "segments": [{"run_id": 7}]},
    )
    assert status.main([str(tmp_path)]) == code
    assert capsys.readouterr().out.startswith(state)
    # A file written by another run is no answer about this one.
    assert status.main([str(tmp_path), "--run-id", "8"]) == status.EXIT_NO_RESULTS


def test_status_without_results(tmp_path, capsys):
    assert status.main([str(tmp_path / "nowhere")]) == status.EXIT_NO_RESULTS
    assert "no results" in capsys.readouterr().out
    (tmp_path / "results.json").write_text("{half")
    assert status.main([str(tmp_path)]) == status.EXIT_NO_RESULTS


def test_status_wait_gives_up_on_a_run_that_stays_running(tmp_path):
    write_json_atomic(tmp_path / "results.json", {"status": "running", "segments": []})
    assert status.main([str(tmp_path), "--wait", "0.2"]) == 3


def test_a_simulation_too_small_for_the_strategy_fails_at_once(tmp_path):
    sent = []

    def hook(node_id, reply):
        sent.append(node_id)
        return reply

    # Flower's default simulation has 2 SuperNodes; the default secfpp needs 5.
    start = time.monotonic()
    with pytest.raises(RunConfigError) as info:
        run_federation(
            2,
            {"output-dir": str(tmp_path / "out"), "sim-state-root": str(tmp_path / "s")},
            reply_hook=hook,
            echo=lambda line: None,
        )
    assert time.monotonic() - start < 30
    assert sent == []
    message = str(info.value)
    assert "2 simulated sites" in message and "num-supernodes=" in message
    assert "secure-t=2" in message


@pytest.mark.parametrize(
    "flower,code", [("finished:stopped", 2), ("finished:failed", 1), ("running", 3), (None, 3)]
)
def test_status_asks_flower_when_the_file_cannot_tell(tmp_path, monkeypatch, flower, code):
    # In simulation `flwr stop` kills the ServerApp before it can write: the file says running.
    write_json_atomic(tmp_path / "results.json", {"status": "running", "segments": [{"run_id": 7}]})
    asked = []
    monkeypatch.setattr(
        status, "flower_run_status", lambda run_id, conn: asked.append((run_id, conn)) or flower
    )
    assert status.main([str(tmp_path), "--run-id", "7", "--connection", "local"]) == code
    assert asked == [(7, "local")]
    # Without --connection nothing is asked.
    assert status.main([str(tmp_path), "--run-id", "7"]) == 3 and len(asked) == 1


@pytest.mark.parametrize(
    "exc,state",
    [(SystemExit(0), "stopped"), (KeyboardInterrupt(), "stopped"), (OSError("disk"), "failed")],
)
def test_how_an_exception_is_recorded(tmp_path, exc, state):
    from server_app.results import ResultsWriter

    writer = ResultsWriter(tmp_path, {"strategy": "local"}, echo=lambda line: None)
    writer.start()
    writer.fail(exc)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["status"] == state
    assert doc["error"].startswith(type(exc).__name__)
