"""Where the SCADA server keeps its certificates, and the client identity the demo trusts for itself.

`<certificate_dir>/` holds the server's certificate and key; `trusted/` the client certificates (or CAs)
allowed to open a signed channel, `rejected/` those refused (defaults; `[scada]` can move both). The demo
makes one client identity next to them (`<certificate_dir>/../scada-client/`) and trusts it, so its own
SCADA sessions, the banner's instructions and the tests that log in as an operator work out of the box.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
from pathlib import Path

from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.opcua_trust import write_certificate
from service.private_files import ensure_private_key
from service.scada.config import ScadaConfig

DEMO_CLIENT_URI = "urn:heatrec:demo:scada-client"


def trusted_dir(cfg: ScadaConfig, base_dir: Path = Path(".")) -> Path:
    """The directory of trusted SCADA client certificates."""
    return base_dir / (cfg.trusted_certificates_dir or str(Path(cfg.certificate_dir) / "trusted"))


def rejected_dir(cfg: ScadaConfig, base_dir: Path = Path(".")) -> Path:
    """The directory refused SCADA client certificates are written to."""
    return base_dir / (cfg.rejected_certificates_dir or str(Path(cfg.certificate_dir) / "rejected"))


def client_identity_paths(cfg: ScadaConfig, base_dir: Path = Path(".")) -> tuple[Path, Path]:
    """(certificate, private key) of the demo's SCADA client identity."""
    directory = base_dir / Path(cfg.certificate_dir).parent / "scada-client"
    return directory / "client-cert.der", directory / "client-key.pem"


async def ensure_client_identity(cfg: ScadaConfig, base_dir: Path = Path(".")) -> tuple[Path, Path]:
    """Make the demo's SCADA client certificate once (reused while valid) and trust it; (certificate, key).

    Its ApplicationUri is DEMO_CLIENT_URI: a client using it sets that as its application_uri.
    """
    cert, key = client_identity_paths(cfg, base_dir)
    cert.parent.mkdir(parents=True, exist_ok=True)
    lock_path = cert.parent / ".lock"
    with lock_path.open("a") as lock:  # two demos or test runs starting together make one identity
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            await asyncio.to_thread(ensure_private_key, key)  # 0600 from its first byte; asyncua adds the certificate
            await setup_self_signed_certificate(key, cert, DEMO_CLIENT_URI, socket.gethostname(),
                                                [ExtendedKeyUsageOID.CLIENT_AUTH],
                                                {"organizationName": "heatrec"})
            key.chmod(0o600)
            write_certificate(trusted_dir(cfg, base_dir), x509.load_der_x509_certificate(cert.read_bytes()))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return cert, key
