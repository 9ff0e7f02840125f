"""Check the whole run config before any site does any work.

Flower passes ``[tool.flwr.app.config]`` plus ``--run-config`` overrides to the ServerApp with
only TOML typing applied. Without this check a bad value surfaces late (an impossible
``secure-t`` at round 1, after Ray and every site have started) or far from its cause (a
``dirichlet-alpha`` of 0 fails inside every ClientApp). :func:`check_run_config` runs first in
:func:`server_app.app.run_server` and refuses a bad config with ONE line naming the key, the
value, what was expected and how to fix it.

The minimum number of sites a strategy needs is :func:`sites_needed`; the README and
``deploy/README.md`` tabulate it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Embedded data sets a simulated site can generate from its ``partition-id``.
SIMULATION_DATASETS = ("digits-domains", "fashion-mnist-domains", "digits-label-swap")
#: Strategies whose sites exchange secret shares or cluster; they need several sites per round.
CLUSTERING_STRATEGIES = ("secfpp", "clustered")
#: The shipped default of ``min-sites`` (``pyproject.toml``): treated as "automatic" until the
#: default there becomes ``0`` (see :func:`effective_min_sites`).
SHIPPED_MIN_SITES = 2

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_BACKBONE = re.compile(r"^(two-tower(:res=\d+)?|clip:.+)$")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MAX_SEED = 2**32


class RunConfigError(ValueError):
    """A run-config value the app cannot work with.

    Parameters
    ----------
    key : str
        The run-config key, e.g. ``dirichlet-alpha``.
    value : Any
        The value received.
    expected : str
        What was expected, in words.
    fix : str
        How to fix it (one short sentence; optional).
    """

    def __init__(self, key: str, value: Any, expected: str, fix: str = "") -> None:
        self.key, self.value, self.expected, self.fix = key, value, expected, fix
        text = f"run config '{key}' = {value!r}: expected {expected}"
        super().__init__(f"{text}; {fix}" if fix else text)


@dataclass(frozen=True)
class KeySpec:
    """How one run-config key is checked.

    Attributes
    ----------
    kind : type
        ``int``, ``float``, ``str`` or ``bool`` (an int is accepted for a float key).
    ok : callable, optional
        Range or pattern check on a value of the right type.
    expected : str
        The expectation, in words, for the error message.
    fix : str
        A hint for the error message.
    """

    kind: type
    ok: Callable[[Any], bool] | None = None
    expected: str = ""
    fix: str = ""


def _strategies() -> tuple[str, ...]:
    # Imported lazily: the registry pulls in the strategies (numpy, Flower).
    from strategies.registry import STRATEGIES

    return tuple(sorted(STRATEGIES))


def _path_set(value: str) -> bool:
    return bool(value.strip())


#: Every key of ``[tool.flwr.app.config]``; ``tests/foundation`` checks the two stay equal.
SCHEMA: dict[str, KeySpec] = {
    "strategy": KeySpec(str, lambda v: v in _strategies(), "one of the registered strategies"),
    "num-server-rounds": KeySpec(int, lambda v: v >= 1, "an integer >= 1"),
    "local-epochs": KeySpec(int, lambda v: v >= 1, "an integer >= 1"),
    "learning-rate": KeySpec(float, lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "batch-size": KeySpec(int, lambda v: v >= 1, "an integer >= 1"),
    "min-sites": KeySpec(
        int, lambda v: v >= 0, "an integer >= 0 (0: the fewest the strategy can work with)"
    ),
    "fraction-train": KeySpec(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "round-timeout": KeySpec(float, lambda v: 0 < v < float("inf"), "seconds > 0"),
    "seed": KeySpec(int, lambda v: 0 <= v < _MAX_SEED, "an integer in [0, 2^32)"),
    "run-name": KeySpec(
        str,
        lambda v: bool(RUN_NAME.match(v)),
        "a plain folder name: letters, digits, '_', '.', '-', starting with a letter or digit",
    ),
    "output-dir": KeySpec(str, _path_set, "a folder path"),
    "backbone": KeySpec(
        str,
        lambda v: bool(_BACKBONE.match(v)),
        "'two-tower', 'two-tower:res=<pixels>' or 'clip:<checkpoint or local path>'",
    ),
    "n-ctx": KeySpec(int, lambda v: v >= 1, "an integer >= 1"),
    "ctx-init": KeySpec(str),
    "dataset": KeySpec(
        str,
        lambda v: v in SIMULATION_DATASETS,
        f"one of {', '.join(SIMULATION_DATASETS)}",
        "deployed sites choose their data in their site YAML (data.source)",
    ),
    "num-domains": KeySpec(int, lambda v: 1 <= v <= 4, "an integer in [1, 4]"),
    "dirichlet-alpha": KeySpec(
        float,
        lambda v: 0 < v < float("inf"),
        "a number > 0",
        "smaller values give more label skew, e.g. dirichlet-alpha=0.1",
    ),
    "device": KeySpec(str, lambda v: bool(_DEVICE.match(v)), "auto, cpu, cuda or cuda:<index>"),
    "sim-state-root": KeySpec(str, _path_set, "a folder path"),
    "sim-max-images": KeySpec(
        int, lambda v: v >= 0, "an integer >= 0", "0 keeps every image of a site's partition"
    ),
    "resume": KeySpec(bool, None, "true or false"),
    "secure-k": KeySpec(int, lambda v: v >= 1, "an integer >= 1"),
    "secure-t": KeySpec(
        int, lambda v: v >= 1, "an integer >= 1", "secure-t=0 would give no privacy"
    ),
    "update-scale-bits": KeySpec(int, lambda v: 0 <= v <= 40, "an integer in [0, 40]"),
    "update-bound": KeySpec(float, lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "z-dim": KeySpec(int, lambda v: v >= 1, "an integer >= 1"),
    "z-scale-bits": KeySpec(int, lambda v: 0 <= v <= 40, "an integer in [0, 40]"),
    "z-bound": KeySpec(float, lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "max-clusters": KeySpec(int, lambda v: v >= 1, "an integer >= 1"),
    "min-cluster-size": KeySpec(int, lambda v: v >= 1, "an integer >= 1"),
    "split-ratio": KeySpec(float, lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "merge-ratio": KeySpec(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0"),
    "site-identities": KeySpec(str, None, "a path to site-identities.yaml, or empty"),
    "cluster-rule": KeySpec(str, lambda v: v in ("verified", "lloyd"), "'verified' or 'lloyd'"),
    "cluster-score-threshold": KeySpec(
        float, lambda v: -1 < v <= 1, "a number in (-1, 1]", "0.35 is calibrated (README)"
    ),
    "cluster-oracle": KeySpec(bool, None, "true or false (simulation only)"),
    "descriptor-prompt-weight": KeySpec(float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "committee-size": KeySpec(
        int,
        lambda v: v >= 0,
        "an integer >= 0 (0: automatic)",
        "a positive size must be at least 2(k+t-1)+1",
    ),
    "site-wait-timeout": KeySpec(
        float, lambda v: 0 <= v < float("inf"), "seconds >= 0", "0 never waits for sites"
    ),
    "dp": KeySpec(
        str,
        lambda v: v in ("none", "distributed", "dp-sgd"),
        "'none', 'distributed' or 'dp-sgd'",
    ),
    "dp-epsilon": KeySpec(float, lambda v: 0 < v < float("inf"), "a finite number > 0"),
    "dp-delta": KeySpec(float, lambda v: 0 < v < 1, "a number in (0, 1)"),
    "dp-clip": KeySpec(float, lambda v: 0 < v < float("inf"), "a finite number > 0"),
}


def _fallback_spec(key: str) -> KeySpec | None:
    """A type-only spec for a key the ServerApp reads but :data:`SCHEMA` does not list yet.

    Keys are added to ``pyproject.toml`` and :class:`server_app.settings.ServerSettings` by
    whoever needs them; until SCHEMA gains a range check (``tests/foundation`` asks for one),
    such a key is checked for its type instead of being refused as unknown.
    """
    from dataclasses import MISSING, fields

    from .settings import ServerSettings

    for f in fields(ServerSettings):
        if f.name.replace("_", "-") == key and f.default is not MISSING:
            return KeySpec(type(f.default))
    return None


_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
}


def _check_type(key: str, value: Any, kind: type) -> Any:
    """Return ``value`` (an int widened for a float key) or raise naming the key."""
    # bool is an int in Python; `resume=1` or `seed=true` is a mistake worth naming.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is kind:
        return value
    if kind is str:
        raise RunConfigError(
            key,
            value,
            "a string",
            f"string values need double quotes inside the single quotes: "
            f"--run-config '{key}=\"{value}\"'",
        )
    raise RunConfigError(key, value, _TYPE_WORDS[kind])


def sites_needed(run_config: dict[str, Any]) -> tuple[int, str]:
    """The fewest sites a round of this run can work with, and why.

    Parameters
    ----------
    run_config : dict
        A run config whose values already passed the per-key checks.

    Returns
    -------
    tuple of int and str
        The number and a short reason naming the keys it comes from.
    """
    strategy = run_config.get("strategy", "secfpp")
    if strategy not in CLUSTERING_STRATEGIES:
        return 1, f"strategy {strategy!r} works with any number of sites"
    k, t = run_config.get("secure-k", 1), run_config.get("secure-t", 2)
    cluster = run_config.get("min-cluster-size", 3)
    # The distance step is a degree-2 polynomial: 2(k+t-1)+1 answers to decode. The strategy
    # checks this for both secfpp and its plaintext twin (same round plan).
    decode = 2 * (k + t - 1) + 1
    need = max(decode, cluster)
    why = (
        f"strategy {strategy!r} with secure-k={k}, secure-t={t} decodes from "
        f"2(k+t-1)+1 = {decode} sites and min-cluster-size={cluster}"
    )
    return need, why


def effective_min_sites(run_config: dict[str, Any]) -> tuple[int, str]:
    """The ``min-sites`` the strategy gets, and a log line when it differs from the config.

    ``0`` means "the fewest the strategy can work with" (:func:`sites_needed`). The shipped
    default ``2`` is treated the same way while ``pyproject.toml`` still carries it (it is
    below what the default ``secfpp`` needs). Any other value below the need is refused.

    Raises
    ------
    RunConfigError
        If ``min-sites`` is set below :func:`sites_needed`.
    """
    min_sites = run_config.get("min-sites", SHIPPED_MIN_SITES)
    need, why = sites_needed(run_config)
    if min_sites >= need:
        return min_sites, ""
    if min_sites in (0, SHIPPED_MIN_SITES):
        return need, f"min-sites: using {need} ({why})"
    lower_t = run_config.get("secure-t", 2) > 1
    raise RunConfigError(
        "min-sites",
        min_sites,
        f"at least {need}, because {why}",
        f"set min-sites={need} and run at least {need} sites"
        + (", or lower secure-t" if lower_t else ""),
    )


def check_run_config(run_config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Check every key and value of a run config before anything starts.

    Parameters
    ----------
    run_config : dict
        ``[tool.flwr.app.config]`` with the ``--run-config`` overrides applied.

    Returns
    -------
    tuple of dict and list of str
        The config with int values of float keys widened to float and ``min-sites`` set to
        :func:`effective_min_sites`; and lines worth logging (what was adjusted, and why).

    Raises
    ------
    RunConfigError
        For the first bad key: unknown, wrong type, out of range, or a combination the chosen
        strategy cannot run (the message names the key, the value, the expectation, the fix).
    """
    specs = dict(SCHEMA)
    for key in run_config:
        if key not in specs and (spec := _fallback_spec(key)) is not None:
            specs[key] = spec
        if key not in specs:
            close = difflib.get_close_matches(key, SCHEMA, n=1)
            hint = (
                f"did you mean '{close[0]}'?"
                if close
                else "see README.md, 'Configuration reference'"
            )
            raise RunConfigError(key, run_config[key], "a known key", hint)
    out: dict[str, Any] = {}
    for key, spec in specs.items():
        if key not in run_config:
            continue
        value = _check_type(key, run_config[key], spec.kind)
        if spec.ok is not None and not spec.ok(value):
            expected = spec.expected
            if key == "strategy":
                expected = f"one of {', '.join(_strategies())}"
            raise RunConfigError(key, value, expected, spec.fix)
        out[key] = value
    _check_combinations(out)
    out["min-sites"], note = effective_min_sites(out)
    return out, [note] if note else []


