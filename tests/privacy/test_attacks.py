"""The privacy attacks recover what is planted, so a weak attack cannot pass for privacy."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from privacy import attacks
from privacy.attacks import ServerObservation, SiteObservation
from privacy.observe import observe
from privacy.scoring import make_prompt, score_prompt
from secpc import messages as wire

N_CTX, DIM, N_CLS = 2, 6, 5


# -- a tiny stand-in for the two-tower backbone ----------------------------------------------
@dataclass
class TinyText:
    """Per-class embeddings and per-class maps from the context to the text feature."""

    class_emb: torch.Tensor
    maps: torch.Tensor

    def to(self, device):
        return self


class TinyBackbone:
    """Text feature of class c: normalize(class_emb[c] + maps[c] @ vec(ctx[c])).

    Per-class maps make a shared ``P_G`` move each class differently, as a real text encoder
    does, so a trained ``P_G`` scores better than the initial one.
    """

    logit_scale = 10.0

    def encode_text(self, ctx, text):
        flat = ctx.reshape(ctx.shape[0], -1)
        return torch.nn.functional.normalize(
            text.class_emb + torch.einsum("cij,cj->ci", text.maps, flat), dim=-1
        )


def tiny_task(seed=0, n=400, feat_dim=8):
    """A task a planted ``P_G`` solves: each class's images lie around that prompt's text feature."""
    gen = torch.Generator().manual_seed(seed)
    text = TinyText(
        class_emb=torch.randn(N_CLS, feat_dim, generator=gen),
        maps=torch.randn(N_CLS, feat_dim, N_CTX * DIM, generator=gen),
    )
    target = torch.randn(N_CTX, DIM, generator=gen)
    backbone = TinyBackbone()
    centres = backbone.encode_text(target.expand(N_CLS, -1, -1), text)
    labels = torch.randint(0, N_CLS, (n,), generator=gen)
    feats = torch.nn.functional.normalize(
        centres[labels] + 0.3 * torch.randn(n, feat_dim, generator=gen), dim=-1
    )
    return backbone, text, feats, labels, target


# -- a recorded wire, as observe() reads it ---------------------------------------------------
@dataclass
class FakeWire:
    direction: str
    node_id: int
    message_type: str
    group_id: str
    content: RecordDict

    def message(self):
        return self  # observe() reads only .content


def _protocol():
    from secpc.protocol import ProtocolConfig

    return ProtocolConfig()


def test_observe_rebuilds_the_twins_site_prompt_exactly():
    rng = np.random.default_rng(0)
    init = rng.normal(size=(N_CTX, DIM))
    sent, update, final = (rng.normal(scale=0.1, size=(N_CTX, DIM)) for _ in range(3))
    stats = np.array([0.5, 0.1, 0.0, 0.0, 1.0])
    train_down = wire.TrainRequest(2, "clustered", {}, _protocol(), ["site-0"], 1, offset=sent)
    reply = wire.TrainReply(
        "site-0",
        evaluation=wire.Evaluation(0.5, 1.0, 10),
        update_dim=update.size,
        plain=(np.r_[update.ravel(), stats], np.zeros(4)),
    )
    eval_down = wire.EvaluateRequest(2, "clustered", offset=final)
    records = [
        FakeWire("down", 7, "train", "2", train_down.to_content()),
        FakeWire("up", 7, "train", "2", reply.to_content()),
        FakeWire("down", 7, "evaluate", "2", eval_down.to_content()),
    ]
    obs = observe("clustered", records, init)
    site = obs.sites["site-0"]
    # float32 on the wire: the server rebuilds what the site holds to float32 precision.
    np.testing.assert_allclose(site.rebuilt, init + sent + update, atol=1e-6)
    np.testing.assert_allclose(site.held, init + final, atol=1e-6)
    np.testing.assert_allclose(site.update, update.ravel(), atol=1e-6)
    assert attacks.attack_prompt(site) is site.rebuilt or np.array_equal(
        attacks.attack_prompt(site), site.rebuilt
    )


def test_observe_secfpp_has_no_single_site_prompt():
    rng = np.random.default_rng(1)
    init = rng.normal(size=(N_CTX, DIM))
    final = rng.normal(size=(N_CTX, DIM))
    reply = wire.TrainReply(
        "site-3",
        evaluation=wire.Evaluation(0.5, 1.0, 10),
        update_dim=N_CTX * DIM,
        shares={"site-4": b"sealed"},
    )
    records = [
        FakeWire("up", 1, "train", "3", reply.to_content()),
        FakeWire("down", 1, "evaluate", "3", wire.EvaluateRequest(3, "secfpp", final).to_content()),
    ]
    site = observe("secfpp", records, init).sites["site-3"]
    assert site.rebuilt is None and site.update is None
    np.testing.assert_allclose(site.held, init + final, atol=1e-6)
    assert list(attacks.candidate_prompts(site)) == ["held"]


def test_observe_baseline_upload_is_the_sites_prompt():
    rng = np.random.default_rng(2)
    init, sent, uploaded, final = (
        rng.normal(size=(N_CTX, DIM)).astype(np.float32) for _ in range(4)
    )

    def arrays(value):
        return ArrayRecord({"global-ctx": Array(value)})

    up = RecordDict(
        {
            "site": ConfigRecord({"site-id": "site-1"}),
            "arrays": arrays(uploaded),
            "metrics": MetricRecord({"num-examples": 3}),
        }
    )
    records = [
        FakeWire("down", 5, "train", "4", RecordDict({"arrays": arrays(sent)})),
        FakeWire("up", 5, "train", "4", up),
        FakeWire("down", 5, "evaluate", "4", RecordDict({"arrays": arrays(final)})),
    ]
    site = observe("promptfl", records, init).sites["site-1"]
    np.testing.assert_array_equal(site.rebuilt, uploaded)
    np.testing.assert_array_equal(site.held, final)
    np.testing.assert_allclose(site.update, (uploaded - sent).ravel(), atol=1e-6)


# -- 1. prompt stealing ---------------------------------------------------------------------
def test_stealing_a_held_prompt_matches_the_sites_own_accuracy():
    backbone, text, feats, labels, own_global = tiny_task()
    init = torch.zeros(N_CTX, DIM)
    own_acc = score_prompt(backbone, make_prompt(own_global, N_CLS), text, feats, labels, False)
    # Planted: the server holds the site's exact P_G (rebuilt) and the initial one (held).
    site = SiteObservation("site-0", held=init.numpy(), rebuilt=own_global.double().numpy())
    stolen = {
        name: score_prompt(backbone, make_prompt(p, N_CLS), text, feats, labels, False).accuracy
        for name, p in attacks.candidate_prompts(site).items()
    }
    summary = attacks.stealing_summary({"site-0": stolen}, {"site-0": own_acc.accuracy})
    assert summary["prompt_stealing_accuracy"] == pytest.approx(own_acc.accuracy, abs=1e-9)
    assert summary["stealing_ratio"] == pytest.approx(1.0)
    # The scoring tells prompts apart: the initial prompt alone steals much less.
    assert own_acc.accuracy > 0.8
    assert stolen["held"] < own_acc.accuracy - 0.3


def test_shadow_prompt_training_lowers_its_members_loss():
    backbone, text, feats, labels, _ = tiny_task(seed=1, n=60)
    from privacy.scoring import train_shadow

    members, others = slice(0, 30), slice(30, None)
    shadow = train_shadow(
        backbone, np.zeros((N_CTX, DIM)), N_CLS, text, feats[members], labels[members],
        epochs=60, batch_size=30, lr=0.05, seed=0,
    )  # fmt: skip
    scores = score_prompt(backbone, shadow, text, feats, labels, True)
    assert attacks.membership_auc(scores.losses[members], scores.losses[others]) > 0.5


def test_stealing_summary_takes_each_sites_best_candidate():
    summary = attacks.stealing_summary(
        {"a": {"held": 0.2, "rebuilt": 0.6}, "b": {"held": 0.4}}, {"a": 0.8, "b": 0.8}
    )
    assert summary["prompt_stealing_accuracy"] == pytest.approx(0.5)
    assert summary["prompt_stealing_accuracy_by_candidate"] == {
        "held": pytest.approx(0.3),
        "rebuilt": pytest.approx(0.6),
    }


# -- 2. class mix ---------------------------------------------------------------------------
def test_planted_class_mix_is_recovered():
    rng = np.random.default_rng(0)
    reference = rng.dirichlet(np.ones(10), size=500)
    true_mix = rng.dirichlet(np.ones(10) * 0.5)
    # A prompt trained on the mix tilts every prediction by it (a prior shift).
    tilted = reference * true_mix
    tilted /= tilted.sum(axis=1, keepdims=True)
    estimate = attacks.implied_class_mix(tilted, reference)
    assert attacks.class_mix_correlation(estimate, true_mix) > 0.99
    # Against another site's mix the same estimate correlates far less.
    other = rng.permutation(true_mix)
    assert attacks.class_mix_correlation(estimate, other) < 0.9


def test_class_mix_of_an_unmoved_prompt_is_undefined():
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=50)
    estimate = attacks.implied_class_mix(probs, probs)
    assert np.allclose(estimate, 0.0)
    assert np.isnan(attacks.class_mix_correlation(estimate, [0.1, 0.2, 0.3, 0.4]))


def test_label_distribution():
    np.testing.assert_allclose(attacks.label_distribution([0, 0, 2], 4), [2 / 3, 0, 1 / 3, 0])


# -- 3. membership --------------------------------------------------------------------------
def _overfit_losses(seed):
    """Per-example losses of a planted overfit model: logistic regression on random labels."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 200))
    y = rng.integers(0, 2, size=80)
    members, nonmembers = slice(0, 40), slice(40, None)
    model = LogisticRegression(C=1e4, max_iter=5000).fit(x[members], y[members])
    p = model.predict_proba(x)[np.arange(80), y]
    losses = -np.log(np.clip(p, 1e-12, 1))
    return losses[members], losses[nonmembers]


