"""Visual domains: the same grayscale glyphs rendered four different ways.

Each domain is a deterministic function of the glyph and a per-image seed, so a site's
images are reproducible from the federation seed alone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

DOMAINS = ("clean", "inverted", "rotated", "photo")


def upsample(glyphs: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(N, h, w)`` ink intensities in ``[0, 1]`` to ``(N, size, size)``, bilinear."""
    tensor = torch.from_numpy(glyphs.astype(np.float32)).unsqueeze(1)
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return resized.squeeze(1).clamp_(0.0, 1.0).numpy()


@lru_cache(maxsize=1)
def _sample_photos() -> tuple[np.ndarray, ...]:
    # scikit-learn ships two photos with the package; no download.
    from sklearn.datasets import load_sample_images

    return tuple(img.astype(np.float32) / 255.0 for img in load_sample_images().images)


def _photo_patches(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    photos = _sample_photos()
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        span = int(rng.integers(size, 4 * size + 1))
        span = min(span, photo.shape[0], photo.shape[1])
        top = int(rng.integers(0, photo.shape[0] - span + 1))
        left = int(rng.integers(0, photo.shape[1] - span + 1))
        patch = torch.from_numpy(photo[top : top + span, left : left + span]).permute(2, 0, 1)
        out[i] = (
            F.interpolate(patch[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            .permute(1, 2, 0)
            .numpy()
        )
    return out


def render(glyphs: np.ndarray, domain: str, size: int, seed: int) -> np.ndarray:
    """Render grayscale glyphs in one visual domain.

    Parameters
    ----------
    glyphs : np.ndarray
        ``(N, h, w)`` ink intensities in ``[0, 1]`` (1 is ink).
    domain : str
        ``clean`` (dark ink on white), ``inverted`` (white ink on black), ``rotated`` (clean,
        turned 90 degrees) or ``photo`` (contrasting ink over a patch of a natural photo).
    size : int
        Output side length in pixels.
    seed : int
        Seed of the per-image randomness (photo patches).

    Returns
    -------
    np.ndarray
        ``(N, size, size, 3)`` uint8 RGB images.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain: expected one of {DOMAINS}, got {domain!r}")
    ink = upsample(glyphs, size)
    if domain == "rotated":
        ink = np.rot90(ink, k=1, axes=(1, 2))
    ink3 = np.repeat(ink[..., None], 3, axis=-1)
    if domain in ("clean", "rotated"):
        rgb = 1.0 - ink3
    elif domain == "inverted":
        rgb = ink3
    else:
        background = _photo_patches(len(glyphs), size, np.random.default_rng(seed))
        # Ink contrasts with the patch (dark ink on bright photos, light on dark ones) so the
        # glyph stays legible; the photo is the domain shift, not an occluder.
        bright = background.mean(axis=(1, 2, 3), keepdims=True) > 0.45
        ink_colour = np.where(bright, 0.0, 1.0)
        rgb = background * (1.0 - 0.9 * ink3) + ink_colour * 0.9 * ink3
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
