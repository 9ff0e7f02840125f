"""Hugging Face CLIP backbone with CoOp-style context insertion.

The prompt ``"<X>*n_ctx <class name>."`` is tokenized once; at each call the token embeddings of
the ``n_ctx`` placeholder positions (right after the start-of-text token) are replaced by the
learnable context vectors, and the sequence goes through CLIP's own text stack exactly as
``CLIPTextModel.forward`` runs it: the text model's embedding module (token + position
embeddings) with ``inputs_embeds``, the causal (and padding) mask from ``create_causal_mask``, the
encoder with ``is_causal=True``, the final layer norm, pooling at the end-of-text token, then
``text_projection``. Pooling follows transformers 5's ``CLIPTextTransformer``: when the config's
``eos_token_id`` is 2 (old configs) the position of the largest input id (the original CLIP rule),
otherwise the first position whose id equals ``eos_token_id``. With the context vectors equal to
the placeholder tokens' own embeddings the output equals ``CLIPModel.get_text_features``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from ..device import NO_HUB_KERNELS
from .base import PromptableBackbone, TextInputs, quiet_transformers

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _from_pretrained(cls, source: str, **kwargs):
    """Load from a local path or the local Hugging Face cache first; hub only as a fallback."""
    with quiet_transformers():
        if Path(source).expanduser().exists():
            path = str(Path(source).expanduser())
            return cls.from_pretrained(path, local_files_only=True, **kwargs)
        try:
            return cls.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            return cls.from_pretrained(source, **kwargs)


class ClipBackbone(PromptableBackbone):
    """A frozen ``transformers.CLIPModel`` (any checkpoint name or local path)."""

    def __init__(self, source: str):
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel

        self.source = source
        self.model = _from_pretrained(CLIPModel, source, **NO_HUB_KERNELS)
        self.tokenizer = _from_pretrained(AutoTokenizer, source)
        self.name = f"clip:{source}"
        tcfg = self.model.config.text_config
        self.ctx_dim = int(tcfg.hidden_size)
        self.feature_dim = int(self.model.config.projection_dim)
        self.image_size = int(self.model.config.vision_config.image_size)
        mean, std = _OPENAI_MEAN, _OPENAI_STD
        try:
            from transformers import AutoImageProcessor

            proc = _from_pretrained(AutoImageProcessor, source)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:  # noqa: BLE001 - no preprocessor config: CLIP's published statistics
            pass
        self.register_buffer("img_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("img_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._placeholder_id = self._placeholder_token_id()
        self.freeze()

    # ---- image side -----------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Resize the shorter side to the model's size, center-crop, normalize, encode."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        s = self.image_size
        outs = []
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(self.device).float()
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                h, w = x.shape[-2:]
                scale = s / min(h, w)
                nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
                x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False)
                top, left = (nh - s) // 2, (nw - s) // 2
                x = x[..., top : top + s, left : left + s].clamp(0, 1)
                x = (x - self.img_mean) / self.img_std
                f = self.model.get_image_features(pixel_values=x.to(self.model.dtype))
                f = f if isinstance(f, torch.Tensor) else f.pooler_output
                outs.append(F.normalize(f.float(), dim=-1))
        return torch.cat(outs, dim=0)

    # ---- text side ------------------------------------------------------------------------
    def tokenize(self, class_names: list[str], n_ctx: int) -> TextInputs:  # noqa: D102
        ids, mask = self._coop_token_ids(class_names, n_ctx)
        return TextInputs(
            input_ids=ids,
            attention_mask=mask,
            ctx_start=1,
            n_ctx=n_ctx,
            pool_index=self._eot_index(ids),
            class_names=list(class_names),
        )

    def _eot_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        eos = self.model.text_model.eos_token_id
        ids = input_ids.to(torch.int)
        if eos == 2:  # legacy configs: original CLIP's argmax rule
            return ids.argmax(dim=-1).long()
        return (ids == eos).int().argmax(dim=-1).long()

    def encode_text(self, ctx: torch.Tensor, text: TextInputs) -> torch.Tensor:  # noqa: D102
        from transformers.masking_utils import create_causal_mask

        tm = self.model.text_model
        ctx = self._expand_ctx(ctx, text).to(self.device)
        ids = text.input_ids.to(self.device)
        tok = tm.embeddings.token_embedding(ids)
        s, e = text.ctx_start, text.ctx_start + text.n_ctx
        tok = torch.cat([tok[:, :s], ctx.to(tok.dtype), tok[:, e:]], dim=1)
        hidden = tm.embeddings(inputs_embeds=tok)
        mask = create_causal_mask(
            config=tm.config,
            inputs_embeds=hidden,
            attention_mask=text.attention_mask.to(self.device),
            past_key_values=None,
        )
        out = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
        last = tm.final_layer_norm(out.last_hidden_state)
        pooled = last[
            torch.arange(last.shape[0], device=last.device), text.pool_index.to(last.device)
        ]
        return F.normalize(self.model.text_projection(pooled), dim=-1)

    def phrase_embedding(self, phrase: str, n_ctx: int) -> torch.Tensor:  # noqa: D102
        ids = self.tokenizer(phrase, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        emb_layer = self.model.text_model.embeddings.token_embedding
        with torch.no_grad():
            emb = emb_layer(ids.to(self.device))
            pad = emb_layer(torch.tensor([self._placeholder_id], device=self.device))[0]
        return self._pad_or_truncate(emb, pad, n_ctx)

    @property
    def logit_scale(self) -> float:  # noqa: D102
        return float(self.model.logit_scale.exp())
