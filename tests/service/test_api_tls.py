"""The API over TLS: served by uvicorn with the configured certificate; plain HTTP gets nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.api.app import create_app
from service.api.state import ServiceState
from service.app import _ApiServer, api_server_config, bind_api_socket
from service.bus import SampleBus
from service.config import ApiConfig, ConfigError, parse_config
from service.localservers import free_port


def make_cert(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp / "api.pem", tmp / "api-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.integration  # uvicorn with TLS on loopback
async def test_https_when_configured(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    api = ApiConfig(port=free_port(), tls_cert_file=str(cert), tls_key_file=str(key))
    app = create_app(ServiceState(parse_config({"plant": {"name": "tls plant"}}), SampleBus(), None))  # type: ignore[arg-type]
    server = _ApiServer(api_server_config(app, api))
    sock = bind_api_socket(api.host, api.port)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        ctx = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=ctx) as client:
            r = await client.get(f"https://127.0.0.1:{api.port}/api/v1/health")
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            assert r.headers["strict-transport-security"].startswith("max-age=")  # HSTS over HTTPS only
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{api.port}/api/v1/health")
    finally:
        server.should_exit = True
        await task
        sock.close()


def test_tls_needs_both_files() -> None:
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        parse_config({"api": {"tls_cert_file": "/x.pem"}})
