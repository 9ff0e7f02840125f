"""Errors raised by the secure primitives; every one subclasses :class:`SecureProtocolError`."""

from __future__ import annotations


class SecureProtocolError(Exception):
    """Base class of every error raised by ``secpc``."""


class ParameterError(SecureProtocolError, ValueError):
    """Invalid protocol parameters (K, T, scale, moduli, participant counts, ...)."""


class WrapAroundError(ParameterError):
    """The chosen parameters could let a decoded result wrap around the field.

    ``parameter`` names the parameter to change, ``suggestion`` the value that would fit.
    """

    def __init__(self, message: str, *, parameter: str, suggestion: object = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.suggestion = suggestion


class ValueBoundError(ParameterError):
    """A value to quantize lies outside ``[-value_bound, value_bound]`` or is not finite."""


class NotEnoughAnswersError(SecureProtocolError):
    """Fewer answers than the decoding threshold; ``needed`` and ``received`` say how many."""

    def __init__(self, needed: int, received: int, degree: int) -> None:
        super().__init__(
            f"cannot decode a degree-{degree} result: {needed} answers needed, {received} received"
        )
        self.needed = needed
        self.received = received
        self.degree = degree


class DecodingError(SecureProtocolError):
    """Answers that do not lie on one polynomial of the expected degree, up to what can be corrected.

    Raised by :func:`secpc.lcc.decode_robust` when more answers are wrong than can be located
    (correcting ``e`` wrong answers needs ``n >= D + 1 + 2e``), or when too few well-formed answers
    remain. ``received``: answers given; ``well_formed``: those with the right shape, dtype and
    range; ``degree``: the computation's degree (1 or 2); ``poly_degree``: ``D``, the degree of the
    answer polynomial; ``wrong``: participants known to be wrong anyway (malformed answers),
    sorted.
    """

    def __init__(
        self,
        message: str,
        *,
        received: int,
        well_formed: int,
        degree: int,
        poly_degree: int,
        wrong: tuple[int, ...] = (),
    ) -> None:
        super().__init__(message)
        self.received = received
        self.well_formed = well_formed
        self.degree = degree
        self.poly_degree = poly_degree
        self.wrong = wrong


class MalformedMessageError(SecureProtocolError, ValueError):
    """Bytes or arrays that do not parse as the expected shares, keys or ciphertexts."""


class ChannelError(SecureProtocolError):
    """Base class of the authenticated-channel errors."""


class UnknownSiteError(ChannelError):
    """A site id absent from the known identity keys or from the key directory."""


class SignatureError(ChannelError):
    """A key announcement whose Ed25519 signature does not verify."""


class TamperedMessageError(ChannelError):
    """A ciphertext whose AEAD tag does not verify (modified, or sealed under another key)."""


class ReplayError(ChannelError):
    """A ciphertext delivered twice, or bound to another run or round."""


class MisaddressedError(ChannelError):
    """A ciphertext for another receiver or stage, or from an unexpected sender."""
