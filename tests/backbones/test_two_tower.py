"""Two-tower backbone: shapes, normalisation, gradients, alignment cache, fitted-map property."""

import shutil

import pytest
import torch

from prompts.backbones import PromptableBackbone, alignment, default_cache_dir, load_backbone


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A private cache folder, seeded from the user's cache when it holds the same fit.

    The fit takes about 30 s on 2 cores; seeding keeps the suite fast on a machine that has
    already fitted it, and a fresh machine (CI) still runs the real fit here once.
    """
    path = tmp_path_factory.mktemp("backbone-cache")
    existing = alignment.cache_path(default_cache_dir())
    if existing.exists():
        shutil.copy2(existing, alignment.cache_path(path))
    return path


@pytest.fixture(scope="module")
def bb(cache_dir):
    torch.manual_seed(0)
    return load_backbone("two-tower", cache_dir=cache_dir)


def test_interface(bb):
    assert isinstance(bb, PromptableBackbone)
    assert bb.ctx_dim == 384 and bb.feature_dim == 1280
    assert bb.name.startswith("two-tower-") and "r96" in bb.name
    assert bb.logit_scale > 1.0
    assert all(not p.requires_grad for p in bb.parameters())
    bb.train()
    assert not any(m.training for m in bb.modules())
    # No compiled layers fetched from the Hub (transformers 5 turns them on by default).
    assert bb.text_tower.use_kernels is False


def test_encode_images_shape_and_norm(bb):
    x = torch.rand(5, 3, 28, 40)
    f = bb.encode_images(x)
    assert f.shape == (5, bb.feature_dim)
    assert not f.requires_grad
    torch.testing.assert_close(f.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    # grayscale input is accepted and equals its three-channel repeat
    g = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(bb.encode_images(g), bb.encode_images(g.expand(-1, 3, -1, -1)))


def test_phrase_embedding_shape(bb):
    e = bb.phrase_embedding("a photo of a", 4)
    assert e.shape == (4, bb.ctx_dim)
    assert bb.phrase_embedding("a photo of a", 16).shape == (16, bb.ctx_dim)
    assert bb.phrase_embedding("a photo of a", 2).shape == (2, bb.ctx_dim)
    # truncation keeps the last tokens ("of a")
    torch.testing.assert_close(bb.phrase_embedding("a photo of a", 2), e[2:])


def test_phrase_ctx_equals_plain_sentence(bb):
    names = ["cat", "ankle boot"]
    text = bb.tokenize(names, n_ctx=4)
    got = bb.encode_text(bb.phrase_embedding("a photo of a", 4), text)
    want = bb.project_text(bb.encode_sentences([f"a photo of a {n}." for n in names]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_encode_text_gradients_reach_ctx_only(bb):
    text = bb.tokenize(["dog", "sea lion", "t-shirt"], n_ctx=8)
    ctx = (0.02 * torch.randn(3, 8, bb.ctx_dim)).requires_grad_(True)
    t = bb.encode_text(ctx, text)
    assert t.shape == (3, bb.feature_dim)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    t.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())
    # a shared (n_ctx, ctx_dim) context broadcasts over the classes
    assert bb.encode_text(ctx[0].detach(), text).shape == (3, bb.feature_dim)


def test_autocast_bfloat16_cpu(bb):
    text = bb.tokenize(["cat", "dog"], n_ctx=4)
    ctx = bb.phrase_embedding("a photo of a", 4).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = bb.encode_text(ctx, text)
        f = bb.encode_images(torch.rand(2, 3, 8, 8))
    assert torch.isfinite(t).all() and f.dtype == torch.float32
    t.float().sum().backward()
    assert ctx.grad is not None and torch.isfinite(ctx.grad).all()


def test_alignment_cache_hit(bb, cache_dir):
    files = list(cache_dir.glob("two-tower-alignment-*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    fits = alignment.FIT_COUNT
    again = load_backbone("two-tower", cache_dir=cache_dir)
    assert alignment.FIT_COUNT == fits
    assert files[0].stat().st_mtime_ns == mtime
    torch.testing.assert_close(again.align_weight, bb.align_weight)
    assert not list(cache_dir.glob("*.tmp"))


def test_alignment_maps_names_to_own_classifier_row(bb):
    """A fitted-map property: names land nearer their own ImageNet classifier row than others."""
    classes = alignment.imagenet_classes()
    idx = torch.arange(0, 1000, 7)
    names = [classes[i][1][0] for i in idx]
    t = bb.project_text(bb.encode_sentences([f"a photo of a {n}." for n in names]))
    w, _ = bb.imagenet_classifier
    sims = t @ torch.nn.functional.normalize(w[idx], dim=-1).T
    own = sims.diag()
    others = (sims.sum(1) - own) / (len(idx) - 1)
    assert (own > others).float().mean() > 0.95
    assert (sims.argmax(1) == torch.arange(len(idx))).float().mean() > 0.5


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        load_backbone("resnet")
    with pytest.raises(ValueError, match="unknown two-tower option"):
        load_backbone("two-tower:foo=1")
