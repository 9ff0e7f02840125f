"""Device selection and mixed precision for on-site training."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# Keyword arguments for every ``from_pretrained`` of a model. transformers 5 turns "hub kernels"
# on by default: on CUDA it then fetches compiled layers (rotary embedding, RMSNorm, GELU, ...)
# from the Hugging Face Hub when the model is first put in train or eval mode. That is code
# downloaded at run time, which this project never does, and with ``HF_HUB_OFFLINE=1`` it fails
# the run outright (seen on an H200: "Version 2 of 'kernels-community/rotary' is not available in
# the local cache"). The layers' own PyTorch code is used instead, on every device.
NO_HUB_KERNELS: dict[str, bool] = {"use_kernels": False}


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a site's ``device`` setting into a :class:`torch.device`.

    Parameters
    ----------
    spec : str
        ``auto`` (first CUDA device when one is present, else CPU), ``cpu``, ``cuda`` or
        ``cuda:<index>``.

    Returns
    -------
    torch.device
        The device to train on.

    Raises
    ------
    ValueError
        If ``spec`` is malformed, or names a CUDA device that this machine does not have.
    """
    if not _DEVICE_PATTERN.match(spec):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:<index>, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {spec!r} was asked for but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: {spec!r} was asked for but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    return device


@contextlib.contextmanager
def autocast_for(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA (bfloat16 where supported), full precision on CPU.

    CPU autocast is left off on purpose: it slows small text encoders down and breaks the
    bit-for-bit determinism the tests rely on.
    """
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast(device_type="cuda", dtype=dtype):
            yield
    else:
        yield
