"""Make every credential a SecFPP federation needs, in one folder.

Run ``python -m deploy.credentials --out DIR --sites site-a,site-b --superlink-address HOST``.
It writes::

    DIR/ca.crt                    certificate authority (give to every site and every `flwr` user)
    DIR/ca.key                    CA private key (0600; keep offline, needed only to re-issue)
    DIR/superlink/server.crt      SuperLink TLS certificate, SANs cover every --superlink-address
    DIR/superlink/server.key      SuperLink TLS private key (0600)
    DIR/<site>/auth.key           SuperNode authentication key, EC P-384, OpenSSH format (0600)
    DIR/<site>/auth.pub           its public half, OpenSSH format (for `flwr supernode register`)
    DIR/<site>/identity.key       site identity key for SecFPP, Ed25519, PKCS8 PEM (0600)
    DIR/<site>/identity.pub       its public half, SubjectPublicKeyInfo PEM
    DIR/site-identities.yaml      site-id -> identity public key PEM, for the server
                                  (run config key `site-identities`)

Existing files are never overwritten unless ``--force`` is given; the check runs before anything
is written, so a refused call leaves the folder as it was. ``--sites-only`` adds sites to an
existing folder (no CA, no SuperLink certificate); ``--gather-only`` rebuilds
``site-identities.yaml`` from the ``identity.pub`` files present (after a site was removed).
``site-identities.yaml`` is always rebuilt from every ``DIR/*/identity.pub``, so it lists
exactly the sites whose keys are in the folder.

The formats are the ones Flower 1.41 reads: ``flower-supernode --auth-supernode-private-key``
loads the key with ``cryptography``'s ``load_ssh_private_key`` and requires an EC key, and
``flwr supernode register`` loads the public key with ``load_ssh_public_key`` and requires a
NIST curve.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Same rule as client_app/site_config.py (deploy/ imports nothing from the app).
SITE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_SITE_IDS = frozenset({"superlink"})
IDENTITIES_FILE = "site-identities.yaml"
# The SuperLink's own SuperExec always reaches the SuperLink on the loopback address with the
# same certificate, so these two names are always in the certificate.
ALWAYS_SANS = ("127.0.0.1", "localhost")
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


class CredentialsError(RuntimeError):
    """A credentials request that cannot be carried out (bad name, file exists, ...)."""


@dataclass(frozen=True)
class Layout:
    """Where each credential lives inside the output folder."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (public)."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA private key."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The SuperLink TLS certificate."""
        return self.root / "superlink" / "server.crt"

    @property
    def server_key(self) -> Path:
        """The SuperLink TLS private key."""
        return self.root / "superlink" / "server.key"

    @property
    def identities(self) -> Path:
        """The gathered site identity public keys."""
        return self.root / IDENTITIES_FILE

    def site_dir(self, site: str) -> Path:
        """The folder of one site's keys."""
        return self.root / site

    def auth_key(self, site: str) -> Path:
        """SuperNode authentication private key (OpenSSH, EC P-384)."""
        return self.site_dir(site) / "auth.key"

    def auth_pub(self, site: str) -> Path:
        """SuperNode authentication public key (OpenSSH)."""
        return self.site_dir(site) / "auth.pub"

    def identity_key(self, site: str) -> Path:
        """Site identity private key (Ed25519, PKCS8 PEM)."""
        return self.site_dir(site) / "identity.key"

    def identity_pub(self, site: str) -> Path:
        """Site identity public key (SubjectPublicKeyInfo PEM)."""
        return self.site_dir(site) / "identity.pub"