def test_membership_on_a_planted_overfit_model():
    member, nonmember = _overfit_losses(0)
    assert attacks.membership_auc(member, nonmember) > 0.95
    # Threshold from a shadow model the attacker trained itself, applied to the target.
    shadow_member, shadow_nonmember = _overfit_losses(1)
    threshold = attacks.calibrate_loss_threshold(shadow_member, shadow_nonmember)
    assert attacks.membership_advantage(member, nonmember, threshold) > 0.8


def test_membership_of_separable_losses_is_perfect():
    rng = np.random.default_rng(0)
    member, nonmember = rng.uniform(0, 0.1, 200), rng.uniform(1, 2, 200)
    assert attacks.membership_auc(member, nonmember) == 1.0
    threshold = attacks.calibrate_loss_threshold(member, nonmember)
    assert 0.1 > threshold >= member.max() - 1e-12
    assert attacks.membership_advantage(member, nonmember, threshold) == 1.0


def test_membership_of_identical_distributions_is_chance():
    rng = np.random.default_rng(0)
    member, nonmember = rng.exponential(size=3000), rng.exponential(size=3000)
    assert attacks.membership_auc(member, nonmember) == pytest.approx(0.5, abs=0.03)
    shadow_threshold = attacks.calibrate_loss_threshold(
        rng.exponential(size=3000), rng.exponential(size=3000)
    )
    assert abs(attacks.membership_advantage(member, nonmember, shadow_threshold)) < 0.06


