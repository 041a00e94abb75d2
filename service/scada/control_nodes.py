"""Objects/Plant/Control in the SCADA server: the control loop's state, with mode and target writable.

A write to Mode or SupplyTemperatureTarget is an operator request to the arbiter, like a PUT on
/api/v1/control: it is validated and audited there, and the OPC UA status code tells the client the
outcome (Good, BadOutOfRange for a refused value). Writing NaN to the target clears the override.
ExpiresInS shows the seconds left of the override (or manual mode) in force, NaN when neither is; writing it
sets them anew.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from service.writes import WriteArbiter

if TYPE_CHECKING:
    from service.control.loop import ControlLoop

log = logging.getLogger(__name__)

REFRESH_S = 1.0
_MODES = ("auto", "manual", "off")
# name → (variant type, writable)
_VARIABLES: dict[str, tuple[ua.VariantType, bool]] = {
    "Mode": (ua.VariantType.String, True),
    "SupplyTemperatureTarget": (ua.VariantType.Double, True),
    "TargetSource": (ua.VariantType.String, False),
    "SupplyTemperature": (ua.VariantType.Double, False),
    "SafeState": (ua.VariantType.Boolean, False),
    "Constraint": (ua.VariantType.String, False),
    "ExpiresInS": (ua.VariantType.Double, True),
}
WriteFn = Callable[[ua.WriteParameters, User], Awaitable[list[ua.StatusCode]]]
_INTERNAL = User(role=UserRole.Admin)  # asyncua's default for server-internal writes


def _seconds_left(until: datetime | None) -> float:
    return math.nan if until is None else max((until - datetime.now(UTC)).total_seconds(), 0.0)


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


class ControlNodes:
    """Publishes ControlLoop.status() and turns SCADA writes into operator requests."""

    def __init__(self, control: ControlLoop, arbiter: WriteArbiter | None = None) -> None:
        self._control = control
        # Operator requests go through the service's arbiter, like the API's (one of its own when alone).
        self._arbiter = arbiter if arbiter is not None else WriteArbiter.for_control(control)
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}
        self._by_nodeid: dict[ua.NodeId, str] = {}
        self._task: asyncio.Task[None] | None = None
        self.writes_accepted = 0
        self.writes_refused = 0

    async def build(self, server: Server, plant: Node, ns: int) -> None:
        """Add Plant/Control and its variables, and route writes to them through the arbiter."""
        self._server = server
        folder = await plant.add_object(ua.NodeId(ua.String("Control"), ua.Int16(ns)), ua.QualifiedName("Control", ns))
        for name, (vtype, writable) in _VARIABLES.items():
            initial: Any = {ua.VariantType.String: "", ua.VariantType.Double: math.nan,
                            ua.VariantType.Boolean: False}[vtype]
            var = await folder.add_variable(ua.NodeId(ua.String(f"control.{name}"), ua.Int16(ns)),
                                            ua.QualifiedName(name, ns), ua.Variant(initial, vtype))
            if writable:
                await var.set_writable(True)
            self._nodes[name] = var
            self._by_nodeid[var.nodeid] = name
        service = server.iserver.attribute_service
        original: WriteFn = service.write

        async def write(params: ua.WriteParameters, user: User = _INTERNAL) -> list[ua.StatusCode]:
            # Control nodes are answered here; every other write keeps asyncua's own handling.
            ours = [i for i, wv in enumerate(params.NodesToWrite) if wv.NodeId in self._by_nodeid]
            if not ours:
                return await original(params, user)
            rest = [wv for i, wv in enumerate(params.NodesToWrite) if i not in ours]
            results = await original(ua.WriteParameters(NodesToWrite=rest), user) if rest else []
            it = iter(results)
            out = []
            for i, wv in enumerate(params.NodesToWrite):
                out.append(await self._write(wv, user) if i in ours else next(it))
            return out

        service.write = write  # type: ignore[method-assign]

    async def _write(self, wv: ua.WriteValue, user: User) -> ua.StatusCode:
        from service.control.model import ControlRequest, ControlRequestError

        name = self._by_nodeid[wv.NodeId]
        if wv.AttributeId != ua.AttributeIds.Value:
            return _status(ua.StatusCodes.BadNotWritable)
        if user.role == UserRole.Anonymous:  # the permission ruleset already refuses; never rely on one guard
            return _status(ua.StatusCodes.BadUserAccessDenied)
        value = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
        try:
            if name == "Mode":
                if value not in _MODES:
                    self.writes_refused += 1
                    return _status(ua.StatusCodes.BadOutOfRange)
                req = ControlRequest(mode=value)
            elif name == "SupplyTemperatureTarget":
                if not isinstance(value, float | int) or isinstance(value, bool):
                    self.writes_refused += 1
                    return _status(ua.StatusCodes.BadTypeMismatch)
                req = ControlRequest(supply_temperature_target=None if math.isnan(value) else float(value))
            elif name == "ExpiresInS":
                if not isinstance(value, float | int) or isinstance(value, bool) or math.isnan(value):
                    self.writes_refused += 1
                    return _status(ua.StatusCodes.BadTypeMismatch)
                req = ControlRequest(expires_in_s=float(value))
            else:
                return _status(ua.StatusCodes.BadNotWritable)
            principal = f"scada:{user.name}" if user.name else "scada"
            role = "admin" if user.role == UserRole.Admin else "operator"
            await self._arbiter.request_control(req, principal, role)
        except ControlRequestError as err:
            self.writes_refused += 1
            log.warning("SCADA write to Control/%s refused: %s", name, err)
            return _status(ua.StatusCodes.BadOutOfRange)
        self.writes_accepted += 1
        await self.refresh()
        return _status(ua.StatusCodes.Good)

    async def refresh(self) -> None:
        """Copy the loop's status into the nodes."""
        if self._server is None:
            return
        st = self._control.status()
        values: dict[str, Any] = {
            "Mode": st.mode,
            "SupplyTemperatureTarget": math.nan if st.supply_temperature_target is None
            else float(st.supply_temperature_target),
            "TargetSource": st.target_source,
            "SupplyTemperature": math.nan if st.supply_temperature is None else float(st.supply_temperature),
            "SafeState": bool(st.safe_state),
            "Constraint": st.constraint or "",
            "ExpiresInS": _seconds_left(st.override_expires_at or st.manual_expires_at),
        }
        for name, value in values.items():
            vtype = _VARIABLES[name][0]
            # NaN is "no value yet" for a measurement; for ExpiresInS it is the answer "nothing in force".
            bad = isinstance(value, float) and math.isnan(value) and name != "ExpiresInS"
            await self._server.write_attribute_value(self._nodes[name].nodeid, ua.DataValue(
                ua.Variant(value, vtype),
                StatusCode=_status(ua.StatusCodes.BadWaitingForInitialData if bad else ua.StatusCodes.Good)))

    def start(self) -> None:
        """Follow the loop's status once per second."""
        self._task = asyncio.create_task(self._follow(), name="scada-control")

    async def _follow(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a status glitch must not end the updates
                log.exception("SCADA control status update failed")
            await asyncio.sleep(REFRESH_S)

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
