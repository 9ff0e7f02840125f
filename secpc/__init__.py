"""Secure primitives of SecFPP: prime field, quantization, LCC and authenticated channels.

Pure numpy and ``cryptography``: importing this package never imports flwr or torch.
See ``README.md`` in this folder for the API, the parameter limits and what the server learns.
"""

from .channel import (
    EphemeralKey,
    IdentityKey,
    KeyAnnouncement,
    KeyDirectory,
    PairwiseChannel,
    SealedHeader,
    directory_digest,
    load_identity_public_key,
)
from .errors import (
    ChannelError,
    DecodingError,
    MalformedMessageError,
    MisaddressedError,
    NotEnoughAnswersError,
    ParameterError,
    ReplayError,
    SecureProtocolError,
    SignatureError,
    TamperedMessageError,
    UnknownSiteError,
    ValueBoundError,
    WrapAroundError,
)
from .field import DEFAULT_MODULI, PrimeField
from .lcc import (
    blinding_shares,
    coded_scaled_distances,
    coded_sum,
    coded_weighted_sum,
    decode,
    decode_robust,
    decode_slices,
    share,
    slice_length,
)
from .params import (
    SecureParams,
    check_no_wraparound,
    dequantize,
    max_intermediate_magnitude,
    quantize,
)
from .serialize import (
    field_from_array,
    field_from_bytes,
    field_to_array,
    field_to_bytes,
    pack_field_arrays,
    unpack_field_arrays,
)

__all__ = [
    "DEFAULT_MODULI",
    "ChannelError",
    "DecodingError",
    "EphemeralKey",
    "IdentityKey",
    "KeyAnnouncement",
    "KeyDirectory",
    "directory_digest",
    "MalformedMessageError",
    "MisaddressedError",
    "NotEnoughAnswersError",
    "PairwiseChannel",
    "ParameterError",
    "PrimeField",
    "ReplayError",
    "SealedHeader",
    "SecureParams",
    "SecureProtocolError",
    "SignatureError",
    "TamperedMessageError",
    "UnknownSiteError",
    "ValueBoundError",
    "WrapAroundError",
    "blinding_shares",
    "check_no_wraparound",
    "coded_scaled_distances",
    "coded_sum",
    "coded_weighted_sum",
    "decode",
    "decode_robust",
    "decode_slices",
    "dequantize",
    "field_from_array",
    "field_from_bytes",
    "field_to_array",
    "field_to_bytes",
    "load_identity_public_key",
    "max_intermediate_magnitude",
    "pack_field_arrays",
    "quantize",
    "share",
    "slice_length",
    "unpack_field_arrays",
]
