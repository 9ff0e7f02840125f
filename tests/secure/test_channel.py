import pytest

from secpc import (
    EphemeralKey,
    IdentityKey,
    KeyAnnouncement,
    KeyDirectory,
    MalformedMessageError,
    MisaddressedError,
    PairwiseChannel,
    ReplayError,
    SecureProtocolError,
    SignatureError,
    TamperedMessageError,
    UnknownSiteError,
    directory_digest,
    load_identity_public_key,
)

RUN = 42
SITES = ["a", "b", "c"]


@pytest.fixture()
def federation():
    ids = {s: IdentityKey.generate() for s in SITES}
    eph = {s: EphemeralKey() for s in SITES}
    anns = [KeyAnnouncement.create(ids[s], s, RUN, eph[s]).to_bytes() for s in SITES]
    known = {s: ids[s].public_bytes for s in SITES}
    directory = KeyDirectory.from_bytes(
        KeyDirectory.verify(anns, known, RUN).to_bytes(), known, RUN
    )
    channels = {s: PairwiseChannel(s, eph[s], directory) for s in SITES}
    return ids, eph, anns, known, channels


def test_round_trip_and_channel_state_restores(federation):
    ids, eph, anns, known, ch = federation
    ct = ch["a"].seal(b"share for b", round=3, stage="train", receiver="b")
    assert b"share for b" not in ct
    assert ch["b"].open(ct, round=3, stage="train", sender="a") == b"share for b"
    # A fresh process restores the ephemeral key and directory and still opens a's messages.
    restored = PairwiseChannel(
        "c",
        EphemeralKey.from_bytes(eph["c"].to_bytes()),
        KeyDirectory.verify(anns, known, RUN),
    )
    ct = ch["a"].seal(b"x", round=3, stage="train", receiver="c")
    assert restored.open(ct, round=3, stage="train", sender="a") == b"x"


def test_tampered(federation):
    _, _, _, _, ch = federation
    ct = bytearray(ch["a"].seal(b"payload", round=1, stage="s", receiver="b"))
    ct[-1] ^= 1
    with pytest.raises(TamperedMessageError):
        ch["b"].open(bytes(ct), round=1, stage="s", sender="a")


def test_header_rewritten_to_another_receiver_fails_authentication(federation):
    _, _, _, _, ch = federation
    ct = ch["a"].seal(b"for b", round=1, stage="s", receiver="b")
    forged = ct.replace(b"\x01\x00\x00\x00b", b"\x01\x00\x00\x00c")
    with pytest.raises(TamperedMessageError):
        ch["c"].open(forged, round=1, stage="s", sender="a")


def test_replayed_same_round(federation):
    _, _, _, _, ch = federation
    ct = ch["a"].seal(b"payload", round=1, stage="s", receiver="b")
    ch["b"].open(ct, round=1, stage="s", sender="a")
    with pytest.raises(ReplayError, match="already delivered"):
        ch["b"].open(ct, round=1, stage="s", sender="a")


def test_replayed_in_later_round(federation):
    _, _, _, _, ch = federation
    ct = ch["a"].seal(b"payload", round=1, stage="s", receiver="b")
    with pytest.raises(ReplayError, match="round 1 delivered in round 2"):
        ch["b"].open(ct, round=2, stage="s", sender="a")


def test_misaddressed_receiver_sender_and_stage(federation):
    _, _, _, _, ch = federation
    ct = ch["a"].seal(b"payload", round=1, stage="s", receiver="b")
    with pytest.raises(MisaddressedError, match="for 'b' delivered to 'c'"):
        ch["c"].open(ct, round=1, stage="s", sender="a")
    with pytest.raises(MisaddressedError, match="from 'a'"):
        ch["b"].open(ct, round=1, stage="s", sender="c")
    with pytest.raises(MisaddressedError, match="stage"):
        ch["b"].open(ct, round=1, stage="other", sender="a")
    with pytest.raises(MisaddressedError):
        ch["a"].seal(b"x", round=1, stage="s", receiver="a")
    with pytest.raises(UnknownSiteError):
        ch["a"].seal(b"x", round=1, stage="s", receiver="zz")


def test_malformed_ciphertext(federation):
    _, _, _, _, ch = federation
    for junk in (b"", b"\x05\x00\x00\x00abc", b"\x00" * 40):
        with pytest.raises(MalformedMessageError):
            ch["b"].open(junk, round=1, stage="s", sender="a")


