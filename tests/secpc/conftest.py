"""Shared SecFPP federations for the protocol, privacy and attack tests (in-process grid)."""

import contextlib

import numpy as np
import pytest

from benchmarks.federation import run_federation

SITES = 6


@pytest.fixture(scope="session")
def num_sites():
    return SITES


@pytest.fixture(scope="session")
def sites_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sites")


@pytest.fixture(scope="session")
def federation(sites_root, tmp_path_factory):
    """``run(strategy, name, rounds=2, reply_hook=None, **run_config)`` -> (run, secrets).

    ``secrets`` records what each site shared in the clear *before* sharing (its update with
    appended statistics and its descriptor), so tests can look for them in what left it.
    """
    out = tmp_path_factory.mktemp("out")

    def run(strategy, name, rounds=2, reply_hook=None, **extra):
        import client_app.secure_handlers as handlers

        secrets = []
        original = handlers.seal_shares

        def spy(context, request, update, z):
            site = handlers._site(context).site_id
            secrets.append((site, request.server_round, np.array(update), np.array(z)))
            return original(context, request, update, z)

        overrides = {
            "strategy": strategy,
            "num-server-rounds": rounds,
            "local-epochs": 1,
            "batch-size": 512,
            "learning-rate": 0.02,
            "num-domains": 2,
            "sim-state-root": str(sites_root),
            "output-dir": str(out),
            "run-name": name,
            "device": "cpu",
            "site-wait-timeout": 0.0,
            **extra,
        }
        with contextlib.ExitStack() as stack:
            patch = stack.enter_context(pytest.MonkeyPatch.context())
            patch.setattr(handlers, "seal_shares", spy)
            result = run_federation(SITES, overrides, reply_hook=reply_hook, echo=lambda _: None)
        return result, secrets

    return run
