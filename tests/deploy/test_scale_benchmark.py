"""benchmarks.scale keeps what it measured when a run fails (a real simulation SuperLink)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_a_run_past_its_timeout_still_reports_memory_and_exits_nonzero(tmp_path):
    from benchmarks import scale

    out = tmp_path / "scale.json"
    argv = ["--sites", "6", "--rounds", "1", "--timeout", "5"]
    argv += ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    with pytest.raises(SystemExit) as stopped:
        scale.main(argv)
    assert "not finished after 5s" in str(stopped.value)
    figures = json.loads(out.read_text())
    assert figures["status"] == "failed"
    assert figures["error"].startswith("run ") and "not finished after 5s" in figures["error"]
    # The memory sampled before the stop is kept, and so is any round that completed
    # before the stop took effect (the final evaluation never did).
    assert figures["peak_rss_bytes"] > 0
    assert len(figures["seconds_per_round"]) == len(figures["senders_per_round"]) <= 1
