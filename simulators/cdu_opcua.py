"""A CDU controller's OPC UA face: one object per CDU, analog items with engineering units."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import cast

from asyncua import Node, Server, ua
from asyncua.server.address_space import NodeData

from service.clock import Clock
from simulators.config import SimCdu
from simulators.errors import SimulatorError
from simulators.faults import FaultBoard
from simulators.net import ensure_port_free, listen_error, split_opcua_endpoint
from simulators.plant import CduState, PlantModel

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:heatrec:simulator"
NAMESPACE_INDEX = 2  # registered first, right after the OPC UA and the application namespaces
UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True)
class Unit:
    """A UNECE Rec. 20 unit as OPC UA Part 8 encodes it in EUInformation."""

    common_code: str
    display: str
    description: str

    @property
    def unit_id(self) -> int:
        """Part 8 §5.6.3: the common code's ASCII bytes packed big-endian into an Int32."""
        value = 0
        for ch in self.common_code:
            value = value << 8 | ord(ch)
        return value

    def eu_information(self) -> ua.EUInformation:
        """The EngineeringUnits property value."""
        return ua.EUInformation(NamespaceUri=UNECE_NAMESPACE, UnitId=self.unit_id,
                                DisplayName=ua.LocalizedText(self.display, "en"),
                                Description=ua.LocalizedText(self.description, "en"))


CELSIUS = Unit("CEL", "°C", "degree Celsius")
LITRE_PER_MINUTE = Unit("L2", "l/min", "litre per minute")
KILOWATT = Unit("KWT", "kW", "kilowatt")
PERCENT = Unit("P1", "%", "percent")


@dataclass(frozen=True)
class CduVariable:
    """One served variable: its name after `<cdu_id>.`, unit, EURange and where its value comes from."""

    name: str
    unit: Unit
    low: float
    high: float
    read: Callable[[CduState], float]
    writable: bool = False


CDU_VARIABLES: tuple[CduVariable, ...] = (
    CduVariable("secondary_supply_temperature", CELSIUS, 0.0, 100.0, lambda s: s.supply_temperature),
    CduVariable("secondary_return_temperature", CELSIUS, 0.0, 100.0, lambda s: s.return_temperature),
    CduVariable("secondary_flow_liters_per_minute", LITRE_PER_MINUTE, 0.0, 100_000.0,
                lambda s: s.flow_liters_per_minute),
    CduVariable("heat_removed_kw", KILOWATT, 0.0, 100_000.0, lambda s: s.heat_removed_kw),
    CduVariable("pump_speed_percent", PERCENT, 0.0, 100.0, lambda s: s.pump_speed_percent),
    CduVariable("valve_position_percent", PERCENT, 0.0, 100.0, lambda s: s.valve_position_percent),
    CduVariable("supply_temperature_setpoint", CELSIUS, 0.0, 100.0,
                lambda s: s.supply_temperature_setpoint, writable=True),
    CduVariable("supply_temperature_allowable_max", CELSIUS, 0.0, 100.0,
                lambda s: s.supply_temperature_allowable_max),
)
_SETTINGS = {"supply_temperature_setpoint", "supply_temperature_allowable_max"}


def node_id(cdu_id: str, name: str) -> ua.NodeId:
    """ns=2;s=<cdu_id>.<name>."""
    return _string_node_id(f"{cdu_id}.{name}")


def _string_node_id(identifier: str) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(NAMESPACE_INDEX))


def _standard_node_id(object_id: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(object_id))