def _check_combinations(cfg: dict[str, Any]) -> None:
    """Rules that involve more than one key, or the file system of the ServerApp's host."""
    strategy = cfg.get("strategy", "secfpp")
    if cfg.get("resume", False):
        from strategies.registry import strategy_class

        if not hasattr(strategy_class(strategy), "load_state_dict"):
            raise RunConfigError(
                "resume",
                True,
                "false for strategy " + repr(strategy) + ", which keeps no checkpoint",
                "resume works with " + " and ".join(CLUSTERING_STRATEGIES),
            )
    identities = cfg.get("site-identities", "")
    if identities and not Path(identities).expanduser().is_file():
        raise RunConfigError(
            "site-identities",
            identities,
            "an existing file on the ServerApp's host (the SuperLink host in deployment)",
            "write it with `python -m deploy.credentials`, or leave it empty in simulation",
        )
    if strategy == "secfpp" and cfg.get("min-cluster-size", 3) < 2:
        raise RunConfigError(
            "min-cluster-size",
            cfg["min-cluster-size"],
            "at least 2 for strategy 'secfpp'",
            "with 1 a decoded cluster sum can be a single site's update",
        )
    if cfg.get("dp", "none") == "distributed":
        if strategy != "secfpp":
            raise RunConfigError(
                "dp",
                "distributed",
                "strategy 'secfpp' (the noise rides on its secret-shared cluster sums)",
                'use dp="dp-sgd" for other strategies',
            )
        if cfg.get("update-scale-bits", 24) > 16:
            raise RunConfigError(
                "update-scale-bits",
                cfg["update-scale-bits"],
                'at most 16 with dp="distributed" (the noise is added at this scale)',
                "set update-scale-bits=16",
            )
    if cfg.get("dp", "none") == "dp-sgd" and strategy == "zeroshot":
        raise RunConfigError("dp", "dp-sgd", "a strategy that trains", "zeroshot trains nothing")
    if strategy in CLUSTERING_STRATEGIES:
        _check_protocol(cfg)


def _check_protocol(cfg: dict[str, Any]) -> None:
    """Let the protocol's own parameter checks run now rather than at round 1."""
    from secpc.protocol import ProtocolConfig

    keys = ("secure-k", "secure-t", "update-scale-bits", "update-bound", "z-dim", "z-scale-bits")
    try:
        ProtocolConfig(
            k=cfg.get("secure-k", 1),
            t=cfg.get("secure-t", 2),
            update_scale_bits=cfg.get("update-scale-bits", 24),
            update_bound=cfg.get("update-bound", 1.0),
            z_dim=cfg.get("z-dim", 32),
            z_scale_bits=cfg.get("z-scale-bits", 16),
            z_bound=cfg.get("z-bound", 8.0),
        )
    except ValueError as exc:
        shown = {k: cfg[k] for k in keys if k in cfg}
        raise RunConfigError(
            "secure-k/secure-t", shown, f"parameters the SecPC field supports ({exc})"
        ) from exc
