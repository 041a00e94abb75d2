"""SCADA OPC UA server against the real asyncua client: values, quality, units, users and security."""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from service.bus import SampleBus
from service.config import ScadaConfig, parse_config
from service.localservers import free_port
from service.model import Quality, Sample
from service.scada.server import ScadaServer
from tests.support import wait_until

PLANT = parse_config({"devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
    {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1},
    {"id": "heat_output", "unit": "kW", "address": 10, "function": "input", "type": "float32"}]}]})
USERS = [{"username": "op", "password": "op-secret", "role": "operator"},
         {"username": "view", "password": "view-secret", "role": "viewer"}]
T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def scada(tmp_path: Path) -> AsyncIterator[tuple[ScadaServer, SampleBus]]:
    bus = SampleBus()
    bus.publish(Sample("hp1.supply_temperature", 71.5, Quality.GOOD, T, T))
    cfg = ScadaConfig(endpoint=f"opc.tcp://127.0.0.1:{free_port()}", users=USERS,  # type: ignore[arg-type]
                      security_policies=["None", "Basic256Sha256_SignAndEncrypt", "Aes256Sha256RsaPss_Sign"],
                      certificate_dir=str(tmp_path / "pki"))
    async with ScadaServer(cfg, PLANT, bus) as srv:
        yield srv, bus


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_values_status_units_and_timestamps(scada: tuple[ScadaServer, SampleBus]) -> None:
    srv, bus = scada
    async with Client(srv.endpoint, timeout=10) as client:
        ns = await client.get_namespace_index("urn:heatrec:scada")
        plant = await client.nodes.objects.get_child([f"{ns}:Plant"])
        hp = await plant.get_child(["2:hp1"])
        var = await hp.get_child(["2:supply_temperature"])
        dv = await var.read_data_value()
        assert dv.Value.Value == 71.5 and dv.StatusCode.is_good()
        assert dv.SourceTimestamp.replace(tzinfo=UTC) == T
        eu = await (await var.get_child(["0:EngineeringUnits"])).read_value()
        assert eu.DisplayName.Text == "°C" and eu.UnitId == 4408652  # UNECE "CEL"
        # Not yet sampled: explicitly not valid.
        other = client.get_node(srv.node_id("hp1.heat_output"))
        assert (await other.read_data_value(raise_on_bad_status=False)).StatusCode.value == \
            ua.StatusCodes.BadWaitingForInitialData

        n = srv.updates
        bus.publish(Sample("hp1.supply_temperature", None, Quality.BAD, T, T))
        await wait_until(lambda: srv.updates > n, 5, "BAD sample applied")
        dv = await var.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == ua.StatusCodes.BadNoCommunication

        bus.publish(Sample("hp1.supply_temperature", 72.0, Quality.GOOD, T, T))
        bus.publish(Sample("hp1.supply_temperature", None, Quality.STALE, T, T))
        await wait_until(lambda: srv.updates > n + 2, 5, "STALE sample applied")
        dv = await var.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == ua.StatusCodes.UncertainLastUsableValue
        assert dv.Value.Value == 72.0  # the last usable value, flagged as such


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_anonymous_cannot_write_and_bad_password_is_refused(scada: tuple[ScadaServer, SampleBus]) -> None:
    srv, _ = scada
    async with Client(srv.endpoint, timeout=10) as client:
        node = client.get_node(srv.node_id("hp1.supply_temperature"))
        with pytest.raises(ua.UaStatusCodeError) as exc:
            await node.write_value(ua.DataValue(ua.Variant(50.0, ua.VariantType.Double)))
        assert exc.value.code == ua.StatusCodes.BadUserAccessDenied
    client = Client(srv.endpoint, timeout=10)
    client.set_user("op")
    client.set_password("wrong")
    with pytest.raises(ua.UaError):
        await client.connect()
    client.disconnect_socket()


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_operator_session_over_signed_and_encrypted_channel(scada: tuple[ScadaServer, SampleBus],
                                                                   tmp_path: Path) -> None:
    srv, _ = scada
    key, cert = tmp_path / "client-key.pem", tmp_path / "client-cert.der"
    await setup_self_signed_certificate(key, cert, "urn:heatrec:test:client", socket.gethostname(),
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "test client"})
    shutil.copy(cert, srv.trust.trusted_dir / cert.name)  # the operator trusts this SCADA client
    for policy in ("Basic256Sha256,SignAndEncrypt", "Aes256Sha256RsaPss,Sign"):
        client = Client(srv.endpoint, timeout=10)
        client.application_uri = "urn:heatrec:test:client"
        client.set_user("op")
        client.set_password("op-secret")
        await client.set_security_string(f"{policy},{cert},{key}")
        async with client:
            dv = await client.get_node(srv.node_id("hp1.supply_temperature")).read_data_value()
            assert dv.Value.Value == 71.5
            # The plant variables stay read-only even for operators (setpoints go through the arbiter).
            with pytest.raises(ua.UaStatusCodeError):
                await client.get_node(srv.node_id("hp1.supply_temperature")).write_value(
                    ua.DataValue(ua.Variant(50.0, ua.VariantType.Double)))


def test_permission_rules_by_role() -> None:
    from asyncua.crypto.permission_rules import User, UserRole

    from service.scada.server import _numeric, _ReadOnlyForViewers, _Users

    rules = _ReadOnlyForViewers()
    write = _numeric(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
    read = _numeric(ua.ObjectIds.ReadRequest_Encoding_DefaultBinary)
    assert rules.check_validity(User(UserRole.Anonymous), read, None)
    assert not rules.check_validity(User(UserRole.Anonymous), write, None)
    assert rules.check_validity(User(UserRole.User), write, None)
    users = _Users(ScadaConfig(users=USERS, allow_anonymous=False))  # type: ignore[arg-type]
    op, viewer = users.get_user(None, "op", "op-secret"), users.get_user(None, "view", "view-secret")
    assert op is not None and op.role is UserRole.User and op.name == "op"
    assert viewer is not None and viewer.role is UserRole.Anonymous  # viewers read only
    assert users.get_user(None, "op", "nope") is None
    assert users.get_user(None) is None  # anonymous switched off


@pytest.mark.integration  # the SCADA OPC UA server on loopback
async def test_none_policy_can_be_switched_off(tmp_path: Path) -> None:
    cfg = ScadaConfig(endpoint=f"opc.tcp://127.0.0.1:{free_port()}", allow_anonymous=False,
                      security_policies=["Basic256Sha256_SignAndEncrypt"], certificate_dir=str(tmp_path / "pki"))
    async with ScadaServer(cfg, PLANT, SampleBus()) as srv:
        endpoints = await Client(srv.endpoint, timeout=10).connect_and_get_server_endpoints()
        assert {e.SecurityMode for e in endpoints} == {ua.MessageSecurityMode.SignAndEncrypt}
        client = Client(srv.endpoint, timeout=10)  # plain, anonymous
        with pytest.raises((ua.UaError, OSError, TimeoutError)):
            await client.connect()
        client.disconnect_socket()
