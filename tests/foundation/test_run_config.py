"""The ServerApp refuses a bad run config at start, in one line naming the key and the fix."""

import tomllib
from pathlib import Path

import pytest

from server_app.config_check import (
    SCHEMA,
    RunConfigError,
    check_run_config,
    effective_min_sites,
    sites_needed,
)

ROOT = Path(__file__).resolve().parents[2]
with (ROOT / "pyproject.toml").open("rb") as _handle:
    DEFAULTS = dict(tomllib.load(_handle)["tool"]["flwr"]["app"]["config"])

#: One bad value per key of [tool.flwr.app.config]; a new key without an entry fails the
#: parametrized test below (KeyError), so the schema and this table cannot fall behind.
BAD = {
    "strategy": "nonsense",
    "num-server-rounds": 0,
    "local-epochs": 0,
    "learning-rate": 0.0,
    "batch-size": -1,
    "min-sites": -1,
    "fraction-train": 1.5,
    "round-timeout": 0.0,
    "seed": -3,
    "run-name": "a/b",
    "output-dir": " ",
    "backbone": "resnet",
    "n-ctx": 0,
    "ctx-init": 3,
    "dataset": "image-folder",
    "num-domains": 5,
    "dirichlet-alpha": 0.0,
    "device": "gpu",
    "sim-state-root": "",
    "sim-max-images": -1,
    "resume": 1,
    "secure-k": 0,
    "secure-t": 0,
    "update-scale-bits": 41,
    "update-bound": -1.0,
    "z-dim": 0,
    "z-scale-bits": -1,
    "z-bound": 0.0,
    "max-clusters": 0,
    "min-cluster-size": 0,
    "split-ratio": 0.0,
    "merge-ratio": -0.5,
    "site-identities": "/nonexistent/site-identities.yaml",
    "site-wait-timeout": -1.0,
    "dp": "laplace",
    "dp-epsilon": 0.0,
    "dp-delta": 1.0,
    "dp-clip": 0.0,
    "committee-size": -1,
    "cluster-rule": "kmeans",
    "cluster-score-threshold": 2.0,
    "cluster-oracle": "yes",
    "descriptor-prompt-weight": 1.5,
}


def test_schema_has_a_range_check_for_every_key_of_pyproject():
    # A new key in [tool.flwr.app.config] needs an entry in server_app/config_check.py SCHEMA
    # (and a bad value in BAD below).
    assert set(DEFAULTS) <= set(SCHEMA)


def test_a_key_only_server_settings_knows_is_type_checked_not_refused(monkeypatch):
    from server_app import config_check

    monkeypatch.delitem(config_check.SCHEMA, "round-timeout")
    checked, _ = check_run_config({**DEFAULTS, "round-timeout": 5})
    assert checked["round-timeout"] == 5.0
    with pytest.raises(RunConfigError, match="'round-timeout' = 'soon': expected a number"):
        check_run_config({**DEFAULTS, "round-timeout": "soon"})


def test_the_shipped_defaults_pass():
    checked, _ = check_run_config(DEFAULTS)
    assert checked["strategy"] == DEFAULTS["strategy"]


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_key_with_a_bad_value_fails_naming_the_key(key):
    with pytest.raises(RunConfigError) as info:
        check_run_config({**DEFAULTS, key: BAD[key]})
    message = str(info.value)
    assert info.value.key == key
    assert message.startswith(f"run config '{key}' = {BAD[key]!r}: expected ")
    assert "\n" not in message


def test_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(RunConfigError, match="did you mean 'secure-t'") as info:
        check_run_config({**DEFAULTS, "secure_t": 1})
    assert info.value.key == "secure_t"


def test_unquoted_string_gets_the_quoting_rule():
    # `--run-config strategy=3` reaches the app as an int; the fix is the TOML string form.
    with pytest.raises(RunConfigError, match=r"""--run-config 'strategy="3"'"""):
        check_run_config({**DEFAULTS, "strategy": 3})


