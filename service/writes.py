"""WriteArbiter: the one way to a device. Every writer (control loop, operators, commissioning) submits a request;
the arbiter applies priority and holds, safety caps, the point's envelope (min, max, max_rate) and expiry, then
the driver's guarded write with read-back, and audits every decision that changes what reaches the device."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.base import Driver, WriteResult
from service.clock import Clock, RealClock
from service.control.arbiter import Priority
from service.errors import NotFound

if TYPE_CHECKING:
    from service.audit import AuditSink
    from service.config import PointBase
    from service.control.loop import ControlLoop
    from service.control.model import ControlRequest, ControlStatus

log = logging.getLogger(__name__)
DeviceWrite = Callable[[str, float], Awaitable[WriteResult]]


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A value asked for one device point, by whom, how urgently, and for how long it holds (operator writes)."""

    target: str  # device.point
    value: float
    priority: Priority
    source: str  # control, api, scada, cli
    principal: str = "heatrec"
    role: str = "controller"
    hold_s: float | None = None  # above automatic: the point stays the requester's this long


@dataclass(frozen=True, slots=True)
class Hold:
    """A point an operator (or a safety function) holds: lower priorities are refused until it ends."""

    target: str
    value: float
    priority: Priority
    principal: str
    source: str
    until: float  # clock.monotonic()


@dataclass(frozen=True, slots=True)
class Cap:
    """An upper bound a safety function puts on a point (the IT-cooling limit on a heat pump's setpoint)."""

    high: float
    source: str


async def _no_device(point: str, value: float) -> WriteResult:
    return WriteResult(point, "rejected", value, message="no device is reachable through this arbiter")


