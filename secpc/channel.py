"""Authenticated pairwise channels between sites, relayed by an untrusted server.

- Each site has a long-term Ed25519 :class:`IdentityKey` (PEM or raw 32-byte file, pointed to
  by the site YAML); peers' identity *public* keys are distributed out of band (deployment).
- Per run, each site draws an :class:`EphemeralKey` (X25519) and publishes a
  :class:`KeyAnnouncement` (site id, run id, X25519 public key) signed by its identity key.
- :meth:`KeyDirectory.verify` checks every announcement against the known identity keys. The
  server relays the directory; every site verifies it again, so a server cannot swap keys.
- :class:`PairwiseChannel` derives one AES-256-GCM key per ordered pair (sender, receiver) with
  HKDF-SHA256 over the X25519 shared secret, and binds run, round, stage, sender and receiver
  as associated data (carried in a clear header, so errors can be specific).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import (
    MalformedMessageError,
    MisaddressedError,
    ReplayError,
    SignatureError,
    TamperedMessageError,
    UnknownSiteError,
)

_ANNOUNCE_MAGIC = b"SFKA1"
_DIRECTORY_MAGIC = b"SFKD1"
_CIPHER_MAGIC = b"SFCT1"
_NONCE_BYTES = 12
_U64 = (1 << 64) - 1


# -- length-prefixed fields ---------------------------------------------------------------------
def _pack(*fields: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(f)) + f for f in fields)


def _unpack(data: bytes, count: int | None, what: str) -> list[bytes]:
    """Split length-prefixed fields: exactly ``count`` of them, or all when ``None``."""
    fields, pos = [], 0
    while (len(fields) < count) if count is not None else (pos < len(data)):
        if pos + 4 > len(data):
            raise MalformedMessageError(f"{what} is truncated")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + size > len(data):
            raise MalformedMessageError(f"{what} is truncated")
        fields.append(data[pos : pos + size])
        pos += size
    if pos != len(data):
        raise MalformedMessageError(f"{what} has trailing bytes")
    return fields


def _u64(value: int, name: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64:
        raise ValueError(f"{name} must be an integer in [0, 2^64), got {value!r}")
    return struct.pack("<Q", value)


def _read_u64(raw: bytes, what: str) -> int:
    if len(raw) != 8:
        raise MalformedMessageError(f"{what} is not a 64-bit integer")
    return struct.unpack("<Q", raw)[0]


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedMessageError(f"{what} is not UTF-8") from err


def _site(site_id: str) -> bytes:
    if not isinstance(site_id, str) or not site_id:
        raise ValueError(f"site ids are non-empty strings, got {site_id!r}")
    return site_id.encode("utf-8")


# -- identity keys ------------------------------------------------------------------------------
class IdentityKey:
    """A site's long-term Ed25519 signing key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def generate(cls) -> IdentityKey:
        """A fresh random identity key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityKey:
        """Parse a PEM (PKCS#8, unencrypted) or raw 32-byte Ed25519 private key."""
        data = bytes(data)
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as err:
                raise MalformedMessageError(f"not an unencrypted PEM private key: {err}") from err
            if not isinstance(key, Ed25519PrivateKey):
                raise MalformedMessageError("the PEM key is not an Ed25519 private key")
            return cls(key)
        if len(data) != 32:
            raise MalformedMessageError(
                f"raw Ed25519 private keys are 32 bytes, got {len(data)} (or give a PEM file)"
            )
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IdentityKey:
        """Read a key file written by :meth:`save` (PEM) or holding 32 raw bytes."""
        return cls.from_bytes(Path(path).read_bytes())

    def to_pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted (protect the file with permissions)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def to_raw(self) -> bytes:
        """The 32 raw private bytes."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the PEM form, readable by the owner only."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.to_pem())

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte raw public key (what peers and the server must know)."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes)."""
        return self._key.sign(message)


def load_identity_public_key(data: bytes) -> Ed25519PublicKey:
    """Parse an Ed25519 public key from PEM (SubjectPublicKeyInfo) or 32 raw bytes."""
    data = bytes(data)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as err:
            raise MalformedMessageError(f"not a PEM public key: {err}") from err
        if not isinstance(key, Ed25519PublicKey):
            raise MalformedMessageError("the PEM key is not an Ed25519 public key")
        return key
    if len(data) != 32:
        raise MalformedMessageError(f"raw Ed25519 public keys are 32 bytes, got {len(data)}")
    return Ed25519PublicKey.from_public_bytes(data)


class EphemeralKey:
    """A per-run X25519 key; keep :meth:`to_bytes` in the run's state between messages."""

    def __init__(self, private_key: X25519PrivateKey | None = None) -> None:
        self._key = private_key or X25519PrivateKey.generate()

    @classmethod
    def from_bytes(cls, data: bytes) -> EphemeralKey:
        """Parse the 32 raw private bytes."""
        if len(data) != 32:
            raise MalformedMessageError(f"X25519 private keys are 32 bytes, got {len(data)}")
        return cls(X25519PrivateKey.from_private_bytes(bytes(data)))

    def to_bytes(self) -> bytes:
        """The 32 raw private bytes."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte X25519 public key."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519 shared secret with a peer's public key."""
        return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))