def validate_site_ids(sites: Iterable[str]) -> list[str]:
    """Check site names and return them in the given order.

    Raises
    ------
    CredentialsError
        If a name is empty, malformed, reserved or repeated.
    """
    out: list[str] = []
    for site in sites:
        if not SITE_ID_PATTERN.match(site):
            raise CredentialsError(
                f"site id {site!r}: expected 1-64 letters, digits, '_', '.', '-' starting with a "
                "letter or digit (the same rule as `site-id` in the site YAML)"
            )
        if site in RESERVED_SITE_IDS:
            raise CredentialsError(f"site id {site!r} is reserved (it names a folder of DIR)")
        if site in out:
            raise CredentialsError(f"site id {site!r} is given twice")
        out.append(site)
    return out


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def split_sans(names: Iterable[str]) -> tuple[list[IPAddress], list[str]]:
    """Split addresses into IP SANs and DNS SANs (deduplicated, order kept)."""
    ips: list[IPAddress] = []
    dns: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$", name):
                raise CredentialsError(
                    f"address {raw!r} is neither an IP address nor a DNS name"
                ) from None
            if name.lower() not in (d.lower() for d in dns):
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    return ips, dns


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Create ``path`` with ``mode`` (exclusive unless ``force``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if force and path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what we ask for
        os.write(fd, data)
    finally:
        os.close(fd)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SecFPP federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (EC P-384) allowed to sign server certificates only."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    name = _name("SecFPP federation CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    addresses: Sequence[str],
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A SuperLink TLS certificate whose SANs cover ``addresses`` plus the loopback names."""
    ips, dns = split_sans([*addresses, *ALWAYS_SANS])
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    common = addresses[0] if addresses else "localhost"
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"SecFPP SuperLink {common}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_auth_key(site: str) -> tuple[bytes, bytes]:
    """SuperNode auth key pair: (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" secfpp-{site}\n".encode()


def make_identity_key() -> tuple[bytes, bytes]:
    """Site identity key pair: (PKCS8 PEM private key, SubjectPublicKeyInfo PEM public key)."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _pem_key(key), public


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings (PEM blocks) as YAML literal blocks."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_LiteralDumper.add_representer(str, _str_presenter)


def gather_identities(root: Path) -> dict[str, str]:
    """Map site-id -> identity public key PEM, from every ``root/<site>/identity.pub``."""
    out: dict[str, str] = {}
    for pub in sorted(Path(root).glob("*/identity.pub")):
        site = pub.parent.name
        if not SITE_ID_PATTERN.match(site) or site in RESERVED_SITE_IDS:
            continue
        pem = pub.read_text(encoding="ascii")
        key = serialization.load_pem_public_key(pem.encode())
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise CredentialsError(f"{pub}: not an Ed25519 public key")
        out[site] = pem
    return out


def write_identities(root: Path) -> Path:
    """Rebuild ``site-identities.yaml`` from the identity public keys in ``root``."""
    layout = Layout(Path(root))
    identities = gather_identities(layout.root)
    text = (
        "# Site identity public keys (Ed25519, PEM), site-id -> key. Made by\n"
        "# `python -m deploy.credentials`; rebuilt from DIR/*/identity.pub on every call.\n"
        "# The server reads it through the run config key `site-identities` (a path).\n"
    )
    text += yaml.dump(identities, Dumper=_LiteralDumper, sort_keys=True, default_flow_style=False)
    tmp = layout.identities.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="ascii")
    os.chmod(tmp, PUBLIC_MODE)
    os.replace(tmp, layout.identities)
    return layout.identities


def generate(
    out: Path | str,
    sites: Sequence[str],
    superlink_addresses: Sequence[str] = (),
    *,
    force: bool = False,
    sites_only: bool = False,
    days: int = 825,
) -> Layout:
    """Write the credentials of a federation (see the module docstring).

    Parameters
    ----------
    out : Path or str
        Output folder (created if missing).
    sites : sequence of str
        Site ids; one auth key pair and one identity key pair each.
    superlink_addresses : sequence of str
        IP addresses and DNS names the SuperLink is reached at (IPs become IP SANs, names DNS
        SANs); ``127.0.0.1`` and ``localhost`` are always added.
    force : bool
        Replace files that exist instead of refusing.
    sites_only : bool
        Only make site keys (for adding sites to an existing federation).
    days : int
        Validity of the CA and SuperLink certificates.

    Returns
    -------
    Layout
        Paths of what was written.

    Raises
    ------
    CredentialsError
        If a site id is bad, no address is given, or a file exists and ``force`` is false.
    """
    layout = Layout(Path(out).expanduser().resolve())
    sites = validate_site_ids(sites)
    if not sites_only and not superlink_addresses:
        raise CredentialsError("give at least one --superlink-address (or --sites-only)")
    split_sans(superlink_addresses)  # fail early on a malformed name
    if sites_only and not sites:
        raise CredentialsError("--sites-only needs --sites")

    planned: list[Path] = []
    if not sites_only:
        planned += [layout.ca_cert, layout.ca_key, layout.server_cert, layout.server_key]
    for site in sites:
        planned += [
            layout.auth_key(site),
            layout.auth_pub(site),
            layout.identity_key(site),
            layout.identity_pub(site),
        ]
    existing = [p for p in planned if p.exists() or p.is_symlink()]
    if existing and not force:
        listed = "\n  ".join(str(p) for p in existing)
        raise CredentialsError(
            f"refusing to overwrite {len(existing)} existing file(s):\n  {listed}\n"
            "Nothing was written. Use another --out, remove them, or pass --force to replace "
            "them (replaced keys must be registered again)."
        )

    layout.root.mkdir(parents=True, exist_ok=True)
    if not sites_only:
        ca_key, ca_cert = make_ca(days)
        server_key, server_cert = make_server_cert(ca_key, ca_cert, superlink_addresses, days)
        pem = serialization.Encoding.PEM
        _write(layout.ca_key, _pem_key(ca_key), PRIVATE_MODE, force)
        _write(layout.ca_cert, ca_cert.public_bytes(pem), PUBLIC_MODE, force)
        _private_dir(layout.server_key.parent)
        _write(layout.server_key, _pem_key(server_key), PRIVATE_MODE, force)
        _write(layout.server_cert, server_cert.public_bytes(pem), PUBLIC_MODE, force)
    for site in sites:
        _private_dir(layout.site_dir(site))
        auth_private, auth_public = make_auth_key(site)
        id_private, id_public = make_identity_key()
        _write(layout.auth_key(site), auth_private, PRIVATE_MODE, force)
        _write(layout.auth_pub(site), auth_public, PUBLIC_MODE, force)
        _write(layout.identity_key(site), id_private, PRIVATE_MODE, force)
        _write(layout.identity_pub(site), id_public, PUBLIC_MODE, force)
    write_identities(layout.root)
    return layout


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.credentials",
        description="Make the CA, SuperLink TLS certificate, SuperNode auth keys and site "
        "identity keys of a SecFPP federation.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--sites", default="", help="comma-separated site ids, e.g. site-a,site-b")
    parser.add_argument(
        "--superlink-address",
        action="append",
        default=[],
        help="IP address or DNS name the sites and `flwr` use to reach the SuperLink "
        "(repeatable, comma-separated allowed); 127.0.0.1 and localhost are always included",
    )
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        help="extra name for the SuperLink certificate (IP or DNS, repeatable)",
    )
    parser.add_argument("--days", type=int, default=825, help="certificate validity (days)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--sites-only",
        action="store_true",
        help="only make keys for --sites (add sites to an existing folder)",
    )
    mode.add_argument(
        "--gather-only",
        action="store_true",
        help=f"only rebuild {IDENTITIES_FILE} from DIR/*/identity.pub",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = _parse_args(argv)
    try:
        if args.gather_only:
            path = write_identities(Path(args.out).expanduser().resolve())
            count = len(gather_identities(path.parent))
            print(f"wrote {path} ({count} site(s))")
            return 0
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
        addresses = [a.strip() for item in args.superlink_address for a in item.split(",")]
        addresses += [a.strip() for item in args.san for a in item.split(",")]
        addresses = [a for a in addresses if a]
        layout = generate(
            args.out,
            sites,
            addresses,
            force=args.force,
            sites_only=args.sites_only,
            days=args.days,
        )
    except CredentialsError as exc:
        print(f"deploy.credentials: error: {exc}", file=sys.stderr)
        return 2
    if not args.sites_only:
        ips, dns = split_sans([*addresses, *ALWAYS_SANS])
        names = ", ".join([*map(str, ips), *dns])
        print(f"CA:        {layout.ca_cert} (key {layout.ca_key}: keep it offline)")
        print(f"SuperLink: {layout.server_cert} (names: {names})")
    for site in sites:
        print(f"{site}: {layout.site_dir(site)}/{{auth.key,auth.pub,identity.key,identity.pub}}")
    print(f"identities: {layout.identities}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