# -- 4. domains -----------------------------------------------------------------------------
def test_domain_ari_is_one_for_the_domains_under_any_labels():
    domains = {f"site-{i}": i % 4 for i in range(12)}
    relabelled = {s: (d + 1) % 4 for s, d in domains.items()}
    assert attacks.domain_ari(relabelled, domains) == 1.0
    one_cluster = dict.fromkeys(domains, 0)
    assert attacks.domain_ari(one_cluster, domains) == 0.0


def test_kmeans_on_planted_domain_updates_finds_the_domains():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 30)) * 5
    domains = {f"site-{i}": i % 4 for i in range(12)}
    updates = {s: centres[d] + rng.normal(size=30) * 0.1 for s, d in domains.items()}
    assert attacks.domain_ari(attacks.kmeans_assignment(updates, 4), domains) == 1.0
    noise = {s: rng.normal(size=30) for s in domains}
    assert attacks.domain_ari(attacks.kmeans_assignment(noise, 4), domains) < 0.5


def test_an_observation_without_prompts_is_refused():
    obs = ServerObservation("secfpp", {"site-0": SiteObservation("site-0")})
    with pytest.raises(ValueError, match="site-0"):
        attacks.attack_prompt(obs.sites["site-0"])


# -- the benchmark end to end ---------------------------------------------------------------
def test_privacy_cli_reports_every_figure_per_method(tmp_path, capsys):
    from benchmarks.privacy import METRICS, main

    out = tmp_path / "privacy.json"
    result = main(
        [
            "--sites", "6", "--rounds", "1", "--methods", "hierarchical,secfpp",
            "--local-epochs", "1", "--batch-size", "512",
            "--state-root", str(tmp_path / "state"), "--out", str(out),
        ]
    )  # fmt: skip
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(last["methods"]) == {"hierarchical", "secfpp"}
    for method, figures in last["methods"].items():
        assert "error" not in figures, figures.get("error")
        for key in METRICS:
            assert key in figures, (method, key)
        assert figures["epsilon"] is None
        # Figures of a run whose rounds were skipped would describe the initial prompt only.
        assert figures["rounds_skipped"] == {}, figures["rounds_skipped"]
        # The benchmark's own prompt is the one the site evaluated.
        assert figures["own_vs_declared_max_abs_diff"] < 1e-4
        assert 0.0 <= figures["prompt_stealing_accuracy"] <= 1.0
    # SecFPP's server never received a single site's prompt or update.
    assert "rebuilt" not in last["methods"]["secfpp"]["prompt_stealing_accuracy_by_candidate"]
    assert "rebuilt" in last["methods"]["hierarchical"]["prompt_stealing_accuracy_by_candidate"]
    assert out.with_suffix(".md").read_text().count("| secfpp |") == 1
    assert out.with_suffix(".png").stat().st_size > 0
