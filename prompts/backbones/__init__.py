"""Frozen image/text backbones with CoOp-style context insertion (see README.md here)."""

from .base import PromptableBackbone, TextInputs, default_cache_dir, load_backbone

__all__ = ["PromptableBackbone", "TextInputs", "default_cache_dir", "load_backbone"]
