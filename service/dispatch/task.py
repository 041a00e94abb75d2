"""The dispatch task in the running service: replan from fresh measurements and prices, execute the current step.

Every `replan_s` it reads the plant (IT heat, demand, store content, the pumps' status words, outdoor
temperature), the day-ahead prices (file or URL) and the tariffs, and solves the plan off the event loop
with the time limit. Between solves it hands the controller the current step as a DispatchCommand, which
the controller honours at automatic priority, cooling first (service/control/controller.py). Each fallback
(solver timeout, missing prices, infeasible) is logged once per episode, recorded as an event and shown by
`GET /api/v1/dispatch`. Operators switch it on or off (audited, kept in a local file like the control mode).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.bus import SampleBus
from service.clock import Clock, RealClock
from service.config import ControlConfig, PlantDispatch
from service.control.command import SG_ENCOURAGED, SG_NORMAL, DispatchCommand, capacity_limit_percent
from service.control.controller import FAULT_BIT, RUN_BIT, Controller
from service.dispatch import prices as price_data
from service.dispatch.history import DispatchHistory
from service.dispatch.models import CarnotCop, DryCoolers, HeatStore
from service.dispatch.optimiser import Inputs, Plan, StoreInput, UnitInput, optimise, safe_plan
from service.dispatch.plan_points import PlanPublisher
from service.dispatch.tariffs import TariffError, TariffSet, load_tariffs
from service.errors import HeatrecError
from service.model import Quality

if TYPE_CHECKING:
    from service.audit import AuditSink

log = logging.getLogger(__name__)
PRICE_STEP = price_data.STEP  # the plan's own step: the prices' 15 minutes
EventFn = Callable[[str, str, str], None]  # (kind, severity, message): a row in the plant's events
Solver = Callable[[Inputs, Plan | None, float], Plan]


@dataclass(frozen=True)
class Measurements:
    """What the plant shows now (None: not usable)."""

    it_heat_kw: float | None
    demand_kw: float | None
    store_share: float | None
    outdoor: float | None
    status: dict[str, int | None]  # heat pump id -> status word
    heat_output_kw: float | None  # the dispatched heat pumps' output now
    missing: tuple[str, ...] = ()


@dataclass
class DispatchStats:
    """Counters the metrics read."""

    solves: int = 0
    last_solve_s: float = 0.0
    fallbacks: dict[str, int] | None = None
    episodes: int = 0  # fallback episodes begun (each logged once)

    def __post_init__(self) -> None:
        self.fallbacks = self.fallbacks or {}


def _floor_step(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


class DispatchTask:
    """Plans and executes price-aware dispatch for one plant; `run()` until cancelled."""

    def __init__(self, cfg: PlantDispatch, control: ControlConfig, bus: SampleBus, controller: Controller,
                 clock: Clock | None = None, *, audit: AuditSink | None = None, events: EventFn | None = None,
                 state_path: Path | None = None, solver: Solver = optimise,
                 tariffs: TariffSet | None = None, history: DispatchHistory | None = None) -> None:
        self.cfg = cfg
        self.control = control
        self._bus = bus
        self.controller = controller
        self._clock: Clock = clock or RealClock()
        self._audit = audit
        self._events = events
        self._state_path = state_path
        self._solver = solver
        self.tariffs = tariffs or load_tariffs(cfg.tariffs)
        # The forecasts and COP fitted from the database's history (none yet, or no database: persistence).
        self.history = history or DispatchHistory(cfg, control, None)
        self.enabled = cfg.enabled
        self.enabled_by = "configuration"
        self.plan: Plan | None = None
        self.inputs: Inputs | None = None
        self.last_solve_at: datetime | None = None
        self.episode: str | None = None  # the fallback in force (its status), None while plans are fresh
        self.episode_reason = ""
        self.stats = DispatchStats()
        self._t0 = self._clock.monotonic()
        self._anchor: datetime | None = None  # compressed steps: the price time of _t0
        # pump -> (on, since when in price time, whether that change was seen: else it is older than we know)
        self._since: dict[str, tuple[bool, datetime, bool]] = {}
        # pump -> (in service, from which plan step): a change the plan commanded dates from that step, not from
        # when the status word showed it (the pump and the poll lag behind the command)
        self._commanded: dict[str, tuple[bool, datetime]] = {}
        self._lock = asyncio.Lock()
        self.publisher = PlanPublisher(bus)  # the step in force as samples, stored like any reading
        self.restore()

    # --- time -----------------------------------------------------------------------------------

    @property
    def compressed(self) -> bool:
        """Whether plan steps are shorter on the plant than the prices' 15 minutes (tests, demos)."""
        return self.cfg.step_s < PRICE_STEP.total_seconds()

    def plan_time(self) -> datetime:
        """Where in the price data the plant is now: the wall clock, or the replay position when compressed."""
        if not self.compressed:
            return self._clock.now().astimezone(UTC)
        anchor = self._anchor or _floor_step(self._clock.now())
        scale = PRICE_STEP.total_seconds() / self.cfg.step_s
        return anchor + timedelta(seconds=(self._clock.monotonic() - self._t0) * scale)

    @property
    def steps(self) -> int:
        """Length of the horizon in plan steps."""
        return max(int(self.cfg.horizon_h * 4), 1)

    # --- inputs ---------------------------------------------------------------------------------

    def _value(self, point: str) -> float | None:
        s = self._bus.latest.get(point)
        if s is None or s.quality != Quality.GOOD or s.value is None or not math.isfinite(s.value):
            return None
        if (self._clock.now() - s.receive_time).total_seconds() > self.control.stale_after_s:
            return None
        return float(s.value)

    def _sum(self, points: list[str], missing: list[str]) -> float | None:
        values = [self._value(p) for p in points]
        missing += [p for p, v in zip(points, values, strict=True) if v is None]
        return None if any(v is None for v in values) else math.fsum(v for v in values if v is not None)

    def measure(self) -> Measurements:
        """Read the plant from the bus's latest samples."""
        pts = self.cfg.points
        missing: list[str] = []
        it_heat = self._sum(pts.it_heat, missing)
        demand = self._sum(pts.demand, missing) if pts.demand else None
        share = self._value(pts.store_state_of_charge) if pts.store_state_of_charge else None
        if pts.store_state_of_charge and share is None:
            missing.append(pts.store_state_of_charge)
        outdoor_point = pts.outdoor_temperature or self.control.outdoor_temperature
        outdoor = self._value(outdoor_point) if outdoor_point else None
        status: dict[str, int | None] = {}
        dispatched = {h.id for h in self.cfg.heat_pumps}
        outputs: list[str] = []
        for hp in self.control.heat_pumps:
            if hp.id not in dispatched:
                continue
            word = self._value(hp.status) if hp.status else None
            status[hp.id] = None if word is None else int(word)
            if hp.status and word is None:
                missing.append(hp.status)  # whether it runs or has tripped is unknown: no plan on a guess
            if hp.heat_output:
                outputs.append(hp.heat_output)
        heat = self._sum(outputs, []) if outputs else None
        return Measurements(it_heat, demand, share, outdoor, status, heat, tuple(missing))

    def build_inputs(self, m: Measurements, series: price_data.PriceSeries | None, start: datetime) -> Inputs:
        """The optimiser's inputs for a horizon from `start` (a quarter hour of price time)."""
        cfg, n = self.cfg, self.steps
        electricity: tuple[Decimal, ...] | None = None
        if series is not None:
            spot = series.window(start, n)
            if spot is not None:
                try:
                    electricity = tuple(self.tariffs.electricity_dkk_per_kwh(start + PRICE_STEP * i, p)
                                        for i, p in enumerate(spot))
                except TariffError as err:
                    log.debug("no tariff for the horizon: %s", err)
                    electricity = None
        outdoor = m.outdoor if m.outdoor is not None else cfg.dry_cooler_design_outdoor_temperature
        dry = DryCoolers(cfg.dry_cooler_capacity_kw, cfg.dry_cooler_design_outdoor_temperature,
                         cfg.dry_cooler_derating_per_k).capacity_at(outdoor)
        capacity = sum(h.capacity_kw for h in cfg.heat_pumps) + cfg.direct_exchange_kw
        # The history's profile and demand model anchored at what the plant shows now, else persistence: what it
        # shows now holds over the horizon (docs/DISPATCH.md); outdoor temperature is persistence either way.
        it_heat_kw = self.history.it_heat_kw(start, n, PRICE_STEP, m.it_heat_kw)
        demand_kw = self.history.demand_kw(start, n, PRICE_STEP, m.demand_kw, m.outdoor, capacity)
        units = []
        for hp in cfg.heat_pumps:
            cop = CarnotCop(self.history.efficiency(hp.id)).cop(cfg.source_temperature, cfg.sink_temperature)
            word = m.status.get(hp.id)
            available = word is not None and not word & FAULT_BIT
            on = word is not None and bool(word & RUN_BIT)
            prev = self._since.get(hp.id)
            if prev is None or prev[0] != on:
                commanded = self._commanded.get(hp.id)
                since = commanded[1] if commanded is not None and commanded[0] == on else start
                self._since[hp.id] = prev = (on, min(since, start), prev is not None)
            in_state = max(int((start - prev[1]) / PRICE_STEP), 0) if prev[2] else 1_000_000
            units.append(UnitInput(hp.id, hp.capacity_kw, (cop,) * n, hp.min_load_fraction,
                                   max(math.ceil(hp.min_run_min / 15), 1), max(math.ceil(hp.min_stop_min / 15), 1),
                                   hp.start_cost_dkk, available, int(on), in_state))
        store = None
        if cfg.store is not None:
            s = cfg.store
            model = HeatStore(s.volume_m3, s.min_temperature, s.max_temperature, s.loss_w_per_k,
                              s.ambient_temperature, s.max_charge_kw, s.max_discharge_kw)
            share = m.store_share if m.store_share is not None else 0.0
            store = StoreInput.of(model, min(max(share, 0.0), 1.0) * model.capacity_kwh)
        return Inputs(start=start, heat_price_dkk_per_kwh=cfg.heat_price_dkk_per_mwh / 1000,
                      electricity_dkk_per_kwh=electricity, it_heat_kw=it_heat_kw, demand_kw=demand_kw,
                      dry_cooler_kw=(dry,) * n, units=tuple(units),
                      direct_exchange_kw=(cfg.direct_exchange_kw,) * n if cfg.direct_exchange_kw > 0 else None,
                      store=store, step_s=PRICE_STEP.total_seconds(),
                      rejection_cost_dkk_per_kwh=cfg.rejection_cost_dkk_per_mwh / 1000)

    def read_prices(self) -> tuple[price_data.PriceSeries | None, str]:
        """The day-ahead prices (blocking: a file read or an HTTP fetch), or None and why not."""
        cfg = self.cfg
        try:
            if cfg.price_file is not None:
                return price_data.read_file(Path(cfg.price_file), cfg.price_area), ""
            assert cfg.price_url is not None
            start = _floor_step(self.plan_time())
            return price_data.fetch(cfg.price_url, cfg.price_area, start, start + PRICE_STEP * self.steps,
                                    cfg.fetch_timeout_s), ""
        except HeatrecError as err:
            return None, str(err)

    # --- solving --------------------------------------------------------------------------------

    def _solve(self, m: Measurements) -> tuple[Plan, Inputs]:
        series, why = self.read_prices()
        if series is not None and self.compressed and self._anchor is None:
            # The replay starts at the price data's first interval.
            scale = PRICE_STEP.total_seconds() / self.cfg.step_s
            self._anchor = series.start - timedelta(seconds=(self._clock.monotonic() - self._t0) * scale)
        start = _floor_step(self.plan_time())
        inputs = self.build_inputs(m, series, start)
        if m.it_heat_kw is None or any(hp.status and hp.status in m.missing for hp in self.control.heat_pumps):
            return safe_plan(inputs, f"measurements missing: {', '.join(m.missing)}"), inputs
        plan = self._solver(inputs, self.plan, self.cfg.solver_time_limit_s)
        if plan.status == "follow_demand" and why:
            plan = Plan(plan.start, plan.step_s, plan.unit_ids, (), "follow_demand", f"missing prices: {why}")
        return plan, inputs

    async def replan(self) -> Plan:
        """Solve once from fresh measurements, off the event loop; keep the plan and note any fallback."""
        async with self._lock:
            m = self.measure()
            began = self._clock.monotonic()
            plan, inputs = await asyncio.to_thread(self._solve, m)
            self.stats.solves += 1
            self.stats.last_solve_s = plan.solve_s or max(self._clock.monotonic() - began, 0.0)
            self.plan, self.inputs = plan, inputs
            self.last_solve_at = self._clock.now()
            self._note_fallback(plan)
            self.apply()
            return plan

    def _note_fallback(self, plan: Plan) -> None:
        """Log and record a fallback once per episode, and its end."""
        episode = plan.status if plan.is_fallback else None
        if episode is not None:
            assert self.stats.fallbacks is not None
            self.stats.fallbacks[episode] = self.stats.fallbacks.get(episode, 0) + 1
        if episode == self.episode:
            return
        if episode is not None:
            self.stats.episodes += 1
            message = f"dispatch fallback {episode}: {plan.reason}"
            log.warning("%s", message)
            self._event(f"fallback_{episode}", "warning", message)
        else:
            message = f"dispatch plans again (after {self.episode}: {self.episode_reason})"
            log.info("%s", message)
            self._event("fallback_ended", "info", message)
        self.episode, self.episode_reason = episode, plan.reason

    def _event(self, kind: str, severity: str, message: str) -> None:
        if self._events is not None:
            self._events(kind, severity, message)

    # --- execution ------------------------------------------------------------------------------

    def current_index(self, plan: Plan | None = None) -> int | None:
        """The index of the plan step in force now, or None (no plan, or it has run out)."""
        plan = plan or self.plan
        if plan is None or not plan.steps:
            return None
        now = self.plan_time()
        for i, step in enumerate(plan.steps):
            if step.start <= now < step.start + timedelta(seconds=plan.step_s):
                return i
        return None

    def command(self) -> DispatchCommand | None:
        """The current step as the controller's constraints; None = today's control (off, no plan, no prices)."""
        plan = self.plan
        if not self.enabled or plan is None or plan.status == "follow_demand":
            return None
        i = self.current_index()
        if i is None:
            return None
        step = plan.steps[i]
        dispatched = set(plan.unit_ids)
        on = {u for u, running in zip(plan.unit_ids, step.on, strict=True) if running}
        if plan.status == "safe":
            on = dispatched  # cooling first: every pump in service, also one whose status is unknown now
        # Heat pumps the plan does not dispatch stay in service, as today.
        in_service = frozenset(on | {h.id for h in self.control.heat_pumps if h.id not in dispatched})
        charging = step.charge_kw > 1e-6
        sg = {u: SG_ENCOURAGED if charging else SG_NORMAL for u in in_service}
        heat = dict(zip(plan.unit_ids, step.heat_kw, strict=True))
        # The plan's heat as each running pump's capacity limit; none in the safe plan (cooling first: every pump
        # at full) and none on the pumps the plan does not dispatch.
        limits: dict[str, float] = {}
        if plan.status != "safe":
            for hp in self.cfg.heat_pumps:
                if hp.id in on and hp.id in heat:
                    limits[hp.id] = capacity_limit_percent(heat[hp.id], hp.capacity_kw, hp.min_load_fraction)
        return DispatchCommand(step.start.isoformat(), in_service, sg, heat, plan.status, capacity_limit=limits)

    def apply(self) -> None:
        """Hand the controller the step in force (or nothing)."""
        try:
            self.publisher.observe(self.plan, self.inputs, self.current_index(), self.enabled, self.plan_time(),
                                   self._clock.now())
        except Exception:  # the plan's record is for people: a bug in it must not stop dispatch
            log.exception("dispatch plan samples not published")
        cmd = self.controller.dispatch = self.command()
        if cmd is None:
            self._commanded.clear()
            return
        step = datetime.fromisoformat(cmd.step_start)
        for hp in self.cfg.heat_pumps:
            wanted = hp.id in cmd.in_service
            if self._commanded.get(hp.id, (None,))[0] != wanted:
                self._commanded[hp.id] = (wanted, step)

    async def run(self) -> None:
        """Replan every replan_s and keep the controller on the current step, until cancelled."""
        tick = min(1.0, self.cfg.step_s / 4)
        next_solve = self._clock.monotonic()
        try:
            while True:
                if self._clock.monotonic() >= next_solve:
                    next_solve = self._clock.monotonic() + self.cfg.replan_s
                    try:
                        await self.replan()
                    except Exception:  # a bug in one solve must not stop the plant: today's control goes on
                        log.exception("dispatch solve failed; today's control continues")
                        self.controller.dispatch = None
                self.apply()
                await asyncio.sleep(max(min(tick, next_solve - self._clock.monotonic()), 0.01))
        finally:
            self.controller.dispatch = None

    # --- the operator's switch ------------------------------------------------------------------

    async def set_enabled(self, enabled: bool, principal: str, role: str) -> bool:
        """Switch dispatch on or off (audited, kept across restarts); returns the state in force."""
        old = self.enabled
        self.enabled, self.enabled_by = enabled, principal
        self._save()
        self.apply()
        outcome = "accepted" if old != enabled else "unchanged"
        detail = f"old={str(old).lower()} new={str(enabled).lower()}"
        if not enabled:
            detail += " (today's supply-temperature control, no plan constraints)"
        log.info("dispatch %s by %s (%s)", "on" if enabled else "off", principal, role)
        await self._record(principal, role, "dispatch.set", "dispatch.enabled", enabled, enabled, outcome, detail)
        self._event("dispatch_on" if enabled else "dispatch_off", "info",
                    f"dispatch switched {'on' if enabled else 'off'} by {principal}")
        return self.enabled

    def _save(self) -> None:
        if self._state_path is None:
            return
        data = {"enabled": self.enabled, "by": self.enabled_by, "at": self._clock.now().isoformat()}
        try:
            self._state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state_path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self._state_path)
        except OSError as err:  # the switch holds in memory; only a restart would lose it
            log.error("dispatch state not saved to %s: %s", self._state_path, err)

    def restore(self) -> None:
        """At start: the operator's last switch, if any."""
        if self._state_path is None:
            return
        try:
            data: dict[str, Any] = json.loads(self._state_path.read_text(encoding="utf-8"))
            if isinstance(data.get("enabled"), bool):
                self.enabled, self.enabled_by = data["enabled"], str(data.get("by", "operator"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.error("dispatch state %s unreadable (%s): starting from the configuration", self._state_path, err)

    async def _record(self, principal: str, role: str, action: str, target: str, requested: Any, applied: Any,
                      outcome: str, detail: str) -> None:
        if self._audit is None:
            return
        from service.audit import AuditEntry  # the audit module pulls in asyncpg; only needed here

        try:
            await self._audit(AuditEntry(principal, role, action, target, requested, applied, outcome, detail))
        except Exception:  # the trail must not take the task down; the sink logs its own failures
            log.exception("audit entry not recorded: %s %s", action, target)
