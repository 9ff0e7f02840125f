"""deploy.credentials: formats Flower reads, names, permissions, refusing to overwrite."""

import ipaddress
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from deploy.credentials import CredentialsError, Layout, generate, main, split_sans

SITES = ["site-a", "site-b", "site-c"]


@pytest.fixture(scope="module")
def creds(tmp_path_factory) -> Layout:
    out = tmp_path_factory.mktemp("creds") / "federation"
    return generate(out, SITES, ["127.0.0.1", "10.1.2.3", "link.example.org"])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_owner_only(creds: Layout):
    private = [creds.ca_key, creds.server_key]
    for site in SITES:
        private += [creds.auth_key(site), creds.identity_key(site)]
    for path in private:
        assert _mode(path) == 0o600, path
    for site in SITES:
        assert _mode(creds.site_dir(site)) == 0o700
        assert _mode(creds.auth_pub(site)) == 0o644
    assert _mode(creds.server_key.parent) == 0o700


def test_private_key_mode_ignores_umask(tmp_path):
    import os

    old = os.umask(0)
    try:
        layout = generate(tmp_path / "c", ["s1"], ["127.0.0.1"])
    finally:
        os.umask(old)
    assert _mode(layout.auth_key("s1")) == 0o600
    assert _mode(layout.ca_key) == 0o600


def test_server_certificate_names_and_chain(creds: Layout):
    cert = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = set(san.get_values_for_type(x509.IPAddress))
    dns = set(san.get_values_for_type(x509.DNSName))
    assert ips == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")}
    assert dns == {"link.example.org", "localhost"}
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_tls_handshake_checks_names(creds: Layout):
    """Python's ssl (what Flower's HTTP stack uses) accepts the chain for each listed name."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(creds.server_cert, creds.server_key)
    client_ctx = ssl.create_default_context(cafile=str(creds.ca_cert))

    def handshake(name: str) -> None:
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for side, src, dst in ((client, c_out, s_in), (server, s_out, c_in)):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                dst.write(src.read())
        assert client.version() is not None

    for name in ("127.0.0.1", "10.1.2.3", "link.example.org", "localhost"):
        handshake(name)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake("other.example.org")


def test_keys_load_with_flowers_loaders(creds: Layout):
    # flower-supernode --auth-supernode-private-key (flwr/supernode/cli/flower_supernode.py)
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    for site in SITES:
        private = serialization.load_ssh_private_key(creds.auth_key(site).read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        # flwr supernode register (flwr/cli/supernode/register.py)
        raw = try_load_public_key(creds.auth_pub(site))
        public = serialization.load_ssh_public_key(creds.auth_pub(site).read_bytes())
        assert uses_nist_ec_curve(public)
        assert raw  # the bytes Flower sends to the SuperLink
        assert public.public_numbers() == private.public_key().public_numbers()


def test_identity_keys_and_gathered_file(creds: Layout):
    gathered = yaml.safe_load(creds.identities.read_text())
    assert sorted(gathered) == SITES
    for site in SITES:
        pem = creds.identity_key(site).read_bytes()
        assert b"BEGIN PRIVATE KEY" in pem  # PKCS8, unencrypted
        private = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        public = serialization.load_pem_public_key(gathered[site].encode())
        assert public.public_bytes_raw() == private.public_key().public_bytes_raw()
    # Keys differ between sites.
    assert len({gathered[s] for s in SITES}) == len(SITES)


def test_refuses_to_overwrite_and_writes_nothing(tmp_path):
    first = generate(tmp_path, ["site-a"], ["127.0.0.1"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CredentialsError, match="refusing to overwrite"):
        generate(tmp_path, ["site-a", "site-new"], ["127.0.0.1"])
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing changed, site-new not half-made
    assert not first.site_dir("site-new").exists()
    # --force replaces.
    generate(tmp_path, ["site-a"], ["127.0.0.1"], force=True)
    assert first.auth_key("site-a").read_bytes() != before[first.auth_key("site-a")]
    assert _mode(first.auth_key("site-a")) == 0o600


def test_add_and_remove_site(tmp_path):
    layout = generate(tmp_path, ["site-a", "site-b"], ["127.0.0.1"])
    ca = layout.ca_cert.read_bytes()
    generate(tmp_path, ["site-c"], sites_only=True)
    assert layout.ca_cert.read_bytes() == ca
    assert sorted(yaml.safe_load(layout.identities.read_text())) == ["site-a", "site-b", "site-c"]
    with pytest.raises(CredentialsError, match="refusing"):
        generate(tmp_path, ["site-c"], sites_only=True)
    # Remove site-b: delete its folder, gather again.
    for p in layout.site_dir("site-b").iterdir():
        p.unlink()
    layout.site_dir("site-b").rmdir()
    assert main(["--out", str(tmp_path), "--gather-only"]) == 0
    assert sorted(yaml.safe_load(layout.identities.read_text())) == ["site-a", "site-c"]


@pytest.mark.parametrize("sites", [["bad/name"], ["-x"], ["superlink"], ["a", "a"], ["x" * 65]])
def test_bad_site_ids(tmp_path, sites):
    with pytest.raises(CredentialsError):
        generate(tmp_path, sites, ["127.0.0.1"])
    assert not any(tmp_path.iterdir())


def test_split_sans():
    ips, dns = split_sans(["127.0.0.1", "[::1]", "Link.Example.org", "link.example.org", ""])
    assert [str(i) for i in ips] == ["127.0.0.1", "::1"]
    assert dns == ["Link.Example.org"]
    with pytest.raises(CredentialsError):
        split_sans(["not a name"])


def test_command_line(tmp_path):
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "deploy.credentials", "--out", str(out), "--sites", "s1,s2"]
    done = subprocess.run(
        [*cmd, "--superlink-address", "127.0.0.1", "--san", "link.internal"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert (out / "s2" / "auth.key").is_file()
    again = subprocess.run(
        [*cmd, "--superlink-address", "127.0.0.1"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    missing = subprocess.run(
        [*cmd[:-2], "--sites", "s3"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert missing.returncode == 2 and "--superlink-address" in missing.stderr
