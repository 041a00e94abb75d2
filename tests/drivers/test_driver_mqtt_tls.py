"""MQTT over TLS with a client certificate, against a real Mosquitto that requires one."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drivers.base import ConnectionState
from drivers.mqtt import MqttDriver
from service.config import MqttDevice
from service.localservers import MosquittoServer, free_port
from service.localservers.process import chown_tree
from tests.drivers.conftest import RecordingSink, WaitFor


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
           *, ca: bool = False, server: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class TlsMosquitto(MosquittoServer):
    """The project's Mosquitto with its listener on TLS, requiring a client certificate signed by `ca`."""

    def _write_config(self, passwd_bin: str) -> Path:
        conf = super()._write_config(passwd_bin)
        d = self.workdir
        with conf.open("a") as f:
            f.write(f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n"
                    "require_certificate true\n")
        if self._owner is not None:
            chown_tree(self.workdir, self._owner)
        return conf


@pytest.fixture(scope="module")
def tls_broker(server_root: Path) -> Iterator[tuple[TlsMosquitto, Path]]:
    """A TLS-only broker and the directory holding ca.crt, client.crt and client.key."""
    workdir = server_root / f"mqtt-tls-{secrets.token_hex(4)}"  # the broker's own user can reach it
    workdir.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("heatrec test CA", ca_key, None, ca=True)
    _write(workdir / "ca", ca)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(workdir / name, _issue(f"heatrec test {name}", key, (ca.subject, ca_key), server=server), key)
    broker = TlsMosquitto(workdir, free_port(), "heatrec", secrets.token_urlsafe(12), persistence=False)
    broker.start()
    yield broker, workdir
    broker.stop()


def _device(broker: MosquittoServer, certs: Path, **kw: Any) -> MqttDevice:
    return MqttDevice.model_validate({
        "id": "meter", "protocol": "mqtt", "endpoint": f"mqtts://127.0.0.1:{broker.port}",
        "username": broker.username, "password": broker.password, "timeout_s": 2.0,
        "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "tls_ca_file": str(certs / "ca.crt"), **kw,
        "points": [{"id": "power", "topic": "tls/meter"}]})


async def test_client_certificate_is_presented_and_values_flow(
        tls_broker: tuple[TlsMosquitto, Path], sink: RecordingSink, run_driver: Any, wait_for: WaitFor) -> None:
    broker, certs = tls_broker
    drv = MqttDriver(_device(broker, certs, tls_cert_file=str(certs / "client.crt"),
                             tls_key_file=str(certs / "client.key")), sink)
    run_driver(drv)
    await wait_for(lambda: drv.state is ConnectionState.CONNECTED, 10, "connected over TLS")
    tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    tls.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    async with aiomqtt.Client("127.0.0.1", broker.port, username=broker.username, password=broker.password,
                              tls_context=tls) as publisher:
        await publisher.publish("tls/meter", b"42.5", qos=1)
    await wait_for(lambda: sink.latest("meter.power") is not None, 5, "value over TLS")
    assert sink.of("meter.power")[-1].value == 42.5


async def test_without_client_certificate_the_broker_refuses(
        tls_broker: tuple[TlsMosquitto, Path], sink: RecordingSink, run_driver: Any, wait_for: WaitFor) -> None:
    broker, certs = tls_broker
    drv = MqttDriver(_device(broker, certs), sink)
    run_driver(drv)
    await wait_for(lambda: drv.stats.failures >= 2, 10, "failed connections")
    assert drv.last_error is not None
    assert sink.quality("meter.power") is not None and all(s.value is None for s in sink.of("meter.power"))


def test_unreadable_client_key_is_a_clear_error(tmp_path: Path) -> None:
    dev = MqttDevice.model_validate({
        "id": "meter", "protocol": "mqtt", "endpoint": "mqtts://127.0.0.1:8883",
        "tls_cert_file": str(tmp_path / "missing.crt"), "tls_key_file": str(tmp_path / "missing.key"),
        "points": [{"id": "power", "topic": "a"}]})
    with pytest.raises(Exception, match="tls_cert_file"):
        MqttDriver(dev, RecordingSink())._tls_context()
