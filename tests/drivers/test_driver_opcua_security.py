"""OPC UA security against an asyncua server that requires encryption and a user name and password."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.base import ConnectionState
from drivers.opcua import OpcUaDriver, certificate_paths
from service.config import OpcUaDevice
from service.localservers import free_port
from service.model import Quality
from tests.drivers.conftest import RecordingSink, WaitFor

pytestmark = pytest.mark.integration  # an asyncua server on loopback

T = TypeVar("T")
USER, PASSWORD = "operator", "s3cret-pw"


class _Users:
    """Only USER with PASSWORD gets in."""

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        return User(role=UserRole.User) if (username, password) == (USER, PASSWORD) else None


class SecurePeer:
    """An asyncua server on its own thread offering only signed/encrypted endpoints and user-name login."""

    def __init__(self, port: int, pki: Path) -> None:
        self.endpoint = f"opc.tcp://127.0.0.1:{port}"
        self.pki = pki
        self.server: Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opcua-secure-peer", daemon=True)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def start(self) -> None:
        """Generate the server certificate, build the address space and listen."""
        self._thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        server = Server(user_manager=_Users())  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.endpoint)
        await server.set_application_uri("urn:heatrec:test:secure-server")
        t = ua.SecurityPolicyType
        server.set_security_policy([t.Basic256Sha256_Sign, t.Basic256Sha256_SignAndEncrypt,
                                    t.Aes128Sha256RsaOaep_Sign, t.Aes128Sha256RsaOaep_SignAndEncrypt,
                                    t.Aes256Sha256RsaPss_Sign, t.Aes256Sha256RsaPss_SignAndEncrypt])
        server.set_identity_tokens([ua.UserNameIdentityToken])
        key, cert = self.pki / "server.key.pem", self.pki / "server.der"
        await setup_self_signed_certificate(key, cert, "urn:heatrec:test:secure-server", socket.gethostname(),
                                            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], {})
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        ns = await server.register_namespace("urn:heatrec:test")
        dev = await server.nodes.objects.add_object(ns, "dev")
        var = await dev.add_variable(f"ns={ns};s=dev.temperature", "temperature", 31.25)
        await var.set_writable()
        await server.start()
        self.server = server

    def session_count(self) -> int:
        """Sessions the server holds now."""
        assert self.server is not None
        return len(self.server.iserver._external_sessions)

    def stop(self) -> None:
        """Stop the server and its thread."""
        if self.server is not None:
            self.call(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def secure_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurePeer]:
    """One secure server for the module (building it takes seconds)."""
    peer = SecurePeer(free_port(), tmp_path_factory.mktemp("server-pki"))
    peer.start()
    yield peer
    peer.stop()


def _device(peer: SecurePeer, pki: Path, **kw: Any) -> OpcUaDevice:
    # The driver trusts this server: its certificate is in the device's trust list (pki/trusted).
    (pki / "trusted").mkdir(parents=True, exist_ok=True)
    shutil.copy(peer.pki / "server.der", pki / "trusted" / "secure-peer.der")
    base: dict[str, Any] = {
        "id": "cdu", "protocol": "opcua", "endpoint": peer.endpoint, "poll_interval_s": 0.1, "timeout_s": 5.0,
        "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "certificate_dir": str(pki),
        "username": USER, "password": PASSWORD,
        "points": [{"id": "temperature", "node": "nsu=urn:heatrec:test;s=dev.temperature", "writable": True,
                    "unbounded_writes": True}]}
    return OpcUaDevice.model_validate({**base, **kw})


@pytest.mark.parametrize(("policy", "mode"), [
    ("Basic256Sha256", "SignAndEncrypt"),
    ("Aes128Sha256RsaOaep", "Sign"),
    ("Aes256Sha256RsaPss", "SignAndEncrypt"),
])
async def test_secure_policies_read_and_write(secure_peer: SecurePeer, tmp_path: Path, policy: str, mode: str,
                                              sink: RecordingSink, run_driver: Any, wait_for: WaitFor) -> None:
    dev = _device(secure_peer, tmp_path / "pki", security_policy=policy, security_mode=mode)
    cert, key = certificate_paths(dev)
    assert not cert.exists()
    drv = OpcUaDriver(dev, sink)
    run_driver(drv)
    await wait_for(lambda: sink.quality("cdu.temperature") is Quality.GOOD, 15, f"GOOD over {policy}/{mode}")
    assert sink.of("cdu.temperature")[-1].value == 31.25
    assert cert.exists() and key.exists()  # generated on first use
    result = await drv.write("cdu.temperature", 33.5)
    assert result.ok, result
    await wait_for(lambda: sink.of("cdu.temperature")[-1].value == 33.5, 5, "read back over the secure channel")
    await drv.write("cdu.temperature", 31.25)


async def test_certificate_is_reused_and_wrong_password_is_refused(
        secure_peer: SecurePeer, tmp_path: Path, sink: RecordingSink, run_driver: Any, wait_for: WaitFor) -> None:
    pki = tmp_path / "pki"
    good = _device(secure_peer, pki, security_policy="Basic256Sha256", security_mode="Sign")
    drv = OpcUaDriver(good, sink)
    task = run_driver(drv)
    await wait_for(lambda: sink.quality("cdu.temperature") is Quality.GOOD, 15, "GOOD")
    task.cancel()
    cert, _ = certificate_paths(good)
    first = cert.read_bytes()

    bad = _device(secure_peer, pki, security_policy="Basic256Sha256", security_mode="Sign", password="wrong")
    other = RecordingSink()
    drv2 = OpcUaDriver(bad, other)
    run_driver(drv2)
    await wait_for(lambda: drv2.stats.failures >= 2, 20, "refused logins")
    assert drv2.state is not ConnectionState.CONNECTED
    assert drv2.last_error is not None and "Bad" in drv2.last_error
    assert all(s.quality is Quality.BAD for s in other.samples)
    assert cert.read_bytes() == first  # the certificate was not regenerated


async def test_without_security_the_server_is_not_reachable(
        secure_peer: SecurePeer, tmp_path: Path, sink: RecordingSink, run_driver: Any, wait_for: WaitFor) -> None:
    drv = OpcUaDriver(_device(secure_peer, tmp_path / "pki"), sink)
    run_driver(drv)
    await wait_for(lambda: drv.stats.failures >= 1, 20, "refused")
    assert sink.quality("cdu.temperature") is Quality.BAD