class WriteArbiter:
    """Owned by the composition root; the drivers' write is reachable only through `submit`, and the control
    loop's parameters (mode, supply-target override, manual setpoint) only through `request_control`."""

    def __init__(self, points: Mapping[str, PointBase], write: DeviceWrite, clock: Clock | None = None,
                 audit: AuditSink | None = None) -> None:
        self.control: ControlLoop | None = None  # the owner of the loop parameters, attached by the service
        self._points = points
        self._write = write
        self._clock: Clock = clock or RealClock()
        self._audit = audit
        self._last: dict[str, tuple[float, float]] = {}  # target -> (value written, monotonic time)
        self._holds: dict[str, Hold] = {}
        self._caps: dict[str, Cap] = {}
        self._limited: dict[str, str | None] = {}  # target -> what limits the automatic writer now (audited once)

    # --- what safety functions and operators put in force --------------------------------------

    def set_caps(self, source: str, caps: Mapping[str, float]) -> None:
        """Replace every cap `source` puts in force with `caps` (point -> upper bound)."""
        for target in [t for t, c in self._caps.items() if c.source == source and t not in caps]:
            del self._caps[target]
        for target, high in caps.items():
            self._caps[target] = Cap(high, source)

    def holds(self) -> dict[str, Hold]:
        """The holds in force now."""
        now = self._clock.monotonic()
        return {t: h for t, h in self._holds.items() if h.until > now}

    async def expire(self) -> list[Hold]:
        """End the holds whose time is up (audited); the automatic writer has the point again."""
        now = self._clock.monotonic()
        ended = [h for h in self._holds.values() if h.until <= now]
        for h in ended:
            del self._holds[h.target]
            log.info("write hold on %s by %s expired", h.target, h.principal)
            await self._record(h.principal, "operator", "write.expired", h.target, h.value, None, "expired",
                               f"hold by {h.principal} ({h.source}) ended; automatic control has the point again")
        return ended

    @classmethod
    def for_control(cls, control: ControlLoop | None) -> WriteArbiter:
        """An arbiter for the loop parameters alone (no device reachable): for an API or SCADA server built
        without the service around it, so they too have only the one way in."""
        arbiter = cls({}, _no_device)
        arbiter.control = control
        return arbiter

    # --- loop parameters -------------------------------------------------------------------------

    async def request_control(self, req: ControlRequest, principal: str, role: str) -> ControlStatus:
        """An operator's change of the loop parameters (API, SCADA): validated, expiring, saved and audited by
        the loop that owns them; what they make the loop write comes back through `submit`."""
        if self.control is None:
            raise NotFound("control is not enabled: add a [control] section to the plant config (docs/CONFIG.md)")
        return await self.control.request(req, principal, role)

    async def refuse_control(self, requested: Mapping[str, object], principal: str, role: str, reason: str) -> None:
        """Audit an operator's change of the loop parameters refused before it could reach the loop (a value
        no request can carry, such as a non-finite number from SCADA); `requested` must be JSON as it is."""
        await self._record(principal, role, "control.set", "control", dict(requested), None, "refused", reason)

    # --- the one way to a device ---------------------------------------------------------------

    async def submit(self, req: WriteRequest) -> WriteResult:
        """Priority, cap, envelope and rate, then the driver's guarded write; the result says what was applied."""
        await self.expire()
        refused = self._refusal(req)
        if refused is not None:
            result = WriteResult(req.target, "rejected", req.value, message=refused)
            await self._audit_result(req, result, None)
            return result
        value, limits = self._shape(req)
        limited = "; ".join(limits.values()) or None
        result = await self._write(req.target, value)
        if result.ok:
            self._last[req.target] = (value, self._clock.monotonic())
            if req.priority > Priority.AUTOMATIC and req.hold_s:
                self._holds[req.target] = Hold(req.target, value, req.priority, req.principal, req.source,
                                               self._clock.monotonic() + req.hold_s)
        if limited is not None:
            result = dataclasses.replace(result, requested=req.value,
                                         message=(result.message + "; " if result.message else "") + limited)
        await self._audit_result(req, result, ",".join(limits) or None)
        return result

    def _refusal(self, req: WriteRequest) -> str | None:
        """Why nothing may be sent for this request, or None."""
        point = self._points.get(req.target)
        if point is None:
            return f"unknown point '{req.target}'"
        # The drivers' own envelope check: not writable and not finite are refused for everyone; a value out
        # of range is refused for a person (say no rather than send something else), clamped for the loop.
        why = Driver.envelope_violation(point, req.value)
        if why is not None and (not point.writable or not math.isfinite(req.value)):
            return why
        hold = self._holds.get(req.target)
        if hold is not None and hold.priority > req.priority:
            left = hold.until - self._clock.monotonic()
            return (f"held by {hold.principal} ({hold.source}, {hold.priority.name.lower()} priority) at "
                    f"{hold.value} for {left:.0f} s more")
        if why is not None and req.priority > Priority.AUTOMATIC:
            return f"{why}: outside the point's envelope {point.min}..{point.max}"
        return None

    def _shape(self, req: WriteRequest) -> tuple[float, dict[str, str]]:
        """The value that may go to the device, and what limited it: {"cap"|"envelope"|"rate": why}."""
        point = self._points[req.target]
        value, limits = req.value, {}
        cap = self._caps.get(req.target)
        if cap is not None and value > cap.high and req.priority < Priority.SAFETY:
            value, limits["cap"] = cap.high, f"limited to {cap.high:g} by the safety cap ({cap.source})"
        low = point.min if point.min is not None else -math.inf
        high = point.max if point.max is not None else math.inf
        if not low <= value <= high:
            value = min(max(value, low), high)
            limits["envelope"] = f"limited to {value:g} by the point's envelope {point.min}..{point.max}"
        last = self._last.get(req.target)
        if point.max_rate is not None and last is not None:
            step = point.max_rate * max(self._clock.monotonic() - last[1], 0.0)
            ramped = min(max(value, last[0] - step), last[0] + step)
            if ramped != value:
                value = ramped
                limits["rate"] = f"ramped to {ramped:g} by max_rate {point.max_rate:g}/s from {last[0]:g}"
        return value, limits

    async def _audit_result(self, req: WriteRequest, result: WriteResult, kinds: str | None) -> None:
        # The controller's own routine writes are its business (they are in the control status); anything a
        # person asked for, and anything the arbiter changed or refused, is in the trail.
        if req.priority == Priority.AUTOMATIC:
            # Once per episode: a ramp, or a point an operator holds, would otherwise write an entry every cycle.
            episode = "refused" if result.status == "rejected" else kinds
            if episode == self._limited.get(req.target):
                return
            self._limited[req.target] = episode
            if episode is None:
                return
        applied = result.written if result.ok else None
        detail = result.message or (f"held for {req.hold_s:g} s" if req.hold_s else "")
        await self._record(req.principal, req.role, f"write.{req.source}", req.target, req.value, applied,
                           "accepted" if result.ok else result.status, detail)

    async def _record(self, principal: str, role: str, action: str, target: str, requested: object,
                      applied: object, outcome: str, detail: str) -> None:
        if self._audit is None:
            return
        from service.audit import AuditEntry  # asyncpg comes with it; only needed when there is a trail

        try:
            await self._audit(AuditEntry(principal, role, action, target, requested, applied, outcome, detail))
        except Exception:  # the trail must not stop a write; the sink logs its own failures
            log.exception("audit entry not recorded for %s", target)
