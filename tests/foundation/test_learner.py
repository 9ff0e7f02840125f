import pytest
import torch

from prompts.learner import HierarchicalPrompt, PromptConfig, initial_global_context
from prompts.training import TrainConfig, evaluate_prompt, train_prompt

CLASSES = ["zero", "one", "two"]


@pytest.fixture(scope="module")
def toy(two_tower):
    # Three separable "image" clusters placed at the text features of the class names, so a
    # prompt can learn them; features are unit vectors like the real cache.
    text = two_tower.tokenize(CLASSES, 4)
    prompt = HierarchicalPrompt(initial_global_context(two_tower, PromptConfig(n_ctx=4)), 3)
    with torch.no_grad():
        centres = two_tower.encode_text(prompt(), text)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    # Shuffle the centres so the zero-shot prompt is wrong and learning has work to do.
    feats = centres[(labels + 1) % 3] + 0.05 * torch.randn(60, centres.shape[1], generator=gen)
    feats = torch.nn.functional.normalize(feats, dim=1)
    return text, feats, labels


def test_prompt_shapes_and_separate_parameter_groups(two_tower):
    init = initial_global_context(two_tower, PromptConfig(n_ctx=4))
    prompt = HierarchicalPrompt(init, n_cls=3)
    assert init.shape == (4, two_tower.ctx_dim)
    assert prompt.global_ctx.shape == (4, two_tower.ctx_dim)
    assert prompt.local_ctx.shape == (3, 4, two_tower.ctx_dim)
    assert prompt().shape == (3, 4, two_tower.ctx_dim)
    # P_L starts at zero, so the personalized prompt starts at the shared one.
    assert torch.equal(prompt(use_local=True), prompt(use_local=False))
    groups = prompt.parameter_groups(train_global=True, train_local=True)
    assert [g["name"] for g in groups] == ["global", "local"]
    assert groups[0]["params"][0] is prompt.global_ctx
    assert groups[1]["params"][0] is prompt.local_ctx
    with pytest.raises(ValueError, match="nothing to train"):
        prompt.parameter_groups(False, False)


def test_a_class_specific_shared_part_keeps_each_class_context_and_a_private_residual():
    gen = torch.Generator().manual_seed(0)
    per_class = torch.randn(3, 4, 8, generator=gen)
    prompt = HierarchicalPrompt(per_class, n_cls=3)
    assert prompt.class_specific and prompt.n_ctx == 4 and prompt.n_cls == 3
    assert prompt.local_ctx.shape == (3, 4, 8)
    with torch.no_grad():
        prompt.local_ctx[1] += 1.0
    # Each class gets its own shared context (not one broadcast), plus its residual.
    assert torch.equal(prompt(use_local=False), per_class)
    assert torch.equal(prompt(use_local=True)[1], per_class[1] + 1.0)
    assert torch.equal(prompt(use_local=True)[0], per_class[0])
    assert not HierarchicalPrompt(per_class[0], n_cls=3).class_specific
    with pytest.raises(ValueError, match="one context per class"):
        HierarchicalPrompt(per_class, n_cls=4)
    with pytest.raises(ValueError, match="expected shape"):
        HierarchicalPrompt(torch.zeros(8), n_cls=3)