class CduOpcUaServer:
    """Serves one CDU of the model; `update()` publishes the model's latest state."""

    def __init__(self, cfg: SimCdu, model: PlantModel, clock: Clock, faults: FaultBoard | None = None) -> None:
        self.cfg = cfg
        self._faults = faults or FaultBoard()
        self._model = model
        self._clock = clock
        self._owner = cfg.id
        self._host, self._port = split_opcua_endpoint(cfg.endpoint, cfg.id)
        self._server: Server | None = None
        self._published: dict[str, float] = {}

    @property
    def endpoint(self) -> str:
        """The URL clients connect to (with the real port when configured with port 0)."""
        port = self._server.bserver.port if self._server and self._server.bserver else self._port
        return f"opc.tcp://{self._host}:{port}"

    @property
    def running(self) -> bool:
        """Whether the port is open."""
        return self._server is not None

    async def __aenter__(self) -> CduOpcUaServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def drop_connections(self) -> int:
        """Reset every client connection (the listener stays); returns how many."""
        if self._server is None or self._server.bserver is None:
            return 0
        clients = list(self._server.bserver.clients)
        for proto in clients:
            if proto.transport is not None:
                proto.transport.abort()
        return len(clients)

    async def start(self) -> None:
        """Build the address space and listen (on the same port again after `stop`)."""
        if self._server is not None:
            return
        self._published.clear()
        ensure_port_free(self._host, self._port, self._owner)  # before the ~2 s address-space load
        server = Server()
        # Most of the start-up time is here: asyncua builds the standard address space (~6000 nodes).
        await server.init()
        server.set_endpoint(f"opc.tcp://{self._host}:{self._port}")
        server.set_server_name(f"heatrec simulated CDU {self.cfg.id}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        # Anonymous only, and no remote 'admin' login that would bypass the access levels.
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        server.allow_remote_admin(False)
        # asyncua's own clock task sleeps 1 s between updates and stop() waits it out;
        # update() sets ServerStatus.CurrentTime from the injected clock instead.
        server.disable_clock()
        await server.set_application_uri(f"urn:heatrec:simulator:{self.cfg.id}")
        idx = await server.register_namespace(NAMESPACE_URI)
        if idx != NAMESPACE_INDEX:
            raise SimulatorError(f"{self._owner}: namespace {NAMESPACE_URI} got index {idx}, "
                                 f"expected {NAMESPACE_INDEX}")
        await self._build_address_space(server)
        try:
            await server.start()
        except OSError as err:  # taken since our check (a race); asyncua has already cleaned up
            raise listen_error(err, self._host, self._port, self._owner) from err
        self._server = server
        if self._port == 0:  # keep an ephemeral port across restarts, so clients find us again
            self._port = int(self.endpoint.rsplit(":", 1)[1])
        log.info("CDU %s serving OPC UA at %s", self.cfg.id, self.endpoint)

    async def stop(self) -> None:
        """Close the port and every session."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def _build_address_space(self, server: Server) -> None:
        state = self._faults.view(self.cfg.id, self._model.reported_cdu(self.cfg.id))
        cdu = await server.nodes.objects.add_object(_string_node_id(self.cfg.id),
                                                    ua.QualifiedName(self.cfg.id, NAMESPACE_INDEX))
        now = self._clock.now()
        for var in CDU_VARIABLES:
            node = await _add_analog_item(cdu, f"{self.cfg.id}.{var.name}", var, var.read(state))
            await server.write_attribute_value(node.nodeid, _data_value(var.read(state), now))
            self._published[var.name] = var.read(state)
        server.set_attribute_value_setter(node_id(self.cfg.id, "supply_temperature_setpoint"),
                                          self._write_setpoint)

    def _write_setpoint(self, node: NodeData, attr: ua.AttributeIds, value: ua.DataValue) -> None:
        """Client writes land here: the model validates, the node keeps our own timestamps."""
        new = value.Value.Value if value.Value is not None else None
        if not isinstance(new, float):
            raise ua.UaStatusCodeError(ua.StatusCodes.BadTypeMismatch)
        try:
            self._model.set_cdu_setpoint(self.cfg.id, new)
        except ValueError as err:
            log.warning("CDU %s rejected a setpoint write: %s", self.cfg.id, err)
            # Raised here it becomes a ServiceFault with BadOutOfRange for the writing client.
            raise ua.UaStatusCodeError(ua.StatusCodes.BadOutOfRange) from err
        node.attributes[attr].value = _data_value(new, self._clock.now())
        self._published["supply_temperature_setpoint"] = new

    async def update(self) -> None:
        """Publish the model's state: measurements every time, settings only when they change."""
        if self._server is None:
            return
        state = self._faults.view(self.cfg.id, self._model.reported_cdu(self.cfg.id))
        stamp = self._model.time  # when the values were computed, i.e. measured
        now = cast(ua.DateTime, self._clock.now())
        await self._server.write_attribute_value(
            _standard_node_id(ua.ObjectIds.Server_ServerStatus_CurrentTime),
            ua.DataValue(ua.Variant(now, ua.VariantType.DateTime), SourceTimestamp=now, ServerTimestamp=now))
        for var in CDU_VARIABLES:
            value = var.read(state)
            if var.name in _SETTINGS and self._published.get(var.name) == value:
                continue
            nid = node_id(self.cfg.id, var.name)
            await self._server.write_attribute_value(nid, _data_value(value, stamp))
            self._published[var.name] = value


def _data_value(value: float, stamp: datetime) -> ua.DataValue:
    # asyncua annotates timestamps as its datetime subclass but encodes any aware datetime.
    ts = cast(ua.DateTime, stamp)
    variant = ua.Variant(float(value), ua.VariantType.Double)
    return ua.DataValue(variant, SourceTimestamp=ts, ServerTimestamp=ts)


async def _add_analog_item(parent: Node, identifier: str, var: CduVariable, value: float) -> Node:
    """An AnalogItemType variable (Double) with its EngineeringUnits and EURange properties."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = _string_node_id(identifier)
    item.BrowseName = ua.QualifiedName(var.name, NAMESPACE_INDEX)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent.nodeid
    item.ReferenceTypeId = _standard_node_id(ua.ObjectIds.HasComponent)
    item.TypeDefinition = _standard_node_id(ua.ObjectIds.AnalogItemType)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(var.name)
    attrs.Description = ua.LocalizedText(f"{var.name} [{var.unit.display}]")
    attrs.DataType = _standard_node_id(ua.ObjectIds.Double)
    attrs.Value = ua.Variant(float(value), ua.VariantType.Double)
    attrs.ValueRank = ua.ValueRank.Scalar
    access = ua.AccessLevel.CurrentRead.mask
    if var.writable:
        access |= ua.AccessLevel.CurrentWrite.mask
    attrs.AccessLevel = access
    attrs.UserAccessLevel = access
    item.NodeAttributes = attrs
    result = (await parent.session.add_nodes([item]))[0]
    result.StatusCode.check()
    node = Node(parent.session, result.AddedNodeId)
    await node.add_property(_string_node_id(f"{identifier}.EngineeringUnits"),
                            ua.QualifiedName("EngineeringUnits", 0), var.unit.eu_information(),
                            datatype=ua.ObjectIds.EUInformation)
    await node.add_property(_string_node_id(f"{identifier}.EURange"),
                            ua.QualifiedName("EURange", 0), ua.Range(Low=var.low, High=var.high),
                            datatype=ua.ObjectIds.Range)
    return node
