"""The backbone interface every prompt learner talks to, and the loader that picks one by name.

A :class:`PromptableBackbone` is a frozen image tower plus a frozen text tower whose token
embeddings can be replaced by learnable context vectors (CoOp layout
``<n_ctx placeholders> <class name>.``). Only the context vectors ever receive gradients.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_CACHE_DIR = Path("~/.cache/secfpp/backbones")
#: The token whose embeddings the context vectors replace (a single token in both tokenizers).
PLACEHOLDER = "X"


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Resolve the cache folder: the argument, or ``~/.cache/secfpp/backbones``."""
    if cache_dir is None:
        cache_dir = DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser()


@dataclass
class TextInputs:
    """Tokenized CoOp prompts ``<n_ctx placeholders> <class name>.`` for a fixed list of classes.

    Attributes
    ----------
        input_ids: (n_cls, L) token ids, padded to a common length.
        attention_mask: (n_cls, L) 1 for real tokens, 0 for padding.
        ctx_start: index of the first placeholder token (the same for every row).
        n_ctx: number of placeholder tokens, replaced by the context vectors.
        pool_index: (n_cls,) pooling position (end-of-text for CLIP; unused by mean pooling).
        class_names: the class names, in row order.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    ctx_start: int
    n_ctx: int
    pool_index: torch.Tensor
    class_names: list[str] = field(default_factory=list)

    @property
    def n_cls(self) -> int:
        """Number of classes (rows)."""
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> TextInputs:
        """Return a copy with every tensor on ``device`` (no copy when already there)."""
        return TextInputs(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            ctx_start=self.ctx_start,
            n_ctx=self.n_ctx,
            pool_index=self.pool_index.to(device),
            class_names=list(self.class_names),
        )


class PromptableBackbone(torch.nn.Module, abc.ABC):
    """Abstract frozen image/text backbone with CoOp-style context insertion in the text tower.

    Every parameter is frozen (``requires_grad=False``) and the module is kept in eval mode;
    ``train()`` is a no-op so a caller's ``model.train()`` cannot switch on dropout or batch-norm
    updates in the towers.
    """

    name: str
    ctx_dim: int
    feature_dim: int

    def freeze(self) -> None:
        """Freeze every parameter and put every submodule in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> PromptableBackbone:  # noqa: D102
        # Frozen towers stay in eval mode whatever the caller asks.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the backbone's weights."""
        return next(self.parameters()).device

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            images: float (B, 3, H, W) in [0, 1], any H and W (a single channel is repeated to
                three); the backbone resizes and normalizes itself.

        Returns
        -------
            (B, feature_dim) L2-normalized features, computed under ``torch.no_grad``.
        """

    @abc.abstractmethod
    def tokenize(self, class_names: list[str], n_ctx: int) -> TextInputs:
        """Tokenize ``"<n_ctx placeholders> <class name>."`` for every class (call once, cache)."""

    @abc.abstractmethod
    def encode_text(self, ctx: torch.Tensor, text: TextInputs) -> torch.Tensor:
        """Encode the prompts with the placeholders' token embeddings replaced by ``ctx``.

        Args:
            ctx: (n_cls, n_ctx, ctx_dim) context vectors, or (n_ctx, ctx_dim) shared by all
                classes. May require grad.
            text: the output of :meth:`tokenize`.

        Returns
        -------
            (n_cls, feature_dim) L2-normalized text features, differentiable w.r.t. ``ctx`` only.
        """

    @abc.abstractmethod
    def phrase_embedding(self, phrase: str, n_ctx: int) -> torch.Tensor:
        """Token embeddings (n_ctx, ctx_dim) of ``phrase`` (no special tokens), for initialisation.

        A phrase with fewer than ``n_ctx`` tokens is left-padded with the placeholder token's
        embedding, so the encoded prompt is exactly the text ``"X X ... <phrase> <class>."``;
        a longer phrase keeps its last ``n_ctx`` tokens (the words next to the class name).
        """

    @property
    @abc.abstractmethod
    def logit_scale(self) -> float:
        """Multiplier applied to cosine similarities to obtain logits."""

    # ---- shared helpers -------------------------------------------------------------------
    def _placeholder_token_id(self) -> int:
        ids = self.tokenizer(PLACEHOLDER, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"placeholder {PLACEHOLDER!r} is not a single token: {ids}")
        return int(ids[0])

    def _coop_token_ids(
        self, class_names: list[str], n_ctx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of ``"X X ... <name>."`` for every class.

        Both tokenizers put one special token first, so the placeholders must sit at positions
        ``1..n_ctx``; anything else would make ``encode_text`` overwrite the wrong tokens.
        """
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
        prefix = " ".join([PLACEHOLDER] * n_ctx)
        texts = [f"{prefix} {c}.".strip() for c in class_names]
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        ids = enc["input_ids"]
        if n_ctx and not bool((ids[:, 1 : 1 + n_ctx] == self._placeholder_id).all()):
            raise RuntimeError("placeholder tokens are not at positions 1..n_ctx")
        return ids, enc["attention_mask"]

    @staticmethod
    def _expand_ctx(ctx: torch.Tensor, text: TextInputs) -> torch.Tensor:
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(text.n_cls, -1, -1)
        if ctx.dim() != 3 or ctx.shape[0] != text.n_cls or ctx.shape[1] != text.n_ctx:
            raise ValueError(
                f"ctx must have shape ({text.n_cls}, {text.n_ctx}, ctx_dim) or "
                f"({text.n_ctx}, ctx_dim), got {tuple(ctx.shape)}"
            )
        return ctx

    @staticmethod
    def _pad_or_truncate(emb: torch.Tensor, pad_row: torch.Tensor, n_ctx: int) -> torch.Tensor:
        if emb.shape[0] >= n_ctx:
            return emb[emb.shape[0] - n_ctx :].clone()
        pad = pad_row.unsqueeze(0).expand(n_ctx - emb.shape[0], -1)
        return torch.cat([pad, emb], dim=0).clone()


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' weight-loading progress bar for the duration, then restore it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_backbone(
    name: str,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
) -> PromptableBackbone:
    """Load a frozen backbone by name.

    Args:
        name: ``"two-tower"`` (the offline default: EfficientNet-Lite0 + all-MiniLM-L6-v2 with an
            alignment fitted by this project; not CLIP) or ``"clip:<checkpoint name or local
            path>"`` (a Hugging Face ``CLIPModel``; a hub name works offline when it is in the
            local Hugging Face cache).
        device: where to put the weights (``"auto"`` picks cuda when available).
        cache_dir: folder for the two-tower alignment cache (default
            ``~/.cache/secfpp/backbones``).

    Raises
    ------
        ValueError: on an unknown backbone name.
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "two-tower" or name.startswith("two-tower:"):
        from .two_tower import TwoTowerBackbone

        opts = name.split(":", 1)[1] if ":" in name else ""
        kwargs = {}
        if opts:
            for item in opts.split(","):
                key, _, value = item.partition("=")
                if key != "res" or not value.isdigit():
                    raise ValueError(
                        f"unknown two-tower option {item!r} in backbone name {name!r}; "
                        "the only option is res=<pixels>, e.g. 'two-tower:res=112'"
                    )
                kwargs["image_size"] = int(value)
        return TwoTowerBackbone(cache_dir=default_cache_dir(cache_dir), **kwargs).to(device)
    if name.startswith("clip:") and len(name) > len("clip:"):
        from .clip import ClipBackbone

        return ClipBackbone(name[len("clip:") :]).to(device)
    raise ValueError(
        f"unknown backbone {name!r}: expected 'two-tower' (offline default, optionally "
        "'two-tower:res=<pixels>') or 'clip:<Hugging Face checkpoint name or local path>'"
    )
