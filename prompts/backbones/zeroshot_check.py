"""Zero-shot accuracy and image throughput of a backbone, printed as one JSON object.

Run: ``python -m prompts.backbones.zeroshot_check [--backbone two-tower] [--res 64 96 112]``.

Zero-shot uses the prompt "a photo of a {class}." with the context vectors set to the token
embeddings of "a photo of a" (``phrase_embedding``). Data: scikit-learn's bundled digits (8x8,
upscaled by the backbone, grayscale repeated to three channels) and, when the Debian package
``dataset-fashion-mnist`` is installed, the 10,000 Fashion-MNIST test images.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_NAMES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as (N, 3, 8, 8) floats in [0, 1] (ink bright) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1).expand(-1, 3, -1, -1)
    return x.contiguous(), torch.from_numpy(d.target).long()


def _find_fashion_file(stem: str) -> Path | None:
    import subprocess

    for root in FASHION_DIRS:
        for suffix in ("", ".gz"):
            p = root / f"{stem}{suffix}"
            if p.exists():
                return p
    try:
        out = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:
        return None
    for line in out.splitlines():
        if Path(line).name.startswith(stem) and Path(line).is_file():
            return Path(line)
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_test() -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fashion-MNIST test set as (N, 3, 28, 28) floats in [0, 1] and labels, or None."""
    img = _find_fashion_file("t10k-images-idx3-ubyte")
    lab = _find_fashion_file("t10k-labels-idx1-ubyte")
    if img is None or lab is None:
        return None
    x = torch.from_numpy(_read_idx(img).astype(np.float32) / 255.0).unsqueeze(1)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(_read_idx(lab).astype(np.int64))


def zeroshot_accuracy(backbone, feats: torch.Tensor, labels: torch.Tensor, names) -> float:
    """Top-1 zero-shot accuracy of cached image features with the "a photo of a" prompt."""
    text = backbone.tokenize(list(names), n_ctx=4)
    ctx = backbone.phrase_embedding("a photo of a", 4)
    with torch.no_grad():
        t = backbone.encode_text(ctx, text)
    pred = (feats.to(t.device) @ t.T).argmax(dim=1).cpu()
    return float((pred == labels).float().mean())


def measure(backbone, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Encode ``x`` and return (features, images per second)."""
    backbone.encode_images(x[:8])  # warm-up
    t0 = time.perf_counter()
    f = backbone.encode_images(x)
    return f, x.shape[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    """Print zero-shot accuracy and encode_images throughput per resolution as JSON."""
    from .base import load_backbone

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="two-tower")
    ap.add_argument("--res", type=int, nargs="*", default=[64, 96, 112])
    ap.add_argument("--fashion-limit", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    dx, dy = digits()
    fm = fashion_test()
    result: dict = {"backbone": args.backbone, "threads": args.threads, "results": []}
    for res in args.res:
        name = f"{args.backbone}:res={res}" if args.backbone == "two-tower" else args.backbone
        bb = load_backbone(name, device=args.device)
        row = {"name": bb.name, "res": res}
        feats, ips = measure(bb, dx)
        row["digits_images_per_s"] = round(ips, 1)
        row["digits_zeroshot"] = round(zeroshot_accuracy(bb, feats, dy, DIGIT_NAMES), 4)
        if fm is not None:
            fx, fy = fm[0][: args.fashion_limit], fm[1][: args.fashion_limit]
            ffeats, _ = measure(bb, fx)
            row["fashion_zeroshot"] = round(zeroshot_accuracy(bb, ffeats, fy, FASHION_NAMES), 4)
            row["fashion_n"] = int(fx.shape[0])
        info = getattr(bb, "alignment_info", None)
        if info:
            row["alignment"] = {
                k: info[k] for k in ("lambda", "cv_heldout_class_top1") if k in info
            }
            row["alignment_cache"] = info.get("path")
        result["results"].append(row)
        if args.backbone != "two-tower":
            break
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
