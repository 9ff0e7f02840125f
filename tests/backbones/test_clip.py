"""CLIP backbone on a tiny random CLIPConfig model saved locally: no download anywhere."""

import pytest
import torch

from prompts.backbones import PromptableBackbone, load_backbone

LETTERS = "abcdefghijklmnopqrstuvwxyz."


def _tiny_tokenizer():
    from transformers import CLIPTokenizer

    # As in the real CLIP vocabulary, start-of-text and end-of-text are the two largest ids, so
    # the legacy "argmax of input ids" pooling rule finds the end-of-text token.
    vocab = {}
    for ch in LETTERS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = [("c", "a"), ("ca", "t</w>")]
    vocab["ca"] = len(vocab)
    vocab["cat</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="module", params=[2, None], ids=["eos-legacy-argmax", "eos-token-id"])
def clip_dir(request, tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tok = _tiny_tokenizer()
    eos = request.param if request.param is not None else tok.eos_token_id
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=40, eos_token_id=eos,
            bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8,
        ),
        projection_dim=24,
    )  # fmt: skip
    model = CLIPModel(cfg).eval()
    path = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bb(clip_dir):
    return load_backbone(f"clip:{clip_dir}")


def test_interface(bb, clip_dir):
    assert isinstance(bb, PromptableBackbone)
    assert bb.name == f"clip:{clip_dir}"
    assert bb.ctx_dim == 32 and bb.feature_dim == 24
    assert bb.logit_scale == pytest.approx(bb.model.logit_scale.exp().item())
    assert all(not p.requires_grad for p in bb.parameters())
    assert bb.model.use_kernels is False  # no compiled layers fetched from the Hub


def test_insertion_equals_get_text_features(bb):
    names = ["cat", "big dog", "a.b"]
    n_ctx = 4
    text = bb.tokenize(names, n_ctx)
    placeholder = bb.model.text_model.embeddings.token_embedding(text.input_ids[:, 1 : 1 + n_ctx])
    got = bb.encode_text(placeholder, text)
    with torch.no_grad():
        ref = bb.model.get_text_features(
            input_ids=text.input_ids, attention_mask=text.attention_mask
        )
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(
        got, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5
    )
    # the phrase initialisation is the same as encoding the plain sentence
    phrase = bb.encode_text(bb.phrase_embedding("a cat", 2), bb.tokenize(["dog"], 2))
    enc = bb.tokenizer(["a cat dog."], return_tensors="pt")
    with torch.no_grad():
        ref2 = bb.model.get_text_features(**enc)
    ref2 = ref2 if isinstance(ref2, torch.Tensor) else ref2.pooler_output
    torch.testing.assert_close(
        phrase, torch.nn.functional.normalize(ref2, dim=-1), atol=1e-5, rtol=1e-5
    )


def test_gradients_reach_ctx_only(bb):
    text = bb.tokenize(["cat", "dog"], 3)
    ctx = (0.02 * torch.randn(2, 3, bb.ctx_dim)).requires_grad_(True)
    out = bb.encode_text(ctx, text)
    assert out.shape == (2, bb.feature_dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    out.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())


def test_encode_images(bb):
    f = bb.encode_images(torch.rand(3, 3, 20, 28))
    assert f.shape == (3, bb.feature_dim)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_phrase_embedding_shape(bb):
    assert bb.phrase_embedding("a cat", 5).shape == (5, bb.ctx_dim)
    assert bb.phrase_embedding("a cat", 1).shape == (1, bb.ctx_dim)


def test_missing_local_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(OSError):
        load_backbone(f"clip:{tmp_path / 'nothing-here'}")
