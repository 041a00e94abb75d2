"""Trust lists for OPC UA application certificates, on asyncua's TrustStore and CertificateValidator.

One list serves either side: heatrec's SCADA server checks the certificates of SCADA clients, the OPC UA
driver checks the certificates of the servers it reads. A certificate is trusted when it, or a CA that
issued it, is in the trusted directory (DER or PEM files) or in an optional CA file; it must also be
within its validity period and name the peer's ApplicationUri. A certificate refused for not being
trusted is written to the rejected directory, named `<common name>_<SHA-1 thumbprint>.der`: an operator
who knows it is the right peer moves that file into the trusted directory. The directory is read again
whenever its contents change, so that takes effect at the next connection, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

MAX_REJECTED = 200  # certificates kept in a rejected directory: strangers must not fill the disk
_CHECKS = (CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.URI
           | CertificateValidatorOptions.TRUSTED)
_CERT_FILE = re.compile(r".*\.(der|pem|crt|cer)$", re.IGNORECASE)


class _Quiet(logging.Filter):
    """asyncua's TrustStore logs a traceback for every untrusted certificate; the trust list says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Not trusted certificate used")


_ASYNCUA_TRUST_LOG = logging.getLogger("asyncuagds.validate")
if not any(isinstance(f, _Quiet) for f in _ASYNCUA_TRUST_LOG.filters):
    _ASYNCUA_TRUST_LOG.addFilter(_Quiet())


def first_certificate(der: bytes) -> bytes:
    """The first certificate of a DER chain (OPC UA sends chains as concatenated DER)."""
    if len(der) < 2 or der[0] != 0x30:
        return der
    n = der[1]
    if n < 0x80:
        return der[:2 + n]
    k = n & 0x7F
    return der[:2 + k + int.from_bytes(der[2:2 + k], "big")]


def thumbprint(cert: x509.Certificate) -> str:
    """The SHA-1 thumbprint OPC UA names certificates by (hex)."""
    return hashlib.sha1(cert.public_bytes(Encoding.DER), usedforsecurity=False).hexdigest()


def describe(cert: x509.Certificate) -> str:
    """`CN=…, thumbprint …` for logs and error messages."""
    return f"CN={_common_name(cert)!r}, SHA-1 thumbprint {thumbprint(cert)}"


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def certificate_file_name(cert: x509.Certificate) -> str:
    """`<common name>_<thumbprint>.der`, safe as a file name (no spaces)."""
    cn = re.sub(r"[^A-Za-z0-9_.@-]+", "_", _common_name(cert)).strip("_.")[:64] or "certificate"
    return f"{cn}_{thumbprint(cert)}.der"