def test_wrongly_signed_announcement(federation):
    ids, eph, anns, known, _ = federation
    forged = KeyAnnouncement.create(ids["c"], "a", RUN, EphemeralKey())  # c signs for a
    with pytest.raises(SignatureError):
        KeyDirectory.verify([forged, *anns[1:]], known, RUN)
    # A server swapping a's key inside a relayed directory is caught by every site.
    ann = KeyAnnouncement.from_bytes(anns[0])
    swapped = KeyAnnouncement(ann.site_id, ann.run_id, EphemeralKey().public_bytes, ann.signature)
    with pytest.raises(SignatureError):
        KeyDirectory.verify([swapped, *anns[1:]], known, RUN)


def test_a_directory_verified_once_is_not_verified_again_but_any_change_is(federation, monkeypatch):
    _, _, anns, known, _ = federation
    honest = KeyDirectory.verify(anns, known, RUN).to_bytes()
    digest = directory_digest(honest, known)
    checked = []
    original = KeyAnnouncement.verify
    monkeypatch.setattr(
        KeyAnnouncement,
        "verify",
        lambda self, key: checked.append(self.site_id) or original(self, key),
    )
    again = KeyDirectory.from_bytes(honest, known, RUN, verified_digest=digest)
    assert checked == [] and again.sites == SITES
    # A directory with one key swapped, relayed with the honest one's digest, is checked.
    ann = KeyAnnouncement.from_bytes(anns[0])
    forged = KeyAnnouncement(ann.site_id, RUN, EphemeralKey().public_bytes, ann.signature)
    swapped = KeyDirectory(
        RUN, {a.site_id: a for a in [forged, *map(KeyAnnouncement.from_bytes, anns[1:])]}
    ).to_bytes()
    with pytest.raises(SignatureError):
        KeyDirectory.from_bytes(swapped, known, RUN, verified_digest=digest)
    # The same bytes against other identity keys are checked too.
    other = {**known, "c": IdentityKey.generate().public_bytes}
    assert directory_digest(honest, other) != digest
    with pytest.raises(SignatureError):
        KeyDirectory.from_bytes(honest, other, RUN, verified_digest=digest)
    # Format and run checks never rely on the digest.
    with pytest.raises(ReplayError):
        KeyDirectory.from_bytes(honest, known, RUN + 1, verified_digest=digest)


def test_unknown_site_stale_run_and_duplicates(federation):
    ids, eph, anns, known, _ = federation
    stranger = KeyAnnouncement.create(IdentityKey.generate(), "zz", RUN, EphemeralKey())
    with pytest.raises(UnknownSiteError):
        KeyDirectory.verify([*anns, stranger], known, RUN)
    old = KeyAnnouncement.create(ids["a"], "a", RUN - 1, eph["a"])
    with pytest.raises(ReplayError):
        KeyDirectory.verify([old], known, RUN)
    with pytest.raises(MalformedMessageError):
        KeyDirectory.verify([anns[0], anns[0]], known, RUN)
    directory = KeyDirectory.verify(anns, known, RUN)
    with pytest.raises(ReplayError):
        KeyDirectory.from_bytes(directory.to_bytes(), known, RUN + 1)
    with pytest.raises(UnknownSiteError):
        directory.public_key("zz")
    with pytest.raises(UnknownSiteError):
        PairwiseChannel("zz", EphemeralKey(), directory)
    with pytest.raises(SignatureError):
        PairwiseChannel("a", EphemeralKey(), directory)


def test_malformed_announcement_bytes(federation):
    _, _, anns, _, _ = federation
    for junk in (b"", anns[0][:-3], anns[0] + b"x", b"SFKA1" + b"\xff" * 10):
        with pytest.raises(MalformedMessageError):
            KeyAnnouncement.from_bytes(junk)
    with pytest.raises(MalformedMessageError):
        KeyDirectory.from_bytes(b"nope", {}, RUN)


def test_identity_key_files(tmp_path):
    key = IdentityKey.generate()
    path = tmp_path / "site.key"
    key.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert IdentityKey.load(path).public_bytes == key.public_bytes
    raw = tmp_path / "site.raw"
    raw.write_bytes(key.to_raw())
    assert IdentityKey.load(raw).public_bytes == key.public_bytes
    assert load_identity_public_key(key.public_pem()).public_bytes_raw() == key.public_bytes
    assert load_identity_public_key(key.public_bytes).public_bytes_raw() == key.public_bytes
    for bad in (b"short", b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n"):
        with pytest.raises(MalformedMessageError):
            IdentityKey.from_bytes(bad)
    with pytest.raises(MalformedMessageError):
        load_identity_public_key(b"abc")
    with pytest.raises(MalformedMessageError):
        EphemeralKey.from_bytes(b"abc")


def test_every_error_is_a_secure_protocol_error():
    import secpc as sec

    errors = [getattr(sec, n) for n in sec.__all__ if n.endswith("Error")]
    assert len(errors) >= 10
    assert all(issubclass(e, SecureProtocolError) for e in errors)
