"""The OPC UA driver trusts a server's certificate only from its own trust list, never from the endpoint list.

Against real asyncua servers on loopback: one with a self-signed certificate the device does not know
(refused, nothing sent to it, its certificate kept in rejected/ until an operator moves it to trusted/),
one whose certificate a CA issued (trusted through `trusted_ca_file`, refused under another CA).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.base import ConnectionState
from drivers.opcua import OpcUaDriver, trust_list
from service.config import OpcUaDevice
from service.localservers import free_port
from service.model import Quality
from tests.drivers.conftest import RecordingSink, WaitFor
from tests.drivers.test_driver_opcua_security import PASSWORD, USER, SecurePeer

pytestmark = pytest.mark.integration  # asyncua servers on loopback

SERVER_URI = "urn:heatrec:test:secure-server"  # SecurePeer's ApplicationUri


def _device(peer: SecurePeer, pki: Path, **kw: Any) -> OpcUaDevice:
    base: dict[str, Any] = {
        "id": "cdu", "protocol": "opcua", "endpoint": peer.endpoint, "poll_interval_s": 0.1, "timeout_s": 5.0,
        "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "certificate_dir": str(pki),
        "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
        "username": USER, "password": PASSWORD,
        "points": [{"id": "temperature", "node": "nsu=urn:heatrec:test;s=dev.temperature", "writable": True,
                    "unbounded_writes": True}]}
    return OpcUaDevice.model_validate({**base, **kw})


def _ca(directory: Path, name: str) -> tuple[x509.Certificate, Any]:
    """A CA (certificate, key), its certificate also written to `directory/<name>.pem`."""
    key = cert_gen.generate_private_key()
    ca = cert_gen.generate_self_signed_app_certificate(key, name, {}, [x509.UniformResourceIdentifier(f"urn:{name}")],
                                                       [])  # no extended key usage: a CA
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.pem").write_bytes(ca.public_bytes(Encoding.PEM))
    return ca, key


@pytest.fixture(scope="module")
def self_signed_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurePeer]:
    """A secure server with its own self-signed certificate, which no device trusts yet."""
    peer = SecurePeer(free_port(), tmp_path_factory.mktemp("self-signed-server"))
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def ca_issued_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurePeer]:
    """A secure server whose certificate the test CA `plant-ca` issued (in ca/plant-ca.pem)."""
    pki = tmp_path_factory.mktemp("ca-issued-server")
    ca, ca_key = _ca(pki / "ca", "plant-ca")
    key = cert_gen.generate_private_key()
    csr = cert_gen.generate_app_certificate_signing_request(
        key, SERVER_URI, {}, [x509.UniformResourceIdentifier(SERVER_URI), x509.DNSName(socket.gethostname())],
        [ExtendedKeyUsageOID.SERVER_AUTH])
    (pki / "server.key.pem").write_bytes(cert_gen.dump_private_key_as_pem(key))
    (pki / "server.der").write_bytes(cert_gen.sign_certificate_request(csr, ca, ca_key).public_bytes(Encoding.DER))
    peer = SecurePeer(free_port(), pki)  # finds the key and the CA-issued certificate and keeps them
    peer.start()
    yield peer
    peer.stop()


async def test_an_untrusted_server_is_refused_until_its_certificate_is_moved_to_trusted(
        self_signed_peer: SecurePeer, tmp_path: Path, sink: RecordingSink, run_driver: Any,
        wait_for: WaitFor) -> None:
    dev = _device(self_signed_peer, tmp_path / "pki")
    drv = OpcUaDriver(dev, sink)
    trust = drv.trust
    assert trust.trusted_dir == tmp_path / "pki" / "trusted" and trust.rejected_dir == tmp_path / "pki" / "rejected"
    sessions = self_signed_peer.session_count()
    run_driver(drv)
    await wait_for(lambda: drv.stats.failures >= 2, 20, "refused connections")
    assert drv.state is not ConnectionState.CONNECTED
    assert drv.last_error is not None and drv.last_error.startswith("ServerUntrusted:"), drv.last_error
    assert "BadCertificateUntrusted" in drv.last_error and "move it to" in drv.last_error
    assert all(s.quality is Quality.BAD for s in sink.samples) and sink.samples
    # Nothing was sent to it: no session, so neither the user name nor the password reached it.
    assert self_signed_peer.session_count() == sessions
    served = x509.load_der_x509_certificate((self_signed_peer.pki / "server.der").read_bytes())
    rejected = trust.rejected_path(served)
    assert rejected is not None and rejected.is_file()
    assert rejected.read_bytes() == served.public_bytes(Encoding.DER)

    # The operator checks the thumbprint and moves the certificate: the driver connects without a restart.
    shutil.move(rejected, trust.trusted_dir / rejected.name)
    await wait_for(lambda: sink.quality("cdu.temperature") is Quality.GOOD, 20, "GOOD once trusted")
    assert drv.state is ConnectionState.CONNECTED
    assert (await drv.write("cdu.temperature", 32.0)).ok
    await drv.write("cdu.temperature", 31.25)


async def test_a_ca_file_trusts_the_servers_that_ca_issued_and_no_others(
        ca_issued_peer: SecurePeer, tmp_path: Path, run_driver: Any, wait_for: WaitFor) -> None:
    good, other = RecordingSink(), RecordingSink()
    drv = OpcUaDriver(_device(ca_issued_peer, tmp_path / "a", trusted_ca_file=str(ca_issued_peer.pki / "ca" /
                                                                                    "plant-ca.pem")), good)
    run_driver(drv)
    await wait_for(lambda: good.quality("cdu.temperature") is Quality.GOOD, 20, "GOOD through the plant CA")
    assert good.of("cdu.temperature")[-1].value == 31.25

    _ca(tmp_path / "elsewhere", "other-ca")
    stranger = OpcUaDriver(_device(ca_issued_peer, tmp_path / "b",
                                   trusted_ca_file=str(tmp_path / "elsewhere" / "other-ca.pem")), other)
    run_driver(stranger)
    await wait_for(lambda: stranger.stats.failures >= 1, 20, "refused under another CA")
    assert stranger.last_error is not None and "BadCertificateUntrusted" in stranger.last_error
    assert all(s.quality is Quality.BAD for s in other.samples)


async def test_a_missing_ca_file_is_a_clear_driver_error(self_signed_peer: SecurePeer, tmp_path: Path,
                                                          sink: RecordingSink, run_driver: Any,
                                                          wait_for: WaitFor) -> None:
    drv = OpcUaDriver(_device(self_signed_peer, tmp_path / "pki", trusted_ca_file=str(tmp_path / "nope.pem")), sink)
    run_driver(drv)
    await wait_for(lambda: drv.stats.failures >= 1, 20, "refused")
    assert drv.last_error is not None and "nope.pem does not exist" in drv.last_error, drv.last_error


def test_trust_list_paths_follow_the_device_config(tmp_path: Path) -> None:
    peerless = {"id": "cdu", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:1",
                "points": [{"id": "t", "node": "ns=2;s=t"}]}
    default = trust_list(OpcUaDevice.model_validate({**peerless, "certificate_dir": str(tmp_path)}))
    assert (default.trusted_dir, default.rejected_dir, default.ca_file) == \
        (tmp_path / "trusted", tmp_path / "rejected", None)
    set_ = trust_list(OpcUaDevice.model_validate({
        **peerless, "trusted_certificates_dir": str(tmp_path / "t"), "rejected_certificates_dir": str(tmp_path / "r"),
        "trusted_ca_file": str(tmp_path / "ca.pem")}))
    assert (set_.trusted_dir, set_.rejected_dir, set_.ca_file) == (tmp_path / "t", tmp_path / "r", tmp_path / "ca.pem")
