"""Image features computed once per site and cached in the site's state directory."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch


def data_fingerprint(images: np.ndarray) -> str:
    """A content hash of a uint8 image stack (shape and bytes), hex.

    Parameters
    ----------
    images : np.ndarray
        ``(N, H, W, 3)`` uint8 images.

    Returns
    -------
    str
        SHA-256 hex digest; equal for equal image stacks only.
    """
    digest = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def atomic_torch_save(obj: object, path: Path) -> None:
    """Write ``obj`` with :func:`torch.save` so readers never see a partial file.

    The file is written beside its destination and renamed into place: a crash mid-write
    leaves the previous version (or nothing), never a truncated file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 to ``(N, 3, H, W)`` float in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def cached_image_features(
    backbone,
    images: np.ndarray,
    cache_dir: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    log=None,
) -> torch.Tensor:
    """Image features of ``images``, from the cache when the same data was seen before.

    Parameters
    ----------
    backbone : PromptableBackbone
        Frozen model; its ``name`` is part of the cache key.
    images : np.ndarray
        ``(N, H, W, 3)`` uint8 images.
    cache_dir : str or Path
        Folder of the cache (usually ``<state-dir>/features``).
    device : torch.device or str
        Where the image tower runs.
    batch_size : int
        Images per forward pass.
    log : callable, optional
        Called with a progress line while features are computed.

    Returns
    -------
    torch.Tensor
        ``(N, feature_dim)`` float32 features on the CPU.
    """
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.name)[:48]
    name_hash = hashlib.sha256(backbone.name.encode()).hexdigest()[:8]
    key = f"{safe_name}-{name_hash}-{data_fingerprint(images)[:24]}.pt"
    path = Path(cache_dir).expanduser() / key
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(cached, torch.Tensor) and cached.shape[0] == images.shape[0]:
                return cached
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed, not fatal
            pass
    chunks = []
    for begin in range(0, images.shape[0], batch_size):
        batch = images_to_tensor(images[begin : begin + batch_size]).to(device)
        with torch.no_grad():
            chunks.append(backbone.encode_images(batch).float().cpu())
        if log is not None and (begin // batch_size) % 10 == 0:
            log(f"image features: {min(begin + batch_size, len(images))}/{len(images)}")
    features = (
        torch.cat(chunks) if chunks else torch.zeros(0, backbone.feature_dim, dtype=torch.float32)
    )
    atomic_torch_save(features, path)
    return features
