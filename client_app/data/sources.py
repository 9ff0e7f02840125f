"""Raw data sources: scikit-learn's digits, Debian's Fashion-MNIST, and image folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_NAMES = (
    "T-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def digits_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as ink intensities in ``[0, 1]`` and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_glyphs(folder: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (train and test, 70,000 images) from the Debian package's idx files.

    Raises
    ------
    FileNotFoundError
        If the package ``dataset-fashion-mnist`` is not installed.
    """
    names = ("train", "t10k")
    files = [
        folder / f"{n}-{kind}-idx{d}-ubyte.gz"
        for n in names
        for kind, d in (("images", 3), ("labels", 1))
    ]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({missing[0]}); install the Debian package "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
        )
    images = np.concatenate([_read_idx(files[0]), _read_idx(files[2])]).astype(np.float32) / 255.0
    labels = np.concatenate([_read_idx(files[1]), _read_idx(files[3])]).astype(np.int64)
    return images, labels


def image_folder(
    root: str | Path, class_names: tuple[str, ...], size: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read ``root/<class>/<image>`` into ``(N, size, size, 3)`` uint8 images and labels.

    Parameters
    ----------
    root : str or Path
        Folder with one sub-folder per class.
    class_names : tuple of str
        Class folders to use, in label order; empty for every sub-folder, sorted.
    size : int
        Images are resized (squashed) to ``size x size``.

    Returns
    -------
    tuple
        ``(images, labels, class_names)``.

    Raises
    ------
    FileNotFoundError
        If a named class folder is missing or a class has no images.
    """
    from PIL import Image

    root = Path(root).expanduser()
    names = class_names or tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if len(names) < 2:
        raise FileNotFoundError(f"{root}: expected at least two class folders, found {len(names)}")
    images, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{root}: class folder {name!r} is missing")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in paths:
            with Image.open(path) as img:
                images.append(np.asarray(img.convert("RGB").resize((size, size)), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), tuple(names)