def test_phrase_and_random_initialisation_are_reproducible(two_tower):
    a = initial_global_context(two_tower, PromptConfig(n_ctx=4, ctx_init="", seed=3))
    b = initial_global_context(two_tower, PromptConfig(n_ctx=4, ctx_init="", seed=3))
    c = initial_global_context(two_tower, PromptConfig(n_ctx=4, ctx_init="", seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    phrase = initial_global_context(two_tower, PromptConfig(n_ctx=4, ctx_init="a photo of a"))
    assert torch.equal(phrase, two_tower.phrase_embedding("a photo of a", 4))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n_ctx"):
        PromptConfig(n_ctx=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="train_local"):
        TrainConfig(train_local=True, use_local=False)


def test_load_parts_refuses_wrong_shapes(two_tower):
    prompt = HierarchicalPrompt(torch.zeros(4, two_tower.ctx_dim), n_cls=3)
    with pytest.raises(ValueError, match="global_ctx: expected shape"):
        prompt.load_parts(global_ctx=torch.zeros(5, two_tower.ctx_dim))
    with pytest.raises(ValueError, match="local_ctx: expected shape"):
        prompt.load_parts(local_ctx=torch.zeros(2, 4, two_tower.ctx_dim))


def test_training_moves_only_the_prompt_and_learns(two_tower, toy):
    text, feats, labels = toy
    prompt = HierarchicalPrompt(initial_global_context(two_tower, PromptConfig(n_ctx=4)), 3)
    before = {k: v.clone() for k, v in two_tower.state_dict().items()}
    _, acc_before = evaluate_prompt(two_tower, prompt, text, feats, labels)
    g0, l0 = prompt.global_ctx.detach().clone(), prompt.local_ctx.detach().clone()
    train_prompt(
        two_tower, prompt, text, feats, labels, TrainConfig(epochs=15, batch_size=60, lr=0.05)
    )
    _, acc_after = evaluate_prompt(two_tower, prompt, text, feats, labels)
    assert acc_after > acc_before + 0.3
    assert not torch.equal(prompt.global_ctx, g0) and not torch.equal(prompt.local_ctx, l0)
    for name, value in two_tower.state_dict().items():
        assert torch.equal(value, before[name]), f"backbone weight {name} changed"
    assert all(p.grad is None for p in two_tower.parameters())


def test_shared_only_training_leaves_local_part_at_zero(two_tower, toy):
    text, feats, labels = toy
    prompt = HierarchicalPrompt(initial_global_context(two_tower, PromptConfig(n_ctx=4)), 3)
    cfg = TrainConfig(epochs=2, batch_size=30, train_local=False, use_local=False)
    train_prompt(two_tower, prompt, text, feats, labels, cfg)
    assert torch.count_nonzero(prompt.local_ctx) == 0


def test_training_is_deterministic_on_cpu(two_tower, toy):
    text, feats, labels = toy
    runs = []
    for _ in range(2):
        prompt = HierarchicalPrompt(initial_global_context(two_tower, PromptConfig(n_ctx=4)), 3)
        train_prompt(
            two_tower, prompt, text, feats, labels, TrainConfig(epochs=2, batch_size=16, seed=7)
        )
        runs.append(prompt.personalized())
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("rank", [0, 8])
def test_an_untrained_adapter_is_the_identity_and_training_moves_it(two_tower, toy, rank):
    from prompts.adapter import FeatureAdapter

    text, feats, labels = toy
    adapter = FeatureAdapter(feats.shape[1], rank=rank, seed=3)
    assert torch.allclose(adapter(feats), feats, atol=1e-6)
    prompt = HierarchicalPrompt(initial_global_context(two_tower, PromptConfig(n_ctx=4)), 3)
    assert evaluate_prompt(two_tower, prompt, text, feats, labels, True, adapter) == pytest.approx(
        evaluate_prompt(two_tower, prompt, text, feats, labels), abs=1e-6
    )
    cfg = TrainConfig(epochs=15, batch_size=60, lr=0.05, train_global=False)
    loss_before = evaluate_prompt(two_tower, prompt, text, feats, labels, True, adapter)[0]
    train_prompt(two_tower, prompt, text, feats, labels, cfg, adapter=adapter)
    moved = adapter.weight if rank == 0 else adapter.down
    assert torch.count_nonzero(moved) > 0
    assert evaluate_prompt(two_tower, prompt, text, feats, labels, True, adapter)[0] < loss_before
    # Adapted features stay unit vectors, like the frozen tower's.
    assert torch.allclose(adapter(feats).norm(dim=1), torch.ones(feats.shape[0]), atol=1e-5)


def test_the_adapter_refuses_bad_settings_and_dp_training(two_tower, toy):
    from prompts.adapter import FeatureAdapter
    from prompts.dp import DPSGDConfig

    with pytest.raises(ValueError, match="rank"):
        FeatureAdapter(16, rank=17)
    with pytest.raises(ValueError, match="lr_scale"):
        FeatureAdapter(16, lr_scale=0.0)
    text, feats, labels = toy
    prompt = HierarchicalPrompt(initial_global_context(two_tower, PromptConfig(n_ctx=4)), 3)
    cfg = TrainConfig(epochs=1, dp=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0))
    with pytest.raises(ValueError, match="adapter"):
        train_prompt(
            two_tower, prompt, text, feats, labels, cfg, adapter=FeatureAdapter(feats.shape[1])
        )
