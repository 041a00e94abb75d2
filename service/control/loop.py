"""ControlLoop: the fixed-period cycle around the pure Controller, with writes, operator requests and audit.

About 400 lines: the operator requests (validation, expiry, restart) change the same state the cycle reads,
so they stay with it; the pure parts are in controller.py, the saved state in state.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.bus import SampleBus
from service.clock import Clock, RealClock
from service.config import ControlConfig
from service.control import state as saved
from service.control.controller import Controller, StepResult
from service.control.model import (
    ControlRequest,
    ControlRequestError,
    ControlStats,
    ControlStatus,
    ProcessImage,
    Reading,
    TargetSource,
)
from service.model import Quality
from service.tasks import cancel_and_wait

if TYPE_CHECKING:
    from drivers.base import WriteResult
    from service.audit import AuditEntry, AuditSink

log = logging.getLogger(__name__)
WriteFn = Callable[[str, float], Awaitable["WriteResult"]]
CapsFn = Callable[[dict[str, float]], None]
CDU_LIMIT_RELEASE_HOLD_S = 30.0  # the CDU limit counts as released after this long without capping
EventFn = Callable[[str, str, str], None]  # (kind, severity, message): a row in the plant's events


class ControlLoop:
    """Runs the supply-temperature controller every period over a frozen image of the sample bus."""

    def __init__(self, cfg: ControlConfig, bus: SampleBus, write: WriteFn, clock: Clock | None = None,
                 audit: AuditSink | None = None, *, caps: CapsFn | None = None,
                 state_path: Path | None = None, events: EventFn | None = None) -> None:
        self.cfg = cfg
        self._events = events  # the CDU limit taking and giving back charge, for the trend and Grafana
        self._cdu_limited = False
        self._cdu_limited_at = -math.inf  # monotonic time the CDU limit last capped the setpoints
        self.controller = Controller(cfg)
        self._caps = caps  # the write arbiter: the CDU limit bounds every writer, not only this loop
        self._state_path = state_path  # None: requests in force are not kept across restarts (tests)
        self._override_until: datetime | None = None
        self._override_by = ""
        self._manual_until: datetime | None = None
        self._manual_by = ""
        self._started_at: float | None = None
        self._starting = True  # waiting (start_grace_s) for the first inputs
        self.stats = ControlStats()
        self._bus = bus
        self._write = write
        self._clock: Clock = clock or RealClock()
        self._audit = audit
        self._inputs = sorted({point for _, point, writable in cfg.point_refs() if not writable})
        self._written: dict[str, tuple[float, float]] = {}  # point -> (value, monotonic time of the write)
        self._failing: dict[str, str] = {}  # point -> last failure message
        self._pending: asyncio.Task[None] | None = None
        self._last_cycle: float | None = None
        self._safe = False
        self._running = False

    # --- the cycle ------------------------------------------------------------------------------

    def image(self) -> ProcessImage:
        """Freeze the inputs: the latest sample of each, unusable ones replaced by why."""
        now = self._clock.now()
        latest = self._bus.latest
        limit = self.cfg.stale_after_s
        readings: dict[str, Reading] = {}
        for point in self._inputs:
            s = latest.get(point)
            if s is None:
                readings[point] = Reading(None, "missing")
            elif s.quality == Quality.STALE or (now - s.receive_time).total_seconds() > limit:
                readings[point] = Reading(None, "stale")
            elif s.quality != Quality.GOOD or s.value is None or not math.isfinite(s.value):
                readings[point] = Reading(None, "bad")
            else:
                readings[point] = Reading(float(s.value))
        return ProcessImage(self._clock.monotonic(), readings)

    async def cycle(self) -> StepResult:
        """One control cycle: image, step, safe-state bookkeeping, and the writes (in the background)."""
        now = self._clock.monotonic()
        dt = self.cfg.period_s if self._last_cycle is None else max(now - self._last_cycle, 0.0)
        self._last_cycle = now
        if self._started_at is None:
            self._started_at = now
        await self._expire_requests()
        result = self.controller.step(self.image(), dt)
        if self._starting:
            if result.safe_state and not self.controller.seen_inputs \
                    and now - self._started_at < self.cfg.start_grace_s:
                return result  # the first samples are on their way: no safe state, no writes, no audit yet
            self._starting = False
        self._track_cdu_limit(result)
        if self._caps is not None:
            self._caps(result.caps)
        await self._track_safe_state(result)
        due = self._due_writes(result.writes, now)
        if due:
            if self._pending is not None and not self._pending.done():
                # A device is slow: never queue writes behind it; the next cycle writes fresh values.
                self.stats.writes_skipped += 1
            else:
                self._pending = asyncio.create_task(self._do_writes(due, now), name="control-writes")
        return result

    def _due_writes(self, writes: dict[str, float], now: float) -> dict[str, float]:
        """Changed values, and unchanged ones whose refresh is due (so a device watchdog sees us alive)."""
        out: dict[str, float] = {}
        for point, value in writes.items():
            last = self._written.get(point)
            if (last is None or abs(value - last[0]) >= max(self.cfg.deadband_k, 1e-9)
                    or now - last[1] >= self.cfg.refresh_s or point in self._failing):
                out[point] = value
        return out

    async def _do_writes(self, writes: dict[str, float], at: float) -> None:
        points = list(writes)
        results = await asyncio.gather(*(self._write(p, writes[p]) for p in points), return_exceptions=True)
        for point, res in zip(points, results, strict=True):
            self.stats.writes += 1
            ok = not isinstance(res, BaseException) and res.ok
            if ok:
                self._written[point] = (writes[point], at)
                if self._failing.pop(point, None) is not None:
                    log.info("control write to %s works again", point)
                continue
            self.stats.write_failures += 1
            message = repr(res) if isinstance(res, BaseException) else f"{res.status}: {res.message}"
            if point not in self._failing:
                log.warning("control write to %s failed (%s); retrying every cycle", point, message)
            self._failing[point] = message

    def _track_cdu_limit(self, result: StepResult) -> None:
        """Count the cycles the CDU limit is in charge; log and record when it takes and gives back charge."""
        limited = result.constraint == "cdu_limit"
        now = self._clock.monotonic()
        if limited:
            self.stats.cdu_limited_cycles += 1
            self._cdu_limited_at = now
        if limited == self._cdu_limited:
            return
        if not limited and now - self._cdu_limited_at < CDU_LIMIT_RELEASE_HOLD_S:
            return  # a limit that lets go for a few cycles at its margin is still in charge: no event chatter
        self._cdu_limited = limited
        room = "unknown" if result.cdu_headroom_k is None else f"{result.cdu_headroom_k:.2f} K"
        setpoints = ", ".join(f"{k} {v:.1f} °C" for k, v in result.setpoints.items() if v is not None)
        if limited:
            message = (f"CDU limit in charge: heat-pump setpoints capped for IT cooling (CDU headroom {room}; "
                       f"{setpoints})")
            log.warning("%s", message)
        else:
            message = f"CDU limit released: setpoints follow the supply target again (CDU headroom {room})"
            log.info("%s", message)
        if self._events is not None:
            self._events("cdu_limit" if limited else "cdu_limit_released", "warning" if limited else "info",
                         message)

    async def _track_safe_state(self, result: StepResult) -> None:
        if result.safe_state == self._safe:
            return
        self._safe = result.safe_state
        if result.safe_state:
            self.stats.safe_state_entries += 1
            held = self.cfg.safe_setpoint
            action = f"writing {held} °C" if held is not None else "released to the heat pumps' local setpoints"
            log.warning("control in safe state (%s): %s", result.safe_state_reason, action)
            await self._record("control.safe_state", "control", None, held, "entered",
                               f"{result.safe_state_reason}; {action}")
        else:
            log.info("control left its safe state")
            await self._record("control.safe_state", "control", None, None, "left", "inputs usable again")

    async def run(self) -> None:
        """Fixed-period cycles until cancelled; late cycles count as jitter, missed periods as overruns."""
        await self.restore()
        period = self.cfg.period_s
        clock = self._clock
        start = clock.monotonic()
        k = 0
        self._running = True
        try:
            while True:
                scheduled = start + k * period
                began = clock.monotonic()
                await self.cycle()
                ended = clock.monotonic()
                self.stats.record(max(began - scheduled, 0.0), ended - began, period)
                k += 1
                if ended > start + k * period:  # overran: skip the missed slots rather than bunch cycles
                    k = math.floor((ended - start) / period) + 1
                await asyncio.sleep(max(start + k * period - clock.monotonic(), 0.0))
        finally:
            self._running = False
            if self._pending is not None:
                await cancel_and_wait(self._pending)

    async def flush(self) -> None:
        """Wait for the writes in flight (tests, shutdown)."""
        if self._pending is not None:
            await asyncio.wait({self._pending})

    # --- status and health ----------------------------------------------------------------------

    def status(self) -> ControlStatus:
        """What the loop is doing now."""
        c = self.controller
        r = c.last
        source: TargetSource = "override" if c.override is not None else (
            "fixed" if self.cfg.target == "fixed" else "curve")
        if r is None or self._starting:
            return ControlStatus(mode=c.mode, supply_temperature_target=None, target_source=source,
                                 supply_temperature=None, constraint="starting", safe_state=False,
                                 heat_pump_setpoints={h.id: None for h in self.cfg.heat_pumps},
                                 outdoor_temperature=None, override=c.override, manual_setpoint=c.manual_setpoint,
                                 target_requested=c.override, override_expires_at=self._override_until,
                                 manual_expires_at=self._manual_until if c.mode == "manual" else None,
                                 cycles=self.stats.cycles)
        return ControlStatus(
            mode=c.mode, supply_temperature_target=_round(r.target), target_source=source,
            supply_temperature=_round(r.measured), constraint=r.constraint, safe_state=r.safe_state,
            heat_pump_setpoints={k: _round(v) for k, v in r.setpoints.items()}, outdoor_temperature=r.outdoor,
            # An override set since the last cycle is what is requested now; the target ramps towards it.
            target_requested=_round(c.override if c.override is not None else r.target_requested),
            override=c.override, manual_setpoint=c.manual_setpoint, override_expires_at=self._override_until,
            manual_expires_at=self._manual_until if c.mode == "manual" else None,
            heat_pumps_running=r.reported_running, heat_pumps_not_running=r.not_running,
            cdu_headroom_k=_round(r.cdu_headroom_k),
            safe_state_reason=r.safe_state_reason, strategy="direct" if r.strategy == "direct" else "boost",
            cycles=self.stats.cycles)

    def health(self) -> tuple[str, str]:
        """("ok"|"degraded", detail) for the health endpoint."""
        r = self.controller.last
        if r is None or self._starting:
            return "ok", "control starting: waiting for the first inputs"
        if r.safe_state:
            return "degraded", f"control in safe state: {r.safe_state_reason}"
        if self._failing:
            point, message = next(iter(self._failing.items()))
            return "degraded", f"control write to {point} failing: {message}"
        if self._running and self._last_cycle is not None \
                and self._clock.monotonic() - self._last_cycle > 3 * self.cfg.period_s:
            return "degraded", "control cycle is late"
        return "ok", f"control {r.mode}" + (f", {r.constraint}" if r.constraint and r.constraint != "off" else "")

    # --- operator requests ----------------------------------------------------------------------

    async def request(self, req: ControlRequest, principal: str, role: str) -> ControlStatus:
        """Validate and apply a partial change (operator priority in the arbiter); audit each changed field."""
        fields = req.model_fields_set
        c, cfg = self.controller, self.cfg
        try:
            if not fields:
                raise ControlRequestError("nothing to change: send mode, supply_temperature_target or "
                                          "heat_pump_setpoint")
            target = req.supply_temperature_target
            if "supply_temperature_target" in fields and target is not None \
                    and not cfg.target_min <= target <= cfg.target_max:
                raise ControlRequestError(
                    f"supply_temperature_target {target} is outside {cfg.target_min}..{cfg.target_max} °C "
                    "(target_min..target_max); send a value in range, or null to return to the curve")
            sp = req.heat_pump_setpoint
            if "heat_pump_setpoint" in fields:
                if sp is None:
                    raise ControlRequestError("heat_pump_setpoint must be a number (°C)")
                if not cfg.setpoint_min <= sp <= cfg.setpoint_max:
                    raise ControlRequestError(
                        f"heat_pump_setpoint {sp} is outside {cfg.setpoint_min}..{cfg.setpoint_max} °C "
                        "(setpoint_min..setpoint_max)")
                if (req.mode or c.mode) != "manual":
                    raise ControlRequestError("heat_pump_setpoint applies in manual mode only; send "
                                              '"mode": "manual" with it', conflict=True)
            if "mode" in fields and req.mode is None:
                raise ControlRequestError("mode must be auto, manual or off")
            hold_s = self._hold_seconds(req)
        except ControlRequestError as err:
            await self._record("control.set", "control", req.model_dump(exclude_unset=True), None, "refused",
                               str(err), principal, role)
            raise
        changes: list[tuple[str, Any, Any]] = []
        held: float | None = None
        if req.mode is not None and req.mode != c.mode:
            changes.append(("mode", c.mode, req.mode))
            c.set_mode(req.mode)
            held = c.manual_setpoint if req.mode == "manual" else None
        if "supply_temperature_target" in fields and target != c.override:
            changes.append(("supply_temperature_target", c.override, target))
            c.override = target
        if sp is not None and sp != c.manual_setpoint:
            changes.append(("heat_pump_setpoint", c.manual_setpoint, sp))
            c.manual_setpoint = sp
        until = self._clock.now() + timedelta(seconds=hold_s)
        if c.override is not None and ("supply_temperature_target" in fields or "expires_in_s" in fields):
            self._override_until, self._override_by = until, principal
        elif c.override is None:
            self._override_until = None
        if c.mode == "manual" and ({"mode", "heat_pump_setpoint", "expires_in_s"} & fields):
            self._manual_until, self._manual_by = until, principal
        elif c.mode != "manual":
            self._manual_until = None
        if "expires_in_s" in fields:
            changes.append(("expires_at", None, until.isoformat(timespec="seconds")))
        self._save()
        for name, old, new in changes:
            log.info("control %s: %s -> %s by %s (%s)", name, old, new, principal, role)
            detail = f"old={_fmt(old)} new={_fmt(new)}"
            if name == "mode" and held is not None:
                detail += f" (holding the heat-pump setpoint in force, {held} °C)"
            if name == "supply_temperature_target" and new is None:
                detail += " (override cleared: back to the curve)"
            if name == "heat_pump_setpoint" and self.controller.last and self.controller.last.constraint == \
                    "cdu_limit":
                detail += " (the CDU limit may hold it lower: safety comes first)"
            await self._record("control.set", f"control.{name}", new, new, "accepted", detail, principal, role)
        if not changes:
            await self._record("control.set", "control", req.model_dump(exclude_unset=True), None, "unchanged",
                               "the request matches what is in force", principal, role)
        return self.status()

    # --- requests in force: expiry and restart -------------------------------------------------

    def _hold_seconds(self, req: ControlRequest) -> float:
        """How long this request's override or manual mode holds; refuses what cannot be held."""
        cfg, c = self.cfg, self.controller
        if req.expires_in_s is None:
            if "expires_in_s" in req.model_fields_set:
                raise ControlRequestError("expires_in_s must be a number of seconds (requests always end)")
            return cfg.request_expiry_default_s
        if not 0 < req.expires_in_s <= cfg.request_expiry_max_s:
            raise ControlRequestError(f"expires_in_s {req.expires_in_s} is outside 0..{cfg.request_expiry_max_s} s "
                                      "(control.request_expiry_max_s)")
        overriding = req.supply_temperature_target is not None or (
            "supply_temperature_target" not in req.model_fields_set and c.override is not None)
        manual = (req.mode or c.mode) == "manual"
        if not overriding and not manual:
            raise ControlRequestError("expires_in_s applies to an override or manual mode, and neither is in "
                                      "force or asked", conflict=True)
        return req.expires_in_s

    async def _expire_requests(self) -> None:
        """End an override or manual mode whose time is up: back to the curve / to auto, bumplessly, audited."""
        now, c = self._clock.now(), self.controller
        if self._override_until is not None and now >= self._override_until:
            old, by = c.override, self._override_by
            c.override, self._override_until = None, None
            log.info("control override %s by %s expired: back to the curve", old, by)
            await self._record("control.expired", "control.supply_temperature_target", old, None, "expired",
                               f"override {_fmt(old)} by {by} ended; the target ramps back to the curve")
            self._save()
        if self._manual_until is not None and now >= self._manual_until:
            by = self._manual_by
            self._manual_until = None
            if c.mode == "manual":
                c.set_mode("auto")  # the PID starts from the held output: bumpless
                log.info("control manual mode by %s expired: back to auto", by)
                await self._record("control.expired", "control.mode", "manual", "auto", "expired",
                                   f"manual mode by {by} ended; automatic control from the held setpoint")
            self._save()

    def _save(self) -> None:
        if self._state_path is None:
            return
        c = self.controller
        try:
            saved.save(self._state_path, saved.RequestsInForce(
                c.mode, c.override, self._override_until, self._override_by, c.manual_setpoint,
                self._manual_until, self._manual_by))
        except OSError as err:  # the request holds in memory; only a restart would lose it
            log.error("control state not saved to %s: %s", self._state_path, err)

    async def restore(self) -> None:
        """At start: put back the requests in force before the stop, unless their time ran out meanwhile."""
        if self._state_path is None:
            return
        st = saved.load(self._state_path)
        if st is None:
            return
        c, now = self.controller, self._clock.now()
        restored = []
        if st.override is not None and st.override_until is not None and st.override_until > now \
                and self.cfg.target_min <= st.override <= self.cfg.target_max:
            c.override, self._override_until, self._override_by = st.override, st.override_until, st.override_by
            restored.append(f"override {st.override} until {st.override_until.isoformat(timespec='seconds')}")
        mode = st.mode
        if mode == "manual" and (st.manual_until is None or st.manual_until <= now):
            mode = "auto"  # manual mode's time ran out while stopped
        if mode == "manual" and st.manual_setpoint is not None:
            c.manual_setpoint = min(max(st.manual_setpoint, self.cfg.setpoint_min), self.cfg.setpoint_max)
            self._manual_until, self._manual_by = st.manual_until, st.manual_by
            restored.append(f"manual at {c.manual_setpoint} °C until "
                            f"{st.manual_until.isoformat(timespec='seconds') if st.manual_until else '?'}")
        if mode != c.mode:
            c.mode = mode
            restored.append(f"mode {mode}")
        if restored:
            log.info("control restored from %s: %s", self._state_path, "; ".join(restored))
            await self._record("control.restored", "control", None, None, "restored", "; ".join(restored))
        self._save()

    async def _record(self, action: str, target: str, requested: Any, applied: Any, outcome: str, detail: str,
                      principal: str = "heatrec", role: str = "controller") -> None:
        if self._audit is None:
            return
        from service.audit import AuditEntry  # the audit module pulls in asyncpg; only needed here

        entry: AuditEntry = AuditEntry(principal, role, action, target, requested, applied, outcome, detail)
        try:
            await self._audit(entry)
        except Exception:  # the trail must not take the loop down; the sink logs its own failures
            log.exception("audit entry not recorded: %s", entry)


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def _fmt(v: object) -> str:
    return "null" if v is None else str(v)