def test_int_for_a_float_key_is_widened_and_bool_is_never_an_int():
    checked, _ = check_run_config({**DEFAULTS, "learning-rate": 1})
    assert checked["learning-rate"] == 1.0 and isinstance(checked["learning-rate"], float)
    with pytest.raises(RunConfigError, match="'seed' = True: expected an integer"):
        check_run_config({**DEFAULTS, "seed": True})


def test_dirichlet_alpha_zero_blames_dirichlet_alpha_not_secure_t():
    with pytest.raises(RunConfigError) as info:
        check_run_config({**DEFAULTS, "dirichlet-alpha": 0})
    assert info.value.key == "dirichlet-alpha"
    assert "secure-t" not in str(info.value)


@pytest.mark.parametrize(
    "strategy,k,t,cluster,need",
    [
        ("secfpp", 1, 2, 3, 5),
        ("secfpp", 1, 1, 3, 3),
        ("secfpp", 2, 2, 3, 7),
        ("clustered", 1, 1, 4, 4),
        ("hierarchical", 1, 2, 3, 1),
        ("local", 1, 2, 3, 1),
    ],
)
def test_sites_needed(strategy, k, t, cluster, need):
    cfg = {"strategy": strategy, "secure-k": k, "secure-t": t, "min-cluster-size": cluster}
    assert sites_needed(cfg)[0] == need


def test_min_sites_below_the_need_is_refused_with_the_fix():
    with pytest.raises(RunConfigError) as info:
        check_run_config({**DEFAULTS, "strategy": "secfpp", "secure-t": 2, "min-sites": 3})
    message = str(info.value)
    assert info.value.key == "min-sites"
    assert "at least 5" in message and "min-sites=5" in message and "secure-t" in message


def test_min_sites_zero_and_the_shipped_default_mean_automatic():
    cfg = {**DEFAULTS, "strategy": "secfpp", "secure-t": 2}
    assert effective_min_sites({**cfg, "min-sites": 0})[0] == 5
    checked, notes = check_run_config({**cfg, "min-sites": 2})
    assert checked["min-sites"] == 5
    assert notes and "min-sites: using 5" in notes[0]
    checked, notes = check_run_config({**DEFAULTS, "strategy": "hierarchical", "min-sites": 2})
    assert checked["min-sites"] == 2 and notes == []


def test_resume_with_a_strategy_without_checkpoints_is_refused():
    with pytest.raises(RunConfigError, match="keeps no checkpoint") as info:
        check_run_config({**DEFAULTS, "strategy": "local", "resume": True})
    assert info.value.key == "resume"


def test_secfpp_refuses_single_site_clusters():
    with pytest.raises(RunConfigError) as info:
        check_run_config({**DEFAULTS, "min-cluster-size": 1})
    assert info.value.key == "min-cluster-size"
    check_run_config({**DEFAULTS, "strategy": "clustered", "min-cluster-size": 1})


def test_the_documented_minimum_table_matches_the_rule():
    # README and deploy guide both carry the table of sites needed; keep them honest.
    for doc in (ROOT / "README.md", ROOT / "deploy" / "README.md"):
        text = doc.read_text()
        for k, t in ((1, 1), (1, 2), (1, 3), (2, 1)):
            need = sites_needed(
                {"strategy": "secfpp", "secure-k": k, "secure-t": t, "min-cluster-size": 3}
            )[0]
            row = f"| `secfpp`, `clustered` | {k} | {t} | {need} |"
            assert row in text, f"{doc.name} lacks the row {row}"


@pytest.mark.parametrize("key,value", [("n-ctx", 0), ("num-domains", 0), ("dirichlet-alpha", 0.0)])
def test_a_site_names_the_key_too(key, value):
    from client_app.settings import ClientSettings

    with pytest.raises(ValueError, match=f"run config '{key}' = {value!r}: expected"):
        ClientSettings.from_run_config({**DEFAULTS, key: value})
