"""Distributed DP rides on the shares; a site's P_L is committed only with the server's round."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from client_app.local_store import LocalPromptStore, StoredPrompt
from secpc.noise import noise_std
from secpc.protocol import (
    ProtocolConfig,
    decode_robust_answers,
    participant_answer,
    share_round,
)


def _round_trip(config: ProtocolConfig, updates: list[np.ndarray]) -> np.ndarray:
    n = len(updates)
    z = np.zeros(config.z_dim)
    plaintexts = [share_round(u, z, n, 1, config)[0] for u in updates]
    group = list(range(n))
    answers = {}
    for j in range(n):
        held = {s: plaintexts[s][j] for s in range(n)}
        answers[j] = participant_answer(held, n, [group], [group], config)[0]
    sums, wrong = decode_robust_answers(answers, updates[0].size, 1, config)
    assert wrong == ()
    return sums[0]


def test_distributed_noise_on_a_decoded_sum_has_the_calibrated_scale():
    config = ProtocolConfig(
        k=1, t=1, update_scale_bits=12, dp_epsilon=8.0, dp_rounds=10, dp_min_cluster_size=3
    )
    rng = np.random.default_rng(0)
    dim = 3000
    updates = [np.clip(rng.normal(0, 0.01, dim), -1, 1) for _ in range(3)]
    noisy = _round_trip(config, updates)
    error = noisy - np.sum(updates, axis=0)
    expected = noise_std(config.dp_mu(dim), 3, 12)
    assert expected > 0.1  # the noise is real at this budget
    assert abs(error.std() / expected - 1) < 0.1  # a 20% wrong scale fails
    assert abs(error.mean()) < 4 * expected / np.sqrt(dim)


def test_without_dp_the_decoded_sum_is_exact():
    config = ProtocolConfig(k=1, t=1, update_scale_bits=24)
    rng = np.random.default_rng(1)
    updates = [np.clip(rng.normal(0, 0.1, 50), -1, 1) for _ in range(3)]
    assert np.allclose(_round_trip(config, updates), np.sum(updates, axis=0), atol=3 * 2**-25)


def test_noise_is_refused_at_a_scale_the_sampler_cannot_reach():
    config = ProtocolConfig(update_scale_bits=24, dp_epsilon=8.0, dp_rounds=10)
    with pytest.raises(ValueError, match="scale_bits|MAX_MU|mu"):
        config.dp_mu(1536)


def _site(tmp_path):
    from client_app import prompt_handlers as handlers

    runtime = SimpleNamespace(config=SimpleNamespace(state_path=tmp_path, site_id="site-0"))
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return handlers, runtime, context


def _keep(handlers, context, runtime, name, server_round, value):
    handlers._keep_private(
        context, runtime, StoredPrompt(name, server_round, torch.full((2, 3), float(value)))
    )


def test_a_committed_round_promotes_the_pending_prompt(tmp_path):
    handlers, runtime, context = _site(tmp_path)
    _keep(handlers, context, runtime, "run", 1, 1.0)
    _keep(handlers, context, runtime, "run" + handlers.PENDING, 2, 2.0)
    stored = handlers._committed_private(context, runtime, "run", committed_round=2)
    assert stored.server_round == 2 and float(stored.local_ctx[0, 0]) == 2.0
    assert LocalPromptStore(tmp_path).load("run").server_round == 2


def test_a_skipped_round_rolls_the_pending_prompt_back(tmp_path):
    handlers, runtime, context = _site(tmp_path)
    _keep(handlers, context, runtime, "run", 1, 1.0)
    _keep(handlers, context, runtime, "run" + handlers.PENDING, 2, 2.0)
    stored = handlers._committed_private(context, runtime, "run", committed_round=1)
    assert stored.server_round == 1 and float(stored.local_ctx[0, 0]) == 1.0
    # The rolled-back prompt is gone for good: a later commit cannot resurrect it.
    later = handlers._committed_private(context, runtime, "run", committed_round=5)
    assert later.server_round == 1
    assert not LocalPromptStore(tmp_path).path("run" + handlers.PENDING).exists()
