"""Objects/Plant/Control in the SCADA server: the control loop's state, with mode and target writable.

A write to Mode or SupplyTemperatureTarget is an operator request to the arbiter, like a PUT on
/api/v1/control: it is validated and audited there, and the OPC UA status code tells the client the
outcome (Good, BadOutOfRange for a refused value, BadTypeMismatch for one of the wrong type). Writing NaN
to the target clears the override; ±Inf (and NaN elsewhere) is refused with BadOutOfRange and audited as
refused. Each node of a write request gets its own status: one bad value never fails the others.
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
# writable node → the ControlRequest field it sets
_FIELDS = {"Mode": "mode", "SupplyTemperatureTarget": "supply_temperature_target", "ExpiresInS": "expires_in_s"}
WriteFn = Callable[[ua.WriteParameters, User], Awaitable[list[ua.StatusCode]]]
_INTERNAL = User(role=UserRole.Admin)  # asyncua's default for server-internal writes


def _seconds_left(until: datetime | None) -> float:
    return math.nan if until is None else max((until - datetime.now(UTC)).total_seconds(), 0.0)


def _for_audit(value: Any) -> Any:
    """The value as the audit trail (JSON) can hold it: inf and NaN as text, anything long cut short."""
    if value is None or (isinstance(value, int | float) and math.isfinite(value)):
        return value
    return (value if isinstance(value, str) else repr(value))[:200]


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
        """One node of a write request; whatever happens, the answer is this node's status alone."""
        name = self._by_nodeid[wv.NodeId]
        try:
            return await self._write_one(name, wv, user)
        except Exception:  # never fail the other nodes of the request (BadInternalError for the whole of it)
            self.writes_refused += 1
            log.exception("SCADA write to Control/%s failed", name)
            return _status(ua.StatusCodes.BadInternalError)

    async def _write_one(self, name: str, wv: ua.WriteValue, user: User) -> ua.StatusCode:
        from service.control.model import ControlRequest, ControlRequestError

        if wv.AttributeId != ua.AttributeIds.Value:
            return _status(ua.StatusCodes.BadNotWritable)
        if user.role == UserRole.Anonymous:  # the permission ruleset already refuses; never rely on one guard
            return _status(ua.StatusCodes.BadUserAccessDenied)
        value = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
        principal = f"scada:{user.name}" if user.name else "scada"
        role = "admin" if user.role == UserRole.Admin else "operator"
        field = _FIELDS.get(name)
        if field is None:
            return _status(ua.StatusCodes.BadNotWritable)
        if name == "Mode":
            if value not in _MODES:
                return await self._refuse(name, field, value, principal, role, ua.StatusCodes.BadOutOfRange,
                                          "mode must be auto, manual or off")
            req = ControlRequest(mode=value)
        else:
            if not isinstance(value, float | int) or isinstance(value, bool):
                return await self._refuse(name, field, value, principal, role, ua.StatusCodes.BadTypeMismatch,
                                          f"{field} must be a number")
            if name == "SupplyTemperatureTarget" and math.isnan(value):
                req = ControlRequest(supply_temperature_target=None)  # NaN clears the override
            elif not math.isfinite(value):
                return await self._refuse(name, field, value, principal, role, ua.StatusCodes.BadOutOfRange,
                                          f"{field} must be a finite number")
            else:
                req = ControlRequest.model_validate({field: float(value)})
        try:
            await self._arbiter.request_control(req, principal, role)
        except ControlRequestError as err:  # refused and audited by the loop
            self.writes_refused += 1
            log.warning("SCADA write to Control/%s refused: %s", name, err)
            return _status(ua.StatusCodes.BadOutOfRange)
        self.writes_accepted += 1
        await self.refresh()
        return _status(ua.StatusCodes.Good)

    async def _refuse(self, name: str, field: str, value: Any, principal: str, role: str, code: int,
                      reason: str) -> ua.StatusCode:
        """A value no control request can carry: refused here, for this node only, and audited as refused."""
        self.writes_refused += 1
        shown = _for_audit(value)
        log.warning("SCADA write to Control/%s by %s refused: %s (%s)", name, principal, reason, shown)
        await self._arbiter.refuse_control({field: shown}, principal, role, f"SCADA Control/{name}: {reason}")
        return _status(code)

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
