"""The SCADA OPC UA server resists guessing and sniffing: each attack made with a real asyncua Client, and refused.

- guessing: 30 wrong passwords are answered ever later and lock the user out; the right password is refused
  while locked and accepted after the lockout; an address trying many names is locked as well;
- sniffing: no user name over a channel without security, no unencrypted password on a signed-only channel;
- strangers: an unknown client certificate is refused and kept in rejected/ until moved to trusted/, and a
  channel opened with one key cannot borrow a trusted certificate for its session;
- bad values: ±Inf/NaN written to the control nodes are refused for that node alone, and audited.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench.closed_loop import control_config
from drivers.base import WriteResult
from service.audit import AuditEntry
from service.bus import SampleBus
from service.config import ScadaConfig, parse_config
from service.control.loop import ControlLoop
from service.localservers import free_port
from service.scada.config import ScadaLogin
from service.scada.guard import MAX_TRACKED, LoginGuard
from service.scada.pki import DEMO_CLIENT_URI, ensure_client_identity
from service.scada.server import ScadaServer
from service.writes import WriteArbiter
from tests.support import wait_until

PLANT = parse_config({"devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
    {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1}]}]})
USERS = [{"username": "op", "password": "op-secret", "role": "operator"},
         {"username": "view", "password": "view-secret", "role": "viewer"}]
POLICIES = ["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt", "Aes256Sha256RsaPss_Sign"]
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.08, "lockout_failures": 5, "lockout_failures_per_address": 1000,
        "lockout_window_s": 60.0, "lockout_s": 60.0}
HOST = "127.0.0.1"


def _config(tmp_path: Path, **login: Any) -> ScadaConfig:
    return ScadaConfig.model_validate({"endpoint": f"opc.tcp://{HOST}:{free_port()}", "users": USERS,
                                       "security_policies": POLICIES, "certificate_dir": str(tmp_path / "pki"),
                                       "login": {**FAST, **login}})


async def _identity(srv: ScadaServer) -> tuple[Path, Path]:
    """A client certificate the server trusts (the demo's own identity, made and trusted next to its PKI)."""
    return await ensure_client_identity(srv.cfg)


async def _client(srv: ScadaServer, cert: Path, key: Path, security: str = "Basic256Sha256,SignAndEncrypt",
                  uri: str = DEMO_CLIENT_URI) -> Client:
    client = Client(srv.endpoint, timeout=10)
    client.application_uri = uri
    await client.set_security_string(f"{security},{cert},{key}")
    return client


async def _open_session(client: Client) -> None:
    """A secure channel and a session, not yet activated: the attacker then tries one login after another."""
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    await client.create_session()


async def _login(srv: ScadaServer, cert: Path, key: Path, user: str, password: str) -> bool:
    client = await _client(srv, cert, key)
    client.set_user(user)
    client.set_password(password)
    try:
        await client.connect()
    except ua.UaStatusCodeError:
        client.disconnect_socket()
        return False
    await client.disconnect()
    return True


async def _connect_refused(client: Client, user: str | None = None, password: str = "") -> int:
    """Connect (logging in as `user` when given); the status the server refuses it with."""
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    with pytest.raises(ua.UaStatusCodeError) as exc:
        await client.connect()
    client.disconnect_socket()
    return exc.value.code


async def _refused(client: Client, user: str, password: str) -> int:
    with pytest.raises(ua.UaStatusCodeError) as exc:
        await client.activate_session(user, password)
    return exc.value.code


@pytest.fixture
async def scada(tmp_path: Path) -> AsyncIterator[ScadaServer]:
    async with ScadaServer(_config(tmp_path), PLANT, SampleBus()) as srv:
        yield srv


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_thirty_wrong_passwords_are_slowed_down_and_lock_the_user_out(
        scada: ScadaServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = await _identity(scada)
    guard = scada.login_guard
    client = await _client(scada, cert, key)
    try:
        await _open_session(client)
        codes = [await _refused(client, "op", f"guess-{i}") for i in range(30)]
        # The right password while the lockout lasts: refused like any other, the password not even looked at.
        codes.append(await _refused(client, "op", "op-secret"))
    finally:
        client.disconnect_socket()
    assert set(codes) == {ua.StatusCodes.BadUserAccessDenied}
    assert guard.locked("op", HOST) > 50
    # Five failures counted and answered ever later (0.01, 0.02, 0.04, then the cap 0.08 s), then the lockout:
    # the other 25 guesses and the right password refused after the longest delay.
    s = guard.stats
    assert (s.failures, s.lockouts, s.refused_locked, s.delayed) == (5, 1, 26, 31)
    assert s.delay_s == pytest.approx(0.01 + 0.02 + 0.04 + 0.08 + 0.08 + 26 * 0.08)
    # Logged once, with the user and the address; no password anywhere in the log.
    lockouts = [r.getMessage() for r in caplog.records if "locked out" in r.getMessage()]
    assert len(lockouts) == 1 and "'op'" in lockouts[0] and HOST in lockouts[0], lockouts
    # (asyncua's client logs its own requests at DEBUG, password included; the server side never does.)
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith("asyncua.client")]
    assert server_side and not [m for m in server_side if "guess-" in m or "op-secret" in m]
    # The lockout is the user's: another user from the same address still gets in, and so does anonymous reading.
    assert await _login(scada, cert, key, "view", "view-secret")
    async with Client(scada.endpoint, timeout=10) as anon:
        assert (await anon.get_node(scada.node_id("hp1.supply_temperature")).read_data_value(
            raise_on_bad_status=False)).StatusCode.value == ua.StatusCodes.BadWaitingForInitialData


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_a_lockout_ends_after_its_time(tmp_path: Path) -> None:
    async with ScadaServer(_config(tmp_path, lockout_failures=3, lockout_s=1.0), PLANT, SampleBus()) as srv:
        cert, key = await _identity(srv)
        client = await _client(srv, cert, key)
        try:
            await _open_session(client)
            for i in range(3):
                await _refused(client, "op", f"guess-{i}")
        finally:
            client.disconnect_socket()
        assert srv.login_guard.locked("op", HOST) > 0
        assert not await _login(srv, cert, key, "op", "op-secret")  # locked: refused with the right password
        await wait_until(lambda: _login(srv, cert, key, "op", "op-secret"), 15, "the login accepted after the lockout")
        assert srv.login_guard.locked("op", HOST) == 0
        assert srv.login_guard.stats.lockouts == 1 and srv.login_guard.stats.refused_locked >= 1


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_an_address_trying_many_user_names_is_locked_out(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.scada.guard")
    cfg = _config(tmp_path, lockout_failures=100, lockout_failures_per_address=4)
    async with ScadaServer(cfg, PLANT, SampleBus()) as srv:
        cert, key = await _identity(srv)
        client = await _client(srv, cert, key)
        try:
            await _open_session(client)
            for name in ("admin", "root", "operator", "scada"):
                await _refused(client, name, "password")
        finally:
            client.disconnect_socket()
        assert srv.login_guard.locked("view", HOST) > 0  # any user name, from this address
        assert not await _login(srv, cert, key, "view", "view-secret")
        lockouts = [r.getMessage() for r in caplog.records if "locked out" in r.getMessage()]
        assert len(lockouts) == 1 and f"address {HOST}" in lockouts[0] and "'scada'" in lockouts[0], lockouts


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_no_user_name_over_a_channel_without_security(scada: ScadaServer) -> None:
    endpoints = await Client(scada.endpoint, timeout=10).connect_and_get_server_endpoints()
    plain = [e for e in endpoints if e.SecurityMode == ua.MessageSecurityMode.None_]
    assert plain and all(t.TokenType != ua.UserTokenType.UserName for e in plain for t in e.UserIdentityTokens)
    # The attack of the review: the right password in clear over the None endpoint (asyncua's client sends it so).
    code = await _connect_refused(Client(scada.endpoint, timeout=10), "op", "op-secret")
    assert code == ua.StatusCodes.BadSecurityModeInsufficient
    assert scada.rules.insecure_logins_refused == 1
    assert scada.login_guard.stats.failures == 0  # refused before the password was looked at


class _PlainPasswordClient(Client):
    """A client that protects its password as `token_policy` does, whatever the server's token policy asks."""

    token_policy = "http://opcfoundation.org/UA/SecurityPolicy#None"  # the password in clear

    def server_policy(self, token_type: ua.UserTokenType) -> ua.UserTokenPolicy:
        return dataclasses.replace(super().server_policy(token_type), SecurityPolicyUri=self.token_policy)


class _Rsa15PasswordClient(_PlainPasswordClient):
    """A client that encrypts its password with RSA PKCS#1 v1.5 (Basic128Rsa15, open to padding oracles)."""

    token_policy = "http://opcfoundation.org/UA/SecurityPolicy#Basic128Rsa15"


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_an_unencrypted_password_on_a_signed_only_channel_is_refused(scada: ScadaServer) -> None:
    cert, key = await _identity(scada)
    for kind, security in ((_PlainPasswordClient, "Basic256Sha256,Sign"), (_Rsa15PasswordClient, "Basic256Sha256,Sign"),
                           (_Rsa15PasswordClient, "Basic256Sha256,SignAndEncrypt")):
        sneaky = kind(scada.endpoint, timeout=10)
        sneaky.application_uri = DEMO_CLIENT_URI
        await sneaky.set_security_string(f"{security},{cert},{key}")
        code = await _connect_refused(sneaky, "op", "op-secret")
        assert code == ua.StatusCodes.BadIdentityTokenRejected, (kind, security)
    assert scada.rules.insecure_logins_refused == 3
    assert scada.login_guard.stats.failures == 0
    # The same login with the password encrypted per the token policy (asyncua's own client) is accepted,
    # on a signed-only channel and on an encrypted one.
    for security in ("Basic256Sha256,Sign", "Aes256Sha256RsaPss,Sign", "Basic256Sha256,SignAndEncrypt"):
        client = await _client(scada, cert, key, security)
        client.set_user("op")
        client.set_password("op-secret")
        async with client:
            assert await client.get_node(scada.node_id("hp1.supply_temperature")).read_data_value(
                raise_on_bad_status=False)


def test_the_none_policy_is_off_by_default() -> None:
    assert "None" not in ScadaConfig().security_policies
    assert ScadaConfig().login.lockout_failures >= 1


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_an_unknown_client_certificate_is_refused_and_kept_until_trusted(scada: ScadaServer,
                                                                              tmp_path: Path) -> None:
    key, cert = tmp_path / "stranger-key.pem", tmp_path / "stranger-cert.der"
    uri = "urn:example:scada-workstation"
    await setup_self_signed_certificate(key, cert, uri, socket.gethostname(), [ExtendedKeyUsageOID.CLIENT_AUTH],
                                        {"organizationName": "example"})
    for user in (None, "op"):  # anonymous, then with the right password: the certificate decides first
        code = await _connect_refused(await _client(scada, cert, key, uri=uri), user, "op-secret")
        assert code == ua.StatusCodes.BadCertificateUntrusted
    assert scada.rules.certificates_refused == 2
    rejected = scada.trust.rejected_path(x509.load_der_x509_certificate(cert.read_bytes()))
    assert rejected is not None and rejected.read_bytes() == cert.read_bytes()
    # docs/DEPLOY.md: the operator moves it from rejected/ to trusted/; the next connection gets in, no restart.
    shutil.move(rejected, scada.trust.trusted_dir / rejected.name)
    client = await _client(scada, cert, key, uri=uri)
    client.set_user("op")
    client.set_password("op-secret")
    async with client:
        assert await client.get_namespace_index("urn:heatrec:scada") == 2


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_a_channel_cannot_borrow_a_trusted_certificate_for_its_session(scada: ScadaServer,
                                                                            tmp_path: Path) -> None:
    trusted_cert, _ = await _identity(scada)
    key, cert = tmp_path / "stranger-key.pem", tmp_path / "stranger-cert.der"
    await setup_self_signed_certificate(key, cert, DEMO_CLIENT_URI, socket.gethostname(),
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {})
    client = await _client(scada, cert, key)  # the channel is opened with the stranger's key ...
    try:
        await client.connect_socket()
        await client.send_hello()
        await client.open_secure_channel()
        # ... and CreateSession names the trusted certificate (public, anyone may have a copy).
        client.security_policy.host_certificate = trusted_cert.read_bytes()
        with pytest.raises(ua.UaStatusCodeError) as exc:
            await client.create_session()
    finally:
        client.disconnect_socket()
    assert exc.value.code == ua.StatusCodes.BadCertificateInvalid


class _Trail:
    """The arbiter's and the loop's audit entries, as the database would store them (JSON)."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    async def __call__(self, entry: AuditEntry) -> None:
        json.dumps([entry.requested, entry.applied], allow_nan=False)  # jsonb has no Infinity or NaN
        self.entries.append(entry)


async def _no_device(point: str, value: float) -> WriteResult:
    return WriteResult(point, "ok", value, value, value)


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_infinite_and_nan_writes_are_refused_for_that_node_alone_and_audited(tmp_path: Path) -> None:
    trail = _Trail()
    loop = ControlLoop(control_config(), SampleBus(), _no_device, audit=trail)
    arbiter = WriteArbiter({}, _no_device, audit=trail)
    arbiter.control = loop
    async with ScadaServer(_config(tmp_path), PLANT, SampleBus(), control=loop, arbiter=arbiter) as srv:
        cert, key = await _identity(srv)
        client = await _client(srv, cert, key)
        client.set_user("op")
        client.set_password("op-secret")
        async with client:
            ns = await client.get_namespace_index("urn:heatrec:scada")
            target = client.get_node(ua.NodeId("control.SupplyTemperatureTarget", ns))
            expires = client.get_node(ua.NodeId("control.ExpiresInS", ns))
            mode = client.get_node(ua.NodeId("control.Mode", ns))
            values = [(target, math.inf), (target, -math.inf), (expires, math.nan), (expires, math.inf),
                      (target, 70.0)]
            params = ua.WriteParameters(NodesToWrite=[
                ua.WriteValue(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value,
                              Value=ua.DataValue(ua.Variant(v, ua.VariantType.Double))) for node, v in values] + [
                ua.WriteValue(NodeId=mode.nodeid, AttributeId=ua.AttributeIds.Value,
                              Value=ua.DataValue(ua.Variant("auto", ua.VariantType.String)))])
            results = await client.uaclient.write(params)  # one request: each node its own answer
            assert [r.value for r in results] == [ua.StatusCodes.BadOutOfRange] * 4 + [ua.StatusCodes.Good] * 2
    assert loop.status().override == 70.0
    refused = [e for e in trail.entries if e.outcome == "refused"]
    assert [e.requested for e in refused] == [{"supply_temperature_target": "inf"},
                                              {"supply_temperature_target": "-inf"},
                                              {"expires_in_s": "nan"}, {"expires_in_s": "inf"}]
    assert {(e.principal, e.role, e.action, e.target) for e in refused} == {("scada:op", "operator", "control.set",
                                                                            "control")}
    assert all("finite" in e.detail for e in refused)
    accepted = [e for e in trail.entries if e.outcome == "accepted"]
    assert accepted and accepted[0].requested is not None


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_guard_backs_off_locks_once_and_forgets_after_the_window() -> None:
    clock = _Clock()
    guard = LoginGuard(ScadaLogin(backoff_initial_s=0.5, backoff_max_s=3.0, lockout_failures=5,
                                  lockout_failures_per_address=20, lockout_window_s=60.0, lockout_s=120.0), clock)
    assert [guard.failed("op", "10.0.0.9") for _ in range(4)] == [0.5, 1.0, 2.0, 3.0]
    assert guard.locked("op", "10.0.0.9") == 0
    clock.t += 61  # the window passed: the count starts again
    assert guard.failed("op", "10.0.0.9") == 0.5
    for _ in range(4):
        guard.failed("op", "10.0.0.9")
    assert guard.stats.lockouts == 1 and guard.locked("op", "10.0.0.1") == pytest.approx(120.0)
    assert guard.refuse_locked() == 3.0 and guard.stats.refused_locked == 1
    clock.t += 121
    assert guard.locked("op", "10.0.0.9") == 0
    assert guard.failed("op", "10.0.0.9") == 0.5  # a fresh count after the lockout
    guard.succeeded("op")  # a correct login clears the user's count, not the address's
    assert guard.failed("op", "10.0.0.9") == 1.0


def test_the_guard_locks_an_address_and_a_flood_of_names_does_not_lift_a_lockout() -> None:
    clock = _Clock()
    guard = LoginGuard(ScadaLogin(lockout_failures=3, lockout_failures_per_address=4), clock)
    for name in ("a", "b", "c", "d"):
        guard.failed(name, "10.0.0.7")
    assert guard.locked("anyone", "10.0.0.7") > 0 and guard.locked("anyone", "10.0.0.8") == 0
    for _ in range(3):
        guard.failed("op", "10.0.0.8")
    assert guard.locked("op", "10.0.0.99") > 0
    for i in range(MAX_TRACKED + 10):  # strangers try every name from everywhere
        guard.failed(f"user{i}", f"10.1.{i // 250}.{i % 250}")
    assert guard.locked("op", "10.0.0.99") > 0 and guard.locked("x", "10.0.0.7") > 0
