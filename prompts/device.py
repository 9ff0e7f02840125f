"""Device selection and mixed precision for on-site training."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


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
