"""Compact, validated byte and array forms of field arrays for Flower records.

A field array is sent as little-endian uint32 residues (each is below 2^31) behind a small header
with its shape, so a ``ConfigRecord`` can carry it as a ``bytes`` value; ``field_to_array`` gives a
plain ``uint32`` numpy array for an ``ArrayRecord`` instead. Every reader checks magic, shape,
length and range and raises :class:`MalformedMessageError` on anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import MalformedMessageError
from .params import SecureParams

_FIELD_MAGIC = b"SFF1"
_PACK_MAGIC = b"SFP1"
_MAX_NDIM = 8


def _check_range(arr: np.ndarray, params: SecureParams) -> None:
    if arr.ndim < 1 or arr.shape[-1] != params.field.r:
        raise MalformedMessageError(
            f"field array must end in a residue axis of {params.field.r}, got shape {arr.shape}"
        )
    if arr.size and (np.any(arr < 0) or np.any(arr >= params.field.p)):
        raise MalformedMessageError("field array holds values outside [0, p)")


def _check_shape(arr: np.ndarray, shape: Sequence[int] | None) -> None:
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise MalformedMessageError(f"expected shape {tuple(shape)}, got {arr.shape}")


def field_to_bytes(arr: np.ndarray, params: SecureParams) -> bytes:
    """Field array -> ``b"SFF1" | ndim (u8) | shape (u32 each) | residues (u32 LE)``."""
    arr = np.asarray(arr)
    _check_range(arr, params)
    if arr.ndim > _MAX_NDIM:
        raise MalformedMessageError(f"at most {_MAX_NDIM} dimensions, got {arr.ndim}")
    header = _FIELD_MAGIC + struct.pack(f"<B{arr.ndim}I", arr.ndim, *arr.shape)
    return header + arr.astype("<u4").tobytes()


def field_from_bytes(
    data: bytes, params: SecureParams, shape: Sequence[int] | None = None
) -> np.ndarray:
    """Inverse of :func:`field_to_bytes`; checks magic, length, residue axis, range, ``shape``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessageError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 5 or data[:4] != _FIELD_MAGIC:
        raise MalformedMessageError("not a serialized field array (bad magic)")
    ndim = data[4]
    if not 1 <= ndim <= _MAX_NDIM or len(data) < 5 + 4 * ndim:
        raise MalformedMessageError("serialized field array has a bad header")
    dims = struct.unpack_from(f"<{ndim}I", data, 5)
    body = data[5 + 4 * ndim :]
    count = int(np.prod(dims, dtype=np.int64))
    if len(body) != 4 * count:
        raise MalformedMessageError(
            f"serialized field array of shape {dims} needs {4 * count} bytes, has {len(body)}"
        )
    arr = np.frombuffer(body, dtype="<u4").astype(np.int64).reshape(dims)
    _check_range(arr, params)
    _check_shape(arr, shape)
    return arr


def field_to_array(arr: np.ndarray, params: SecureParams) -> np.ndarray:
    """Field array -> ``uint32`` numpy array of the same shape (for an ``ArrayRecord``)."""
    arr = np.asarray(arr)
    _check_range(arr, params)
    return arr.astype(np.uint32)


def field_from_array(
    arr: np.ndarray, params: SecureParams, shape: Sequence[int] | None = None
) -> np.ndarray:
    """Validated ``uint32``/integer array -> int64 field array."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise MalformedMessageError(f"field arrays are integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    _check_range(arr, params)
    _check_shape(arr, shape)
    return arr


def pack_field_arrays(arrays: Mapping[str, np.ndarray], params: SecureParams) -> bytes:
    """Several named field arrays in one byte string (e.g. one plaintext per peer)."""
    parts = [_PACK_MAGIC, struct.pack("<I", len(arrays))]
    for name, arr in arrays.items():
        encoded_name = name.encode("utf-8")
        body = field_to_bytes(arr, params)
        parts.append(struct.pack("<HI", len(encoded_name), len(body)))
        parts += [encoded_name, body]
    return b"".join(parts)


def unpack_field_arrays(
    data: bytes,
    params: SecureParams,
    shapes: Mapping[str, Sequence[int] | None] | None = None,
) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_field_arrays`; with ``shapes`` the names and shapes must match."""
    data = bytes(data)
    if len(data) < 8 or data[:4] != _PACK_MAGIC:
        raise MalformedMessageError("not a packed set of field arrays (bad magic)")
    (count,) = struct.unpack_from("<I", data, 4)
    pos = 8
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        if pos + 6 > len(data):
            raise MalformedMessageError("packed field arrays are truncated")
        name_len, body_len = struct.unpack_from("<HI", data, pos)
        pos += 6
        if pos + name_len + body_len > len(data):
            raise MalformedMessageError("packed field arrays are truncated")
        try:
            name = data[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError as err:
            raise MalformedMessageError("packed field array name is not UTF-8") from err
        pos += name_len
        if name in out:
            raise MalformedMessageError(f"packed field array {name!r} appears twice")
        out[name] = field_from_bytes(data[pos : pos + body_len], params)
        pos += body_len
    if pos != len(data):
        raise MalformedMessageError("trailing bytes after packed field arrays")
    if shapes is not None:
        if set(shapes) != set(out):
            raise MalformedMessageError(f"expected arrays {sorted(shapes)}, got {sorted(out)}")
        for name, shape in shapes.items():
            _check_shape(out[name], shape)
    return out
