import numpy as np
import pytest

from secpc import (
    MalformedMessageError,
    SecureParams,
    field_from_array,
    field_from_bytes,
    field_to_array,
    field_to_bytes,
    pack_field_arrays,
    quantize,
    share,
    unpack_field_arrays,
)

PARAMS = SecureParams(k=2, t=1)


def test_field_bytes_round_trip_and_size():
    shares = share(quantize(np.linspace(-1, 1, 9), PARAMS), 5, PARAMS)
    data = field_to_bytes(shares, PARAMS)
    assert len(data) == 4 + 1 + 4 * 3 + 4 * shares.size  # uint32 per residue
    back = field_from_bytes(data, PARAMS, shape=shares.shape)
    assert back.dtype == np.int64 and np.array_equal(back, shares)
    arr = field_to_array(shares, PARAMS)
    assert arr.dtype == np.uint32
    assert np.array_equal(field_from_array(arr, PARAMS, shares.shape), shares)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],
        lambda d: d + b"\x00",
        lambda d: b"XXXX" + d[4:],
        lambda d: d[:4] + b"\x00" + d[5:],
        lambda d: d[:-4] + b"\xff\xff\xff\xff",
        lambda d: b"",
    ],
)
def test_field_bytes_malformed(mutate):
    data = field_to_bytes(np.ones((3, 2), dtype=np.int64), PARAMS)
    with pytest.raises(MalformedMessageError):
        field_from_bytes(mutate(data), PARAMS)


def test_field_shape_and_residue_checks():
    data = field_to_bytes(np.ones((3, 2), dtype=np.int64), PARAMS)
    with pytest.raises(MalformedMessageError, match="expected shape"):
        field_from_bytes(data, PARAMS, shape=(4, 2))
    with pytest.raises(MalformedMessageError, match="residue axis"):
        field_from_bytes(data, SecureParams(moduli=(2147483647,)))
    with pytest.raises(MalformedMessageError):
        field_from_array(np.ones((3, 2)), PARAMS)  # float
    with pytest.raises(MalformedMessageError):
        field_to_bytes(np.full((3, 2), -1), PARAMS)
    with pytest.raises(MalformedMessageError):
        field_from_bytes("text", PARAMS)


def test_pack_unpack():
    arrays = {"z": np.ones((4, 2), dtype=np.int64), "blind": np.zeros((3, 2, 2), dtype=np.int64)}
    data = pack_field_arrays(arrays, PARAMS)
    back = unpack_field_arrays(data, PARAMS, {"z": (4, 2), "blind": None})
    assert set(back) == set(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    with pytest.raises(MalformedMessageError, match="expected arrays"):
        unpack_field_arrays(data, PARAMS, {"z": (4, 2)})
    with pytest.raises(MalformedMessageError, match="expected shape"):
        unpack_field_arrays(data, PARAMS, {"z": (5, 2), "blind": None})
    for bad in (data[:-1], data + b"\x00", b"nope" + data[4:], data[:10]):
        with pytest.raises(MalformedMessageError):
            unpack_field_arrays(bad, PARAMS)
