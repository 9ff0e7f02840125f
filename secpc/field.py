"""Exact, vectorized arithmetic modulo one prime or a CRT pair of primes.

Field arrays are ``np.int64`` arrays whose **last axis** holds the residues, one per modulus:
shape ``(*shape, R)`` with ``R = len(moduli)`` (1 or 2) and ``0 <= x[..., r] < moduli[r]``.
Working over ``Z_{p1 p2} = F_{p1} x F_{p2}`` is the same as running the protocol over each prime
independently (independent masks in each), so every LCC property of a prime field holds.

Every modulus is a prime below 2^31, so a product of two residues is below 2^62 and never
overflows int64; products are reduced before they are summed (matrix products split the right
operand into 16-bit limbs so up to 2^16 terms can be accumulated exactly).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from .errors import ParameterError

#: The two largest primes below 2^31 (2^31 - 1 and 2^31 - 19); their product is about 2^62,
#: so signed results up to about 2.3e18 decode exactly.
DEFAULT_MODULI: tuple[int, ...] = (2147483647, 2147483629)

ByteSource = Callable[[int], bytes]


def is_prime(n: int) -> bool:
    """Deterministic primality test for ``n < 2^32`` (trial division by odd numbers)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    limit = int(n**0.5) + 1
    odd = np.arange(3, limit + 1, 2, dtype=np.int64)
    return not bool(np.any(n % odd[odd < n] == 0))


def pow_mod(x: np.ndarray, e: int, p: int) -> np.ndarray:
    """``x**e mod p`` elementwise (square and multiply, vectorized)."""
    x = np.asarray(x, dtype=np.int64) % p
    result = np.ones_like(x)
    while e:
        if e & 1:
            result = result * x % p
        x = x * x % p
        e >>= 1
    return result


def inv_mod(x: np.ndarray, p: int) -> np.ndarray:
    """Elementwise inverse modulo the prime ``p`` (Fermat); ``x`` must be non-zero mod ``p``."""
    x = np.asarray(x, dtype=np.int64) % p
    if np.any(x == 0):
        raise ZeroDivisionError("inverse of zero in the field")
    return pow_mod(x, p - 2, p)


def matmul_mod(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """``a @ b mod p`` exactly for residues below ``p < 2^31`` (2-D ``a``, 2-D ``b``)."""
    if a.shape[1] >= 1 << 16:
        raise ParameterError("matrix products over the field support at most 65535 terms")
    lo = (a @ (b & 0xFFFF)) % p
    hi = (a @ (b >> 16)) % p
    return (hi * 65536 + lo) % p


class PrimeField:
    """Arithmetic over ``Z_M``, ``M`` = product of ``moduli`` (one prime, or two for CRT)."""

    def __init__(self, moduli: tuple[int, ...]) -> None:
        moduli = tuple(int(m) for m in moduli)
        if not 1 <= len(moduli) <= 2:
            raise ParameterError("moduli: give one prime or two distinct primes (CRT)")
        if len(set(moduli)) != len(moduli):
            raise ParameterError("moduli: the primes must be distinct")
        for m in moduli:
            if not 2 < m < 2**31 or not is_prime(m):
                raise ParameterError(f"moduli: {m} is not an odd prime below 2^31")
        self.moduli = moduli
        self.p = np.array(moduli, dtype=np.int64)
        self.r = len(moduli)
        self.modulus = int(np.prod([int(m) for m in moduli], dtype=object))
        #: Largest magnitude a signed value may have to decode exactly.
        self.max_signed = (self.modulus - 1) // 2
        if self.r == 2:
            self._crt_inv = int(pow(moduli[0], -1, moduli[1]))

    def __repr__(self) -> str:
        return f"PrimeField(moduli={self.moduli})"

    # -- elementwise ------------------------------------------------------------------------
    def reduce(self, x: np.ndarray) -> np.ndarray:
        """Reduce an int64 array with a residue axis into canonical form."""
        return np.asarray(x, dtype=np.int64) % self.p

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise sum."""
        return (a + b) % self.p

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise difference."""
        return (a - b) % self.p

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise product (both operands canonical, so products stay below 2^62)."""
        return (a * b) % self.p

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-residue matrix product: ``a`` is ``(m, k, R)``, ``b`` is ``(k, *rest, R)``."""
        k = b.shape[0]
        rest = b.shape[1:-1]
        out = np.empty((a.shape[0], *rest, self.r), dtype=np.int64)
        for r, p in enumerate(self.moduli):
            res = matmul_mod(a[..., r], b[..., r].reshape(k, -1), p)
            out[..., r] = res.reshape(a.shape[0], *rest)
        return out

    # -- signed integers --------------------------------------------------------------------
    def from_int(self, q: np.ndarray) -> np.ndarray:
        """Signed int64 array -> field array (negative values land in the upper half)."""
        q = np.asarray(q, dtype=np.int64)
        return q[..., None] % self.p

    def to_signed(self, x: np.ndarray) -> np.ndarray:
        """Field array -> the signed int64 representative in ``[-(M-1)/2, (M-1)/2]`` (CRT)."""
        x = np.asarray(x, dtype=np.int64)
        if self.r == 1:
            v = x[..., 0]
        else:
            p1, p2 = self.moduli
            a1, a2 = x[..., 0], x[..., 1]
            h = ((a2 - a1) % p2) * self._crt_inv % p2
            v = a1 + p1 * h
        return np.where(v > self.max_signed, v - self.modulus, v)

    # -- randomness -------------------------------------------------------------------------
    def random(self, shape: tuple[int, ...], rng: ByteSource | None = None) -> np.ndarray:
        """Uniform field elements from a CSPRNG (``os.urandom`` unless ``rng`` is given).

        Each residue is drawn by rejection sampling of 31-bit words, so it is exactly
        uniform on ``[0, p)``: no modular bias. ``rng`` (a ``n -> bytes`` callable) is for tests.
        """
        source = os.urandom if rng is None else rng
        count = int(np.prod(shape, dtype=np.int64))
        out = np.empty((count, self.r), dtype=np.int64)
        for r, p in enumerate(self.moduli):
            bits = (p - 1).bit_length()
            mask = (1 << bits) - 1
            filled = 0
            while filled < count:
                need = count - filled
                draw = need + need // 8 + 16
                words = np.frombuffer(source(4 * draw), dtype="<u4").astype(np.int64) & mask
                ok = words[words < p][:need]
                out[filled : filled + ok.size, r] = ok
                filled += ok.size
        return out.reshape(*shape, self.r)


@lru_cache(maxsize=256)
def lagrange_matrix(src: tuple[int, ...], dst: tuple[int, ...], p: int) -> np.ndarray:
    """``M[d, s] = l_s(dst[d])``: Lagrange basis on ``src`` evaluated at ``dst`` modulo ``p``.

    Points must be distinct within ``src``, and no ``dst`` point may equal a ``src`` point.
    Vectorized over points; the only Python loop runs over ``len(src)``.
    """
    s = np.array(src, dtype=np.int64) % p
    d = np.array(dst, dtype=np.int64) % p
    diff_ss = (s[:, None] - s[None, :]) % p
    np.fill_diagonal(diff_ss, 1)
    diff_ds = (d[:, None] - s[None, :]) % p
    den = np.ones(len(s), dtype=np.int64)
    full = np.ones(len(d), dtype=np.int64)
    for m in range(len(s)):
        den = den * diff_ss[:, m] % p
        full = full * diff_ds[:, m] % p
    num = full[:, None] * inv_mod(diff_ds, p) % p
    out = num * inv_mod(den, p)[None, :] % p
    out.setflags(write=False)
    return out
