"""The CDU's OPC UA face, read and written by a real asyncua client on loopback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import Client, Node, ua

from service.clock import VirtualClock
from service.config import OpcUaDevice, SimCdu, SimHeatPump, SimulationConfig, load_config
from simulators.cdu_opcua import NAMESPACE_URI, CduOpcUaServer
from simulators.errors import PortInUseError
from simulators.plant import PlantModel

# One server for the module: asyncua spends ~2 s building its standard address space per server.
# integration: the CDU's OPC UA server on loopback
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.toml"
VARIABLES = {
    # name: (UNECE common code, OPC UA UnitId = its ASCII bytes packed big-endian)
    "secondary_supply_temperature": ("CEL", 0x43454C),
    "secondary_return_temperature": ("CEL", 0x43454C),
    "secondary_flow_liters_per_minute": ("L2", 0x4C32),
    "heat_removed_kw": ("KWT", 0x4B5754),
    "pump_speed_percent": ("P1", 0x5031),
    "valve_position_percent": ("P1", 0x5031),
    "supply_temperature_setpoint": ("CEL", 0x43454C),
    "supply_temperature_allowable_max": ("CEL", 0x43454C),
}


class Plant:
    """The module's clock, model and running server."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        cfg = SimulationConfig(cdus=[SimCdu(id="cdu1", endpoint="opc.tcp://127.0.0.1:0",
                                            supply_temperature_setpoint=30.0)],
                               heat_pumps=[SimHeatPump(id="hp1")])
        self.model = PlantModel(cfg, self.clock)
        self.server = CduOpcUaServer(cfg.cdus[0], self.model, self.clock)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.tick()
        await self.server.update()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plant() -> AsyncIterator[Plant]:
    p = Plant()
    async with p.server:
        yield p


@pytest_asyncio.fixture(loop_scope="module")
async def client(plant: Plant) -> AsyncIterator[Client]:
    async with Client(plant.server.endpoint, timeout=5) as c:
        yield c


def node(client: Client, name: str) -> Node:
    return client.get_node(f"ns=2;s=cdu1.{name}")


async def test_namespace_object_and_variables(client: Client) -> None:
    assert await client.get_namespace_index(NAMESPACE_URI) == 2
    cdu = await client.nodes.objects.get_child("2:cdu1")
    names = {(await child.read_browse_name()).Name for child in await cdu.get_children()}
    assert names == set(VARIABLES)


async def test_every_node_of_the_demo_config_is_served(client: Client) -> None:
    device = next(d for d in load_config(DEMO_CONFIG).devices if isinstance(d, OpcUaDevice))
    for point in device.points:
        dv = await client.get_node(point.node).read_data_value()
        assert dv.StatusCode is not None and dv.StatusCode.is_good(), point.node
        assert dv.Value is not None and dv.Value.VariantType == ua.VariantType.Double, point.node


async def test_values_follow_the_model_with_source_timestamps(plant: Plant, client: Client) -> None:
    await plant.advance(5)
    state = plant.model.cdus["cdu1"]
    dv = await node(client, "heat_removed_kw").read_data_value()
    assert dv.Value is not None and dv.Value.Value == pytest.approx(state.heat_removed_kw)
    assert dv.SourceTimestamp == plant.clock.now()
    before = plant.clock.now()
    await plant.advance(7)
    dv = await node(client, "secondary_return_temperature").read_data_value()
    assert dv.SourceTimestamp == before + timedelta(seconds=7)
    # Temperatures are served as the CDU's sensors read them: the true value plus a little noise.
    reading = plant.model.reported_cdu("cdu1")
    assert dv.Value is not None and dv.Value.Value == pytest.approx(reading.return_temperature)
    assert reading.return_temperature == pytest.approx(state.return_temperature, abs=0.1)
    flow = await node(client, "secondary_flow_liters_per_minute").read_value()
    assert flow == pytest.approx(state.flow_liters_per_minute)
    assert await node(client, "supply_temperature_allowable_max").read_value() == 35.0


async def test_engineering_units_and_ranges(client: Client) -> None:
    for name, (code, unit_id) in VARIABLES.items():
        var = client.get_node(f"ns=2;s=cdu1.{name}")
        eu = await (await var.get_child("0:EngineeringUnits")).read_value()
        assert eu.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact", name
        assert eu.UnitId == unit_id, f"{name}: expected UNECE {code}"
        eu_range = await (await var.get_child("0:EURange")).read_value()
        assert eu_range.Low < eu_range.High
        assert await var.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogItemType)


async def test_only_the_setpoint_is_writable(client: Client) -> None:
    for name in VARIABLES:
        level = await client.get_node(f"ns=2;s=cdu1.{name}").read_attribute(ua.AttributeIds.UserAccessLevel)
        assert level.Value is not None
        writable = bool(level.Value.Value & ua.AccessLevel.CurrentWrite.mask)
        assert writable == (name == "supply_temperature_setpoint"), name
    with pytest.raises(ua.uaerrors.BadUserAccessDenied):
        await node(client, "heat_removed_kw").write_value(ua.Variant(1.0, ua.VariantType.Double))


async def test_setpoint_write_reaches_the_model_and_the_loop_follows(plant: Plant, client: Client) -> None:
    await node(client, "supply_temperature_setpoint").write_value(ua.Variant(32.5, ua.VariantType.Double))
    assert plant.model.cdus["cdu1"].supply_temperature_setpoint == 32.5
    assert await node(client, "supply_temperature_setpoint").read_value() == 32.5
    await plant.advance(300)
    assert plant.model.cdus["cdu1"].supply_temperature == pytest.approx(32.5, abs=0.01)
    served = await node(client, "secondary_supply_temperature").read_value()
    assert served == pytest.approx(plant.model.reported_cdu("cdu1").supply_temperature)  # sensor noise on top


async def test_out_of_range_setpoint_is_refused(plant: Plant, client: Client) -> None:
    before = plant.model.cdus["cdu1"].supply_temperature_setpoint
    with pytest.raises(ua.uaerrors.BadOutOfRange):
        await node(client, "supply_temperature_setpoint").write_value(ua.Variant(80.0, ua.VariantType.Double))
    assert plant.model.cdus["cdu1"].supply_temperature_setpoint == before
    assert await node(client, "supply_temperature_setpoint").read_value() == before


async def test_a_taken_port_fails_fast_with_a_clear_error(plant: Plant, busy_port: int) -> None:
    cfg = SimCdu(id="cdu1", endpoint=f"opc.tcp://127.0.0.1:{busy_port}")
    started = time.monotonic()
    with pytest.raises(PortInUseError) as err:
        async with CduOpcUaServer(cfg, plant.model, plant.clock):
            pass
    assert str(err.value) == f"port {busy_port} for cdu1 is already in use"
    assert time.monotonic() - started < 1.0, "checked before the slow address-space build"
