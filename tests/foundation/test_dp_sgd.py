import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from prompts.dp import (
    DPSGDConfig,
    PrivacyBudgetExceededError,
    append_steps,
    dp_step,
    epsilon_from_history,
    make_dp_optimizer,
    per_sample_gradients,
    poisson_schedule,
)
from prompts.learner import HierarchicalPrompt
from prompts.training import TrainConfig, train_prompt

N_CLS, N_CTX, CTX_DIM, FEAT_DIM = 3, 2, 6, 5


class TinyBackbone(nn.Module):
    """A frozen, nonlinear stand-in for the text tower: enough to exercise the batched VJP."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.class_emb = nn.Parameter(torch.randn(N_CLS, CTX_DIM, generator=gen), False)
        self.proj = nn.Linear(CTX_DIM, FEAT_DIM)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(FEAT_DIM, CTX_DIM, generator=gen))
            self.proj.bias.zero_()
        self.proj.requires_grad_(False)
        self.logit_scale = 10.0

    def encode_text(self, ctx, text_inputs):
        hidden = torch.tanh(ctx.mean(dim=1) + self.class_emb + ctx.pow(2).sum(dim=1))
        return F.normalize(self.proj(hidden), dim=-1)


def toy_problem(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    backbone = TinyBackbone()
    prompt = HierarchicalPrompt(0.1 * torch.randn(N_CTX, CTX_DIM, generator=gen), N_CLS)
    labels = torch.arange(n) % N_CLS
    features = F.normalize(torch.randn(n, FEAT_DIM, generator=gen), dim=-1)
    return backbone, prompt, features, labels


def losses_fn(backbone, features, labels):
    def losses(text):
        return F.cross_entropy(backbone.logit_scale * features @ text.t(), labels, reduction="none")

    return losses


def per_example_reference(backbone, prompt, features, labels, params):
    rows = []
    for i in range(features.shape[0]):
        text = backbone.encode_text(prompt(), None)
        loss = F.cross_entropy(
            backbone.logit_scale * features[i : i + 1] @ text.t(), labels[i : i + 1]
        )
        rows.append(torch.autograd.grad(loss, params))
    return [torch.stack([r[k] for r in rows]) for k in range(len(params))]


@pytest.mark.parametrize("vectorized", [True, False])
def test_per_sample_gradients_match_one_backward_per_example(vectorized):
    backbone, prompt, features, labels = toy_problem(n=7)
    with torch.no_grad():
        prompt.local_ctx.normal_(0, 0.1)  # make P_L matter too
    params = [prompt.global_ctx, prompt.local_ctx]
    text = backbone.encode_text(prompt(), None)
    got = per_sample_gradients(text, params, losses_fn(backbone, features, labels), vectorized)
    want = per_example_reference(backbone, prompt, features, labels, params)
    for g, w, p in zip(got, want, params, strict=True):
        assert g.shape == (7, *p.shape)
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    # The examples really differ (otherwise per-example clipping would be untestable here).
    assert not torch.allclose(got[0][0], got[0][1])


def privatized_update(features, labels, clip, noise=0.0):
    """Parameter change of one DP step with plain SGD (lr 1): minus the privatized gradient."""
    backbone, prompt, _, _ = toy_problem()
    params = [prompt.global_ctx, prompt.local_ctx]
    before = [p.detach().clone() for p in params]
    optimizer = make_dp_optimizer(
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=features.shape[0],
        generator=torch.Generator().manual_seed(0),
    )
    text = backbone.encode_text(prompt(), None)
    grads = per_sample_gradients(text, params, losses_fn(backbone, features, labels))
    dp_step(optimizer, params, grads)
    return torch.cat([(b - p.detach()).ravel() for b, p in zip(before, params, strict=True)]), grads


def test_per_example_clipping_bounds_one_examples_contribution():
    _, _, features, labels = toy_problem(n=8)
    clip = 0.05
    neighbour, labels_n = features.clone(), labels.clone()
    neighbour[3] = 40 * features[3]  # one example replaced by an extreme, misclassified one
    step, grads = privatized_update(features, labels, clip)
    candidates = []
    for label in range(N_CLS):
        labels_n[3] = label
        candidates.append((*privatized_update(neighbour, labels_n, clip), label))
    step_n, grads_n, _ = max(candidates, key=lambda c: float(c[1][0][3].norm()))
    norms = torch.cat([g.reshape(8, -1) for g in grads_n], dim=1).norm(dim=1)
    assert norms[3] > 20 * clip  # unclipped, the outlier would dominate the step
    # Replacing one example moves the averaged clipped gradient by at most 2 C / B.
    assert (step - step_n).norm() <= 2 * clip / 8 * (1 + 1e-4)
    # Each example's contribution is at most C, so the step's norm is at most C.
    assert step_n.norm() <= clip * (1 + 1e-4)
    # The clip is active: without it, the mean gradient differs.
    unclipped = torch.cat([g.mean(0).ravel() for g in grads_n])
    assert not torch.allclose(step_n, unclipped, atol=1e-4)


def test_noise_free_unclipped_step_is_the_plain_gradient():
    backbone, prompt, features, labels = toy_problem(n=8)
    step, _ = privatized_update(features, labels, clip=1e6)
    params = [prompt.global_ctx, prompt.local_ctx]
    loss = F.cross_entropy(
        backbone.logit_scale * features @ backbone.encode_text(prompt(), None).t(), labels
    )
    plain = torch.cat([g.ravel() for g in torch.autograd.grad(loss, params)])
    torch.testing.assert_close(step, plain, rtol=1e-5, atol=1e-7)


def test_noise_has_the_configured_scale():
    _, _, features, labels = toy_problem(n=8)
    clean, _ = privatized_update(features, labels, clip=0.5)
    noisy, _ = privatized_update(features, labels, clip=0.5, noise=2.0)
    # Noise std per coordinate: sigma * C / B = 2 * 0.5 / 8 = 0.125 (with P_L, 24 coordinates).
    std = (noisy - clean).std().item()
    assert 0.125 * 0.6 < std < 0.125 * 1.4


def test_dp_training_with_no_noise_and_huge_clip_matches_plain_training():
    # batch_size >= n: Poisson rate 1, every step sees the whole set, as plain full-batch steps.
    backbone, prompt_plain, features, labels = toy_problem(n=9)
    _, prompt_dp, _, _ = toy_problem(n=9)
    plain = TrainConfig(epochs=3, batch_size=9, lr=0.05)
    dp = TrainConfig(
        epochs=3,
        batch_size=9,
        lr=0.05,
        dp=DPSGDConfig(max_grad_norm=1e6, noise_multiplier=0.0, secret_seed=1),
    )
    r_plain = train_prompt(backbone, prompt_plain, None, features, labels, plain)
    r_dp = train_prompt(backbone, prompt_dp, None, features, labels, dp)
    assert r_plain.steps == r_dp.steps == 3
    assert r_plain.epsilon is None and r_plain.dp_history == ()
    assert r_dp.epsilon == math.inf  # no noise, no privacy
    for a, b in (
        (prompt_plain.global_ctx, prompt_dp.global_ctx),
        (prompt_plain.local_ctx, prompt_dp.local_ctx),
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(prompt_dp.global_ctx, toy_problem(n=9)[1].global_ctx)
    assert r_dp.loss == pytest.approx(r_plain.loss, rel=1e-5)


def opacus_epsilon(sigma, q, steps, delta):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    alphas = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=alphas)
    return get_privacy_spent(orders=alphas, rdp=rdp, delta=delta)[0]


def test_reported_epsilon_is_opacus_accounting_and_accumulates_over_rounds():
    backbone, prompt, features, labels = toy_problem(n=20)
    dp = DPSGDConfig(max_grad_norm=1.0, noise_multiplier=1.1, target_delta=1e-3, secret_seed=5)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.01, dp=dp)
    steps_per_epoch, q = poisson_schedule(20, 4)
    assert (steps_per_epoch, q) == (5, 0.2)
    first = train_prompt(backbone, prompt, None, features, labels, cfg)
    assert first.steps == 10
    assert first.dp_history == ((1.1, 0.2, 10),)
    assert first.epsilon == pytest.approx(opacus_epsilon(1.1, 0.2, 10, 1e-3), rel=1e-12)
    second = train_prompt(
        backbone, prompt, None, features, labels, cfg, dp_history=first.dp_history
    )
    assert second.dp_history == ((1.1, 0.2, 20),)
    assert second.epsilon == pytest.approx(opacus_epsilon(1.1, 0.2, 20, 1e-3), rel=1e-12)
    assert second.epsilon > first.epsilon
    # A history stored as JSON lists reads back the same.
    assert epsilon_from_history([[1.1, 0.2, 20]], 1e-3) == second.epsilon
    assert append_steps(((1.1, 0.2, 3),), 0.9, 0.2, 2) == ((1.1, 0.2, 3), (0.9, 0.2, 2))


def test_target_epsilon_is_met_over_the_planned_run_then_refused():
    backbone, prompt, features, labels = toy_problem(n=20)
    dp = DPSGDConfig(target_epsilon=3.0, target_delta=1e-3, planned_epochs=4, secret_seed=2)
    cfg = TrainConfig(epochs=2, batch_size=5, lr=0.01, dp=dp)
    history = ()
    for _ in range(2):  # two rounds of two epochs: the planned run
        result = train_prompt(backbone, prompt, None, features, labels, cfg, dp_history=history)
        history = result.dp_history
    assert 3.0 - 0.05 <= result.epsilon <= 3.0
    before = prompt.global_ctx.detach().clone()
    with pytest.raises(PrivacyBudgetExceededError, match="target_epsilon=3.0"):
        train_prompt(backbone, prompt, None, features, labels, cfg, dp_history=history)
    assert torch.equal(prompt.global_ctx, before)  # nothing trained


def test_dp_training_is_repeatable_with_a_seed_and_random_without():
    def run(seed):
        backbone, prompt, features, labels = toy_problem(n=16)
        dp = DPSGDConfig(noise_multiplier=1.0, secret_seed=seed)
        train_prompt(
            backbone, prompt, None, features, labels, TrainConfig(epochs=1, batch_size=4, dp=dp)
        )
        return prompt.global_ctx.detach().clone()

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(None), run(None))


def test_dp_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        DPSGDConfig()
    with pytest.raises(ValueError, match="exactly one"):
        DPSGDConfig(noise_multiplier=1.0, target_epsilon=1.0, planned_epochs=2)
    with pytest.raises(ValueError, match="planned_epochs"):
        DPSGDConfig(target_epsilon=1.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        DPSGDConfig(noise_multiplier=-1.0)
    with pytest.raises(ValueError, match="dp"):
        TrainConfig(dp={"noise_multiplier": 1.0})
