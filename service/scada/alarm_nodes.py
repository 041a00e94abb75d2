"""Objects/Plant/Alarms in the SCADA server: one object per alarm with its ISA-18.2 state variables.

Every alarm heatrec evaluates (limits, quality, device offline, device states such as a heat-pump trip)
appears as Plant/Alarms/<alarm id> with Active, State, NeedsAck, Severity, Message and Value, read-only.
Changes come from the alarm manager's observer and are written at once; acknowledging and shelving stay
with the API (audited there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

from asyncua import Node, Server, ua

if TYPE_CHECKING:
    from service.alarms.manager import AlarmManager
    from service.alarms.model import Alarm, AlarmEvent

log = logging.getLogger(__name__)

_VARIABLES: dict[str, ua.VariantType] = {
    "Active": ua.VariantType.Boolean,
    "State": ua.VariantType.String,
    "NeedsAck": ua.VariantType.Boolean,
    "Severity": ua.VariantType.String,
    "Message": ua.VariantType.String,
    "Value": ua.VariantType.Double,
}


def _values(a: Alarm) -> dict[str, Any]:
    message = a.message + (f" ({a.detail})" if a.detail and a.active else "")
    return {"Active": a.active, "State": a.state.value, "NeedsAck": a.needs_ack, "Severity": a.severity.value,
            "Message": message, "Value": math.nan if a.value is None else float(a.value)}


class AlarmNodes:
    """Mirrors the alarm manager's alarms into the address space."""

    def __init__(self, manager: AlarmManager) -> None:
        self._manager = manager
        self._server: Server | None = None
        self._nodes: dict[tuple[str, str], Node] = {}
        self._dirty: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        manager.observe(self._changed)

    def node_id(self, alarm_id: str, variable: str) -> str:
        """NodeId string of one alarm variable, e.g. ns=2;s=alarms.hp1.status:trip.Active."""
        return self._nodes[(alarm_id, variable)].nodeid.to_string()

    async def build(self, server: Server, plant: Node, ns: int) -> None:
        """Add Plant/Alarms with an object per alarm."""
        self._server = server
        folder = await plant.add_object(ua.NodeId(ua.String("Alarms"), ua.Int16(ns)), ua.QualifiedName("Alarms", ns))
        for alarm_id, alarm in self._manager.engine.alarms.items():
            obj = await folder.add_object(ua.NodeId(ua.String(f"alarms.{alarm_id}"), ua.Int16(ns)),
                                          ua.QualifiedName(alarm_id, ns))
            for name, vtype in _VARIABLES.items():
                var = await obj.add_variable(ua.NodeId(ua.String(f"alarms.{alarm_id}.{name}"), ua.Int16(ns)),
                                             ua.QualifiedName(name, ns), ua.Variant(_values(alarm)[name], vtype))
                self._nodes[(alarm_id, name)] = var

    def start(self) -> None:
        """Follow alarm changes."""
        self._task = asyncio.create_task(self._follow(), name="scada-alarms")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _changed(self, event: AlarmEvent, alarm: Alarm) -> None:
        self._dirty.put_nowait(alarm.id)  # an observer returns at once; the writes happen in _follow

    async def _follow(self) -> None:
        while True:
            alarm_id = await self._dirty.get()
            alarm = self._manager.engine.alarms.get(alarm_id)
            if alarm is None or self._server is None:
                continue
            try:
                await self.write(alarm)
            except Exception:  # a failed write must not end the mirror: the next change writes again
                log.exception("SCADA alarm node %s: update failed", alarm_id)

    async def write(self, alarm: Alarm) -> None:
        """Write one alarm's current state to its variables."""
        assert self._server is not None
        for name, value in _values(alarm).items():
            node = self._nodes.get((alarm.id, name))
            if node is not None:
                await self._server.write_attribute_value(node.nodeid, ua.DataValue(
                    ua.Variant(value, _VARIABLES[name]), SourceTimestamp=alarm.since))  # type: ignore[arg-type]