# -- announcements and the directory ------------------------------------------------------------
@dataclass(frozen=True)
class KeyAnnouncement:
    """A site's ephemeral X25519 public key for one run, signed by its identity key."""

    site_id: str
    run_id: int
    public_key: bytes
    signature: bytes

    @staticmethod
    def signed_payload(site_id: str, run_id: int, public_key: bytes) -> bytes:
        """The exact bytes the identity key signs (domain-separated)."""
        return _ANNOUNCE_MAGIC + _pack(_site(site_id), _u64(run_id, "run_id"), public_key)

    @classmethod
    def create(
        cls, identity: IdentityKey, site_id: str, run_id: int, ephemeral: EphemeralKey
    ) -> KeyAnnouncement:
        """Sign ``ephemeral``'s public key for ``run_id`` with ``identity``."""
        public = ephemeral.public_bytes
        return cls(
            site_id, run_id, public, identity.sign(cls.signed_payload(site_id, run_id, public))
        )

    def to_bytes(self) -> bytes:
        """Length-prefixed fields behind a magic tag."""
        return _ANNOUNCE_MAGIC + _pack(
            _site(self.site_id), _u64(self.run_id, "run_id"), self.public_key, self.signature
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyAnnouncement:
        """Parse :meth:`to_bytes`; malformed input raises :class:`MalformedMessageError`."""
        data = bytes(data)
        if not data.startswith(_ANNOUNCE_MAGIC):
            raise MalformedMessageError("not a key announcement (bad magic)")
        site, run, public, signature = _unpack(data[len(_ANNOUNCE_MAGIC) :], 4, "key announcement")
        if len(public) != 32 or len(signature) != 64:
            raise MalformedMessageError("key announcement has a bad key or signature length")
        return cls(_text(site, "site id"), _read_u64(run, "run id"), public, signature)

    def verify(self, identity_public_key: bytes | Ed25519PublicKey) -> None:
        """Raise :class:`SignatureError` unless the identity key signed this announcement."""
        key = (
            identity_public_key
            if isinstance(identity_public_key, Ed25519PublicKey)
            else load_identity_public_key(identity_public_key)
        )
        try:
            key.verify(
                self.signature, self.signed_payload(self.site_id, self.run_id, self.public_key)
            )
        except InvalidSignature as err:
            raise SignatureError(
                f"key announcement of site {self.site_id!r} is not signed by its identity key"
            ) from err


class KeyDirectory:
    """Verified ephemeral public keys of every site of one run."""

    def __init__(self, run_id: int, announcements: Mapping[str, KeyAnnouncement]) -> None:
        self.run_id = run_id
        self._announcements = dict(sorted(announcements.items()))

    @classmethod
    def verify(
        cls,
        announcements: Iterable[KeyAnnouncement | bytes],
        known_identity_public_keys: Mapping[str, bytes | Ed25519PublicKey],
        run_id: int,
        *,
        check_signatures: bool = True,
    ) -> KeyDirectory:
        """Check every announcement; unknown site, bad signature, other run or duplicate raise.

        ``check_signatures=False`` is for :meth:`from_bytes` only, on bytes whose
        :func:`directory_digest` matched one verified before with the same identity keys.
        """
        verified: dict[str, KeyAnnouncement] = {}
        for item in announcements:
            ann = item if isinstance(item, KeyAnnouncement) else KeyAnnouncement.from_bytes(item)
            if ann.site_id not in known_identity_public_keys:
                raise UnknownSiteError(f"site {ann.site_id!r} has no known identity key")
            if check_signatures:
                ann.verify(known_identity_public_keys[ann.site_id])
            if ann.run_id != run_id:
                raise ReplayError(
                    f"key announcement of site {ann.site_id!r} is for run {ann.run_id}, "
                    f"not run {run_id}"
                )
            if ann.site_id in verified:
                raise MalformedMessageError(f"two key announcements for site {ann.site_id!r}")
            verified[ann.site_id] = ann
        return cls(run_id, verified)

    @property
    def sites(self) -> list[str]:
        """Site ids, sorted."""
        return list(self._announcements)

    def __contains__(self, site_id: object) -> bool:
        return site_id in self._announcements

    def __len__(self) -> int:
        return len(self._announcements)

    def public_key(self, site_id: str) -> bytes:
        """The verified X25519 public key of ``site_id``."""
        try:
            return self._announcements[site_id].public_key
        except KeyError:
            raise UnknownSiteError(f"site {site_id!r} is not in the key directory") from None

    def to_bytes(self) -> bytes:
        """All signed announcements (the receiver verifies them again)."""
        return _DIRECTORY_MAGIC + _pack(
            _u64(self.run_id, "run_id"),
            *(ann.to_bytes() for ann in self._announcements.values()),
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        known_identity_public_keys: Mapping[str, bytes | Ed25519PublicKey],
        run_id: int,
        *,
        verified_digest: bytes | None = None,
    ) -> KeyDirectory:
        """Parse and re-verify a directory relayed by the server.

        Parameters
        ----------
        data : bytes
            :meth:`to_bytes` of the server's directory.
        known_identity_public_keys : Mapping
            Site id to identity public key, against which every signature is checked.
        run_id : int
            The run the directory must be for.
        verified_digest : bytes, optional
            :func:`directory_digest` of a directory this caller verified before. When
            ``data`` and ``known_identity_public_keys`` hash to it, the signatures are not
            checked again: the same bytes against the same keys verify the same way, and a
            federation of N sites otherwise pays N signature checks per message. Every other
            check (format, run, unknown sites, duplicates) still runs.
        """
        data = bytes(data)
        if not data.startswith(_DIRECTORY_MAGIC):
            raise MalformedMessageError("not a key directory (bad magic)")
        fields = _unpack(data[len(_DIRECTORY_MAGIC) :], None, "key directory")
        if not fields or _read_u64(fields[0], "run id") != run_id:
            raise ReplayError(f"key directory is not for run {run_id}")
        seen = verified_digest is not None and verified_digest == directory_digest(
            data, known_identity_public_keys
        )
        return cls.verify(fields[1:], known_identity_public_keys, run_id, check_signatures=not seen)


def directory_digest(
    data: bytes, known_identity_public_keys: Mapping[str, bytes | Ed25519PublicKey]
) -> bytes:
    """SHA-256 over a serialized key directory and the identity keys it is checked against.

    A site keeps this digest after a successful :meth:`KeyDirectory.from_bytes`, so the next
    message of the run that relays the same directory skips the signature checks (see there).
    Any change to the directory or to the identity keys changes the digest.
    """
    digest = hashlib.sha256(_DIRECTORY_MAGIC + bytes(data))
    for site_id, key in sorted(known_identity_public_keys.items()):
        raw = (
            key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            if isinstance(key, Ed25519PublicKey)
            else bytes(key)
        )
        digest.update(_pack(_site(site_id), raw))
    return digest.digest()


# -- pairwise AEAD channel -----------------------------------------------------------------------
@dataclass(frozen=True)
class SealedHeader:
    """The clear, authenticated context of a ciphertext."""

    run_id: int
    round: int
    stage: str
    sender: str
    receiver: str

    def to_bytes(self) -> bytes:
        """Associated data bound by the AEAD."""
        return _CIPHER_MAGIC + _pack(
            _u64(self.run_id, "run_id"),
            _u64(self.round, "round"),
            self.stage.encode("utf-8"),
            _site(self.sender),
            _site(self.receiver),
        )


class PairwiseChannel:
    """One site's end of the authenticated channels to every peer in a :class:`KeyDirectory`.

    ``open`` remembers every (sender, nonce) it accepted, so a second delivery of the same
    ciphertext raises :class:`ReplayError`; ciphertexts of another run or round raise it too.
    """

    def __init__(self, site_id: str, ephemeral: EphemeralKey, directory: KeyDirectory) -> None:
        if site_id not in directory:
            raise UnknownSiteError(f"site {site_id!r} is not in the key directory")
        if directory.public_key(site_id) != ephemeral.public_bytes:
            raise SignatureError(
                f"the directory's key for {site_id!r} is not this site's ephemeral key"
            )
        self.site_id = site_id
        self.run_id = directory.run_id
        self._ephemeral = ephemeral
        self._directory = directory
        self._keys: dict[tuple[str, str], AESGCM] = {}
        self._seen: set[tuple[str, bytes]] = set()

    def _aead(self, sender: str, receiver: str) -> AESGCM:
        pair = (sender, receiver)
        if pair not in self._keys:
            peer = receiver if sender == self.site_id else sender
            shared = self._ephemeral.exchange(self._directory.public_key(peer))
            info = b"secfpp pairwise aead v1" + _pack(
                _site(sender),
                _site(receiver),
                self._directory.public_key(sender),
                self._directory.public_key(receiver),
            )
            salt = hashlib.sha256(b"secfpp run " + _u64(self.run_id, "run_id")).digest()
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared)
            self._keys[pair] = AESGCM(key)
        return self._keys[pair]

    def seal(self, plaintext: bytes, *, round: int, stage: str, receiver: str) -> bytes:
        """Encrypt ``plaintext`` for ``receiver``, bound to this run, ``round`` and ``stage``."""
        if receiver == self.site_id:
            raise MisaddressedError("a site does not seal messages to itself")
        self._directory.public_key(receiver)  # raises UnknownSiteError
        header = SealedHeader(self.run_id, round, stage, self.site_id, receiver).to_bytes()
        nonce = os.urandom(_NONCE_BYTES)
        body = self._aead(self.site_id, receiver).encrypt(nonce, bytes(plaintext), header)
        return _pack(header, nonce, body)

    def open(self, ciphertext: bytes, *, round: int, stage: str, sender: str) -> bytes:
        """Decrypt a ciphertext ``sender`` sealed for this site in ``round`` and ``stage``.

        Raises :class:`MalformedMessageError`, :class:`MisaddressedError` (other receiver,
        sender or stage), :class:`ReplayError` (other run or round, or already delivered),
        :class:`UnknownSiteError` or :class:`TamperedMessageError` (authentication failed).
        """
        header_raw, nonce, body = _unpack(bytes(ciphertext), 3, "ciphertext")
        if not header_raw.startswith(_CIPHER_MAGIC) or len(nonce) != _NONCE_BYTES:
            raise MalformedMessageError("not a sealed message (bad magic or nonce)")
        run_raw, round_raw, stage_raw, sender_raw, receiver_raw = _unpack(
            header_raw[len(_CIPHER_MAGIC) :], 5, "ciphertext header"
        )
        header = SealedHeader(
            _read_u64(run_raw, "run id"),
            _read_u64(round_raw, "round"),
            _text(stage_raw, "stage"),
            _text(sender_raw, "sender"),
            _text(receiver_raw, "receiver"),
        )
        if header.receiver != self.site_id:
            raise MisaddressedError(
                f"message for {header.receiver!r} delivered to {self.site_id!r}"
            )
        if header.sender != sender:
            raise MisaddressedError(f"message from {header.sender!r} delivered as from {sender!r}")
        if header.run_id != self.run_id:
            raise ReplayError(f"message of run {header.run_id} delivered in run {self.run_id}")
        if header.round != round:
            raise ReplayError(f"message of round {header.round} delivered in round {round}")
        if header.stage != stage:
            raise MisaddressedError(f"message for stage {header.stage!r} delivered at {stage!r}")
        try:
            plaintext = self._aead(sender, self.site_id).decrypt(nonce, body, header_raw)
        except InvalidTag as err:
            raise TamperedMessageError(
                f"message from {sender!r} (round {round}, stage {stage!r}) failed authentication"
            ) from err
        if (sender, nonce) in self._seen:
            raise ReplayError(f"message from {sender!r} was already delivered")
        self._seen.add((sender, nonce))
        return plaintext
