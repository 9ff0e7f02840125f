"""Protocol parameters, quantization and the wrap-around bound."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .errors import ParameterError, ValueBoundError, WrapAroundError
from .field import DEFAULT_MODULI, PrimeField

#: Largest supported scale: a quantized value must stay exact in float64 and int64.
MAX_SCALE_BITS = 40


@dataclass(frozen=True)
class SecureParams:
    """LCC and quantization parameters shared by every participant of one computation.

    k: data slices per secret (each share is ``ceil(d / k)`` long).
    t: colluding participants tolerated (any ``t`` shares reveal nothing).
    scale_bits: quantization scale λ, values are multiplied by ``2**scale_bits``.
    value_bound: inputs must satisfy ``|x| <= value_bound`` (clip before quantizing).
    moduli: one prime or two primes below 2^31 (CRT); see ``field.py``.
    """

    k: int = 1
    t: int = 1
    scale_bits: int = 16
    value_bound: float = 1.0
    moduli: tuple[int, ...] = field(default=DEFAULT_MODULI)

    def __post_init__(self) -> None:
        for name in ("k", "t", "scale_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ParameterError(f"{name} must be an integer, got {value!r}")
        if self.k < 1:
            raise ParameterError(f"k must be at least 1, got {self.k}")
        if self.t < 1:
            raise ParameterError(f"t must be at least 1 (t=0 gives no privacy), got {self.t}")
        if not 0 <= self.scale_bits <= MAX_SCALE_BITS:
            raise ParameterError(
                f"scale_bits must lie in [0, {MAX_SCALE_BITS}], got {self.scale_bits}"
            )
        if not (math.isfinite(self.value_bound) and self.value_bound > 0):
            raise ParameterError(f"value_bound must be finite and > 0, got {self.value_bound}")
        object.__setattr__(self, "moduli", tuple(int(m) for m in self.moduli))
        self.field  # validates the moduli  # noqa: B018
        if self.max_participants < self.quadratic_threshold:
            raise ParameterError(
                f"moduli {self.moduli} are too small for k={self.k}, t={self.t}: use larger primes"
            )

    @cached_property
    def field(self) -> PrimeField:
        """The field (one prime or a CRT pair) every share lives in."""
        return PrimeField(self.moduli)

    @property
    def linear_threshold(self) -> int:
        """Answers needed to decode a linear result: ``K + T``."""
        return self.k + self.t

    @property
    def quadratic_threshold(self) -> int:
        """Answers needed to decode a degree-2 result: ``2 (K + T - 1) + 1``."""
        return 2 * (self.k + self.t - 1) + 1

    def threshold(self, degree: int) -> int:
        """Answers needed for a result of polynomial ``degree`` (1 or 2)."""
        if degree not in (1, 2):
            raise ParameterError(f"degree must be 1 or 2, got {degree!r}")
        return self.linear_threshold if degree == 1 else self.quadratic_threshold

    @property
    def max_participants(self) -> int:
        """Most participants (evaluation points) the field can give distinct points to."""
        return min(self.moduli) - 1 - (self.quadratic_threshold + 1)

    def check_no_wraparound(self, dim: int, n_parties: int, degree: int) -> int:
        """Raise :class:`WrapAroundError` unless every result fits; return the bound."""
        return check_no_wraparound(dim, n_parties, degree, self)


def max_intermediate_magnitude(
    dim: int, value_bound: float, scale_bits: int, n_parties: int, degree: int
) -> int:
    """Largest |integer| any partial or decoded result can reach (exact Python int).

    With ``q = ceil(value_bound * 2**scale_bits)`` the largest quantized magnitude:
    - degree 1 (sum, or weighted sum with integer weights whose absolute values add up to
      ``n_parties``): ``n_parties * q``;
    - degree 2 (scaled squared distance ``|| |C| z_i - sum_{m in C} z_m ||^2`` with
      ``|C| <= n_parties``, summed over ``dim`` elements): ``dim * (2 * n_parties * q)**2``.
    Per-slice partial results are bounded by the same value (they are partial sums of
    non-negative terms, or sub-vectors).
    """
    if degree not in (1, 2):
        raise ParameterError(f"degree must be 1 or 2, got {degree!r}")
    if dim < 1 or n_parties < 1:
        raise ParameterError("dim and n_parties must be at least 1")
    q = math.ceil(value_bound * 2**scale_bits)
    if degree == 1:
        return n_parties * q
    return dim * (2 * n_parties * q) ** 2


def check_no_wraparound(dim: int, n_parties: int, degree: int, params: SecureParams) -> int:
    """Refuse parameters whose results could wrap around; the error names what to change."""
    bound = max_intermediate_magnitude(
        dim, params.value_bound, params.scale_bits, n_parties, degree
    )
    limit = params.field.max_signed
    if bound <= limit:
        return bound
    fitting = [
        s
        for s in range(params.scale_bits - 1, -1, -1)
        if max_intermediate_magnitude(dim, params.value_bound, s, n_parties, degree) <= limit
    ]
    context = (
        f"degree-{degree} results over dim={dim}, n_parties={n_parties}, "
        f"value_bound={params.value_bound}, scale_bits={params.scale_bits} can reach {bound}, "
        f"above the field's exact range {limit} (moduli {params.moduli})"
    )
    if fitting:
        raise WrapAroundError(
            f"{context}: lower scale_bits to at most {fitting[0]}"
            " (or lower value_bound, dim or n_parties, or use two moduli)",
            parameter="scale_bits",
            suggestion=fitting[0],
        )
    raise WrapAroundError(
        f"{context}, even with scale_bits=0: lower dim or n_parties (or value_bound)",
        parameter="dim",
    )


def quantize(x: np.ndarray, params: SecureParams) -> np.ndarray:
    """Real values -> field array ``(*x.shape, R)`` at scale ``2**scale_bits``.

    Values are rounded to the nearest integer (error at most ``2**-(scale_bits + 1)``);
    negatives are mapped to the upper half of the field. Values outside
    ``[-value_bound, value_bound]`` or not finite raise :class:`ValueBoundError`.
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueBoundError("cannot quantize NaN or infinite values")
    if x.size and float(np.max(np.abs(x))) > params.value_bound:
        raise ValueBoundError(
            f"|x| reaches {float(np.max(np.abs(x)))}, above value_bound={params.value_bound}: "
            "clip the input or raise value_bound"
        )
    q = np.rint(x * float(2**params.scale_bits)).astype(np.int64)
    return params.field.from_int(q)


def dequantize(v: np.ndarray, params: SecureParams, degree: int = 1) -> np.ndarray:
    """Field array -> float64; a degree-``degree`` result carries scale ``2**(degree*λ)``."""
    if degree not in (1, 2):
        raise ParameterError(f"degree must be 1 or 2, got {degree!r}")
    signed = params.field.to_signed(v)
    return signed.astype(np.float64) / float(2 ** (params.scale_bits * degree))
