"""`heatrec site-keys`: a fleet's credentials and TLS material, made once per site, kept in one fleet directory.

The fleet directory (docs/FLEET.md, "Adding sites"):

    fleet.json                 the broker URL the sites connect to
    ca/ca.key, ca/ca.crt       the fleet CA (made once; the key never leaves this directory)
    broker/                    for the central Mosquitto: ca.crt, server.crt/.key (with --broker-host),
                               passwd (every identity, Mosquitto's $7$ format), acl, mosquitto.conf (a listener)
    central/                   for `heatrec central`: central.crt/.key, ca.crt, central.env (its broker password),
                               broker.toml (its [broker] section), sites.toml (a [[sites]] entry per site)
    sites/<site>/              to copy to the site: pki/ (central-ca.crt, <site>.crt, <site>.key), uplink.env
                               (HEATREC_UPLINK_PASSWORD), uplink.toml (the [uplink] section of its plant file)

Everything is made only if absent, so running it again for a site changes nothing of that site's (the
broker's files are rewritten from what is there, keeping each identity's hash); `rotate` makes a site's
key, certificate and password anew. Private keys and passwords are written 0600 (service.private_files).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.errors import HeatrecError
from service.fleet_config import SITE_PATTERN
from service.localservers.mosquitto import acl_text, fleet_broker_users, hash_password, verify_password
from service.private_files import write_private

__all__ = ["CENTRAL_USER", "FleetKeys", "KeysError", "SiteKeys"]

CENTRAL_USER = "central"
CA_DAYS = 3650
PASSWORD_BYTES = 24          # 192 bits, URL-safe: no quoting needed in an env file or TOML
SITE_PASSWORD_VAR = "HEATREC_UPLINK_PASSWORD"
CENTRAL_PASSWORD_VAR = "HEATREC_CENTRAL_MQTT_PASSWORD"


class KeysError(HeatrecError):
    """The fleet directory or the request is not usable; the message says what to do."""


@dataclass
class SiteKeys:
    """What `issue` did for a site: the sections to paste and which files it made."""

    site: str
    made: list[str] = field(default_factory=list)  # relative paths written this run (empty: nothing new)
    uplink_toml: str = ""
    sites_entry: str = ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _read_env_value(path: Path, var: str) -> str | None:
    """The value of VAR in a KEY=VALUE file we wrote, or None."""
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(f"{var}="):
            return line.split("=", 1)[1]
    return None


class FleetKeys:
    """One fleet directory: its CA, the broker's files, the centre's identity, and each site's material."""

    def __init__(self, root: Path | str, *, days: int = 825) -> None:
        self.root = Path(root)
        if days < 1:
            raise KeysError(f"--days must be at least 1 (got {days})")
        self.days = days
        self._made: list[str] = []

    # ---- paths -------------------------------------------------------------------------------------------

    def site_dir(self, site: str) -> Path:
        """Where a site's bundle is."""
        return self.root / "sites" / site

    def sites(self) -> list[str]:
        """Every site the directory holds, sorted."""
        d = self.root / "sites"
        return sorted(p.name for p in d.iterdir() if (p / "uplink.env").is_file()) if d.is_dir() else []

    # ---- small writers -----------------------------------------------------------------------------------

    def _write(self, path: Path, data: bytes | str, *, private: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if private:
            write_private(path, data)
        elif isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        self._made.append(str(path.relative_to(self.root)))

    def _write_if_changed(self, path: Path, text: str, *, private: bool = False) -> None:
        if not path.is_file() or path.read_text() != text:
            self._write(path, text, private=private)

    # ---- the CA ------------------------------------------------------------------------------------------

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The fleet CA, made if the directory has none."""
        key_path, cert_path = self.root / "ca" / "ca.key", self.root / "ca" / "ca.crt"
        if key_path.is_file() != cert_path.is_file():
            missing = cert_path if key_path.is_file() else key_path
            raise KeysError(f"{missing} is missing but its pair is there: restore it from your backup (every "
                            f"certificate of the fleet hangs on it), or start a new fleet directory")
        if not key_path.is_file():
            key = ec.generate_private_key(ec.SECP384R1())
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "heatrec fleet"),
                              x509.NameAttribute(NameOID.COMMON_NAME, f"heatrec fleet CA {secrets.token_hex(4)}")])
            now = _now()
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                    .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                 key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                 key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                 decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))
            self._write(key_path, _key_pem(key), private=True)  # 0600 from the first byte
            self._write(cert_path, _cert_pem(cert))
            return cert, key
        try:
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (ValueError, TypeError) as err:
            raise KeysError(f"{key_path} or {cert_path} is not a PEM key/certificate ({err}): restore them from "
                            "your backup") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.public_key() != cert.public_key():
            raise KeysError(f"{key_path} does not belong to {cert_path}: restore the pair from your backup")
        return cert, loaded

    def _issue(self, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], key_path: Path, cert_path: Path,
               common_name: str, *, server_names: list[str] | None = None, rotate: bool = False) -> bool:
        """A key and a certificate signed by the CA, unless both are there and the certificate is the CA's."""
        ca_cert, ca_key = ca
        if not rotate and key_path.is_file() and cert_path.is_file():
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                cert.verify_directly_issued_by(ca_cert)
                key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            except (ValueError, TypeError, InvalidSignature) as err:
                raise KeysError(f"{cert_path} is not a certificate of this fleet's CA, or {key_path} is not a key "
                                f"({err.__class__.__name__}): run again with --rotate to issue them anew") from None
            if key.public_key() != cert.public_key():
                raise KeysError(f"{key_path} does not belong to {cert_path}: run again with --rotate to issue "
                                "them anew")
            return False
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "heatrec fleet"),
                                            x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(min(now + dt.timedelta(days=self.days), ca_cert.not_valid_after_utc))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if server_names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in server_names]),
                                            critical=False)
        self._write(key_path, _key_pem(key), private=True)
        self._write(cert_path, _cert_pem(builder.sign(ca_key, hashes.SHA256())))
        return True

    # ---- the fleet's settings ----------------------------------------------------------------------------

    def _url(self, url: str | None, broker_hosts: list[str]) -> str:
        path = self.root / "fleet.json"
        saved = json.loads(path.read_text()).get("url") if path.is_file() else None
        if url is None:
            url = saved or (f"mqtts://{broker_hosts[0]}:8883" if broker_hosts else None)
        if url is None:
            raise KeysError(f"{self.root}: no broker URL yet: give --url mqtts://HOST:8883 (or --broker-host HOST) "
                            "the first time")
        if not re.fullmatch(r"mqtts://[^/:\s]+(:\d{1,5})?/?", url):
            raise KeysError(f"--url {url!r}: give the central broker as mqtts://HOST[:PORT] (the fleet's "
                            "certificates are for TLS)")
        if url != saved:
            self.root.mkdir(parents=True, exist_ok=True)
            self._write(path, json.dumps({"url": url}, indent=2) + "\n")
        return url

    # ---- the whole run -----------------------------------------------------------------------------------

    def issue(self, site: str | None, *, url: str | None = None, broker_hosts: list[str] | None = None,
              rotate: bool = False) -> SiteKeys | None:
        """Make what is missing for `site` (and the broker certificate for `broker_hosts`); rewrite the broker files.

        `rotate` issues anew what the call names: the site's key, certificate and password, and the
        broker's certificate when `broker_hosts` are given.
        """
        hosts = list(dict.fromkeys(broker_hosts or []))
        if site is not None:
            if not re.fullmatch(SITE_PATTERN, site):
                raise KeysError(f"site id {site!r}: use lower case letters, digits, '_' and '-', starting with a "
                                "letter (it is one MQTT topic level, heatrec/v1/<site>/)")
            if site == CENTRAL_USER:
                raise KeysError(f"site id '{CENTRAL_USER}' is the centre's broker identity: choose another")
        elif not hosts:
            raise KeysError("name a SITE to issue its credentials, or --broker-host HOST for the broker certificate")
        if rotate and site is None and not hosts:
            raise KeysError("--rotate rotates what the command names: give a SITE or --broker-host")
        self._made = []
        fleet_url = self._url(url, hosts)
        ca = self._ca()
        ca_pem = (self.root / "ca" / "ca.crt").read_text()
        broker = self.root / "broker"
        self._write_if_changed(broker / "ca.crt", ca_pem)
        if hosts:
            server_cert = broker / "server.crt"
            if server_cert.is_file() and not rotate:
                have = self._server_names(server_cert)
                if set(hosts) - set(have):
                    raise KeysError(f"{server_cert} is for {', '.join(have)}, not {', '.join(hosts)}: run again "
                                    "with --rotate to reissue it for the names given")
            self._issue(ca, broker / "server.key", server_cert, hosts[0], server_names=hosts, rotate=rotate)
        central_pw = self._password(self.root / "central" / "central.env", CENTRAL_PASSWORD_VAR, rotate=False)
        central = self.root / "central"
        self._issue(ca, central / "central.key", central / "central.crt", CENTRAL_USER)
        self._write_if_changed(central / "ca.crt", ca_pem)
        self._write_if_changed(central / "broker.toml", self._broker_toml(fleet_url))
        result: SiteKeys | None = None
        if site is not None:
            d = self.site_dir(site)
            self._password(d / "uplink.env", SITE_PASSWORD_VAR, rotate=rotate)
            self._issue(ca, d / "pki" / f"{site}.key", d / "pki" / f"{site}.crt", site, rotate=rotate)
            self._write_if_changed(d / "pki" / "central-ca.crt", ca_pem)
            result = SiteKeys(site, uplink_toml=self.uplink_toml(site, fleet_url), sites_entry=self.sites_entry(site))
            self._write_if_changed(d / "uplink.toml", result.uplink_toml)
        self._write_if_changed(central / "sites.toml", "".join(self.sites_entry(s) + "\n" for s in self.sites()))
        self._write_broker_files(central_pw)
        if result is not None:
            mine = f"sites/{site}/"
            result.made = [p for p in self._made if p.startswith(mine)]
        return result

    def _server_names(self, cert_path: Path) -> list[str]:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return []
        return [str(n.value) for n in san]

    def _password(self, path: Path, var: str, *, rotate: bool) -> str:
        pw = None if rotate else _read_env_value(path, var)
        if pw is None:
            pw = secrets.token_urlsafe(PASSWORD_BYTES)
            self._write(path, f"{var}={pw}\n", private=True)
        return pw

    def _broker_toml(self, url: str) -> str:
        return (f'[broker]\nurl = "{url}"\nusername = "{CENTRAL_USER}"\npassword = "${{{CENTRAL_PASSWORD_VAR}}}"\n'
                'tls_ca_file = "ca.crt"\ntls_cert_file = "central.crt"\ntls_key_file = "central.key"\n')

    def uplink_toml(self, site: str, url: str) -> str:
        """The [uplink] section of a site's plant file (paths relative to the plant file: pki/ next to it)."""
        return (f'[uplink]\nurl = "{url}"\nsite = "{site}"\nusername = "{site}"\n'
                f'password = "${{{SITE_PASSWORD_VAR}}}"\ntls_ca_file = "pki/central-ca.crt"\n'
                f'tls_cert_file = "pki/{site}.crt"\ntls_key_file = "pki/{site}.key"\noutbox_dir = "var/uplink"\n')

    def sites_entry(self, site: str) -> str:
        """The site's [[sites]] entry of central.toml."""
        return f'[[sites]]\nid = "{site}"\n'

    def _write_broker_files(self, central_pw: str) -> None:
        """passwd and acl of every identity (fleet_broker_users' rights), and a TLS listener for mosquitto.conf."""
        broker = self.root / "broker"
        sites = {s: _read_env_value(self.site_dir(s) / "uplink.env", SITE_PASSWORD_VAR) or "" for s in self.sites()}
        users = fleet_broker_users(sites, (CENTRAL_USER, central_pw))
        old: dict[str, str] = {}
        pw_path = broker / "passwd"
        if pw_path.is_file():
            for line in pw_path.read_text().splitlines():
                name, _, entry = line.partition(":")
                old[name] = entry
        lines = []
        for u in users:  # keep a hash that still matches: the file changes only when an identity does
            entry = old.get(u.username, "")
            lines.append(f"{u.username}:{entry if verify_password(u.password, entry) else hash_password(u.password)}\n")
        self._write_if_changed(pw_path, "".join(lines), private=True)
        self._write_if_changed(broker / "acl", acl_text(users), private=True)
        b = broker.absolute()
        port = self._port()
        self._write_if_changed(broker / "mosquitto.conf", "\n".join([
            "# heatrec fleet broker listener (generated by heatrec site-keys); include it in mosquitto.conf.",
            "# Mosquitto's user must be able to read server.key, passwd and acl (chown them to it).",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {b / 'passwd'}",
            f"acl_file {b / 'acl'}",
            f"listener {port}",
            f"cafile {b / 'ca.crt'}",
            f"certfile {b / 'server.crt'}",
            f"keyfile {b / 'server.key'}",
            "require_certificate true",
            ""]))

    def _port(self) -> int:
        url = json.loads((self.root / "fleet.json").read_text())["url"]
        m = re.search(r":(\d+)/?$", url.split("://", 1)[1])
        return int(m.group(1)) if m else 8883