def write_certificate(directory: Path, cert: x509.Certificate) -> Path:
    """Write `cert` (DER) into `directory` under its OPC UA name, atomically; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / certificate_file_name(cert)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".der")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cert.public_bytes(Encoding.DER))
        os.chmod(tmp, 0o644)  # a certificate is public
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_certificates(location: Path) -> list[x509.Certificate]:
    """The certificates of a file (PEM, one or more; or one DER) or of a directory's certificate files."""
    if location.is_file():
        data = location.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    certs: list[x509.Certificate] = []
    if not location.is_dir():
        return certs
    for path in sorted(location.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not _CERT_FILE.match(path.name):
            continue
        try:
            certs.extend(read_certificates(path))
        except ValueError as err:  # one unreadable file must not void the whole list
            log.warning("trust list %s: %s is not a certificate (%s); ignored", location, path.name, err)
    return certs


class _Store(TrustStore):
    """asyncua's TrustStore over a directory (only certificate files; none if it is missing) and a CA file."""

    async def _load_trust_location(self, location: Path) -> list[x509.Certificate]:
        return await asyncio.to_thread(read_certificates, location)

    async def load_trust(self) -> None:
        """(Re)load the trusted certificates; an empty list trusts nobody (cryptography refuses an empty Store)."""
        certs: list[x509.Certificate] = []
        for location in self.trust_locations:
            certs.extend(await self._load_trust_location(location))
        self._trust_store = x509.verification.Store(certs) if certs else None


class TrustList:
    """The certificates an OPC UA peer must present: validates, counts, and keeps what it refused."""

    def __init__(self, trusted_dir: Path, rejected_dir: Path | None = None, ca_file: Path | None = None, *,
                 peer: str = "client", log_refusals: bool = True) -> None:
        self.trusted_dir, self.rejected_dir, self.ca_file = trusted_dir, rejected_dir, ca_file
        self._peer, self._log_refusals = peer, log_refusals
        self.last_refusal = ""  # why the latest certificate was refused, for an operator
        self._store = _Store([trusted_dir] + ([ca_file] if ca_file is not None else []), [])
        self._validator = CertificateValidator(_CHECKS, self._store)
        self._seen: object = None
        self.accepted = 0
        self.refused = 0

    def _signature(self) -> object:
        """What the trusted files are now (names, times, sizes); makes the directories an operator fills."""
        for d in (self.trusted_dir, self.rejected_dir):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        entries: list[tuple[str, int, int]] = []
        for p in [self.trusted_dir, *([self.ca_file] if self.ca_file is not None else [])]:
            try:
                if p.is_dir():
                    for e in os.scandir(p):
                        st = e.stat()
                        entries.append((e.path, st.st_mtime_ns, st.st_size))
                else:
                    st = p.stat()
                    entries.append((str(p), st.st_mtime_ns, st.st_size))
            except OSError:
                entries.append((str(p), -1, -1))
        return tuple(sorted(entries))

    async def reload_if_changed(self) -> None:
        """Read the trusted certificates again if a file was added, removed or changed.

        OSError when the configured CA file is missing or unreadable, ValueError when it holds no certificate.
        """
        if self.ca_file is not None and not self.ca_file.is_file():
            raise FileNotFoundError(f"the trusted CA file {self.ca_file} does not exist")
        sig = self._signature()
        if sig != self._seen:
            await self._store.load()
            self._seen = sig

    async def validate(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        """Raise ServiceError (BadCertificateUntrusted, ...TimeInvalid, ...UriInvalid) unless `cert` may connect.

        The signature of asyncua's CertificateValidatorMethod: usable as a Client's certificate_validator.
        """
        await self.reload_if_changed()
        try:
            await self._validator.validate(cert, app)
        except ServiceError as err:
            self.refused += 1
            status = ua.StatusCode(ua.UInt32(err.code)).name
            where = self._reject(cert) if err.code == ua.StatusCodes.BadCertificateUntrusted else ""
            self.last_refusal = f"{status}: {describe(cert)}{where}"
            if self._log_refusals:
                log.warning("OPC UA %s certificate refused (%s)", self._peer, self.last_refusal)
            raise
        self.accepted += 1

    __call__ = validate

    def _reject(self, cert: x509.Certificate) -> str:
        """Keep the refused certificate for review; what to tell the operator."""
        if self.rejected_dir is None:
            return ""
        try:
            existing = list(self.rejected_dir.glob("*.der")) if self.rejected_dir.is_dir() else []
            name = certificate_file_name(cert)
            if len(existing) >= MAX_REJECTED and not (self.rejected_dir / name).exists():
                return f"; not kept: {self.rejected_dir} already holds {MAX_REJECTED} certificates"
            path = write_certificate(self.rejected_dir, cert)
        except OSError as err:
            return f"; could not keep it in {self.rejected_dir}: {err}"
        return f"; written to {path}: move it to {self.trusted_dir} to trust it"

    def rejected_path(self, cert: x509.Certificate) -> Path | None:
        """Where a refused `cert` is kept (None without a rejected directory)."""
        return None if self.rejected_dir is None else self.rejected_dir / certificate_file_name(cert)
