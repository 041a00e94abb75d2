"""The plant's own history for the plan: an IT-heat profile, a demand model and each pump's Carnot efficiency.

`DispatchHistory.run()` reads the dispatch points' 15-minute means over `[dispatch] history_days` from
TimescaleDB (service/storage/history.py), fits them with forecast.py and calibrates each dispatched pump's
Carnot efficiency from its measured heat and electricity, at start and every `history_refresh_s`, in a task of
its own: a solve only reads the fit in force and never waits for the database. While there is no fit (the
database away since start, history too short, history off) the task plans on persistence and the configured
efficiency, and `GET /api/v1/dispatch` says which. Hour of week is taken in UTC, like the plan's steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from service.clock import RealClock, SleepingClock
from service.config import ControlConfig, PlantDispatch
from service.dispatch.forecast import DemandModel, HourOfWeekProfile, fit_demand, fit_profile
from service.dispatch.models import carnot_cop
from service.errors import HeatrecError, StorageUnavailable
from service.storage.database import Database, connection
from service.storage.history import UnknownPoint, point_history

log = logging.getLogger(__name__)
BUCKET = timedelta(minutes=15)
EFFICIENCY_MIN, EFFICIENCY_MAX = 0.2, 0.8  # outside this, a measurement is wrong, not the pump
RUNNING_SHARE = 0.1  # a bucket counts as running when the pump's mean heat is at least this share of capacity
# How fast the offset of the measurement now from the forecast fades over the horizon (e-folding time): a
# departure from the weekly rhythm (a new cluster, a maintenance window) lasts hours, not the whole horizon.
ANCHOR_DECAY_H = 3.0
RETRY_S = 60.0  # a refresh that failed with the database up (a query error) is tried again this soon

Series = dict[datetime, float]  # bucket start -> mean


@dataclass(frozen=True)
class PumpHistory:
    """One pump's heat output and electrical power, bucket means (kW)."""

    heat: Series
    power: Series


@dataclass(frozen=True)
class HistoryData:
    """The bucket means the fits take."""

    it_heat: Series
    demand: Series
    outdoor: Series
    pumps: dict[str, PumpHistory] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryFit:
    """What one refresh fitted; a part that could not be fitted is None (and `reason` says why)."""

    fitted_at: datetime
    buckets: int  # IT-heat buckets the profile was fitted on
    it_heat: HourOfWeekProfile | None
    demand: DemandModel | None
    demand_buckets: int
    last_outdoor: float | None  # the latest bucket's outdoor temperature, when none is measured now
    efficiency: dict[str, float]  # pump id -> calibrated Carnot efficiency (calibrated pumps only)
    running_buckets: dict[str, int]  # pump id -> buckets it ran in
    reason: str = ""


def sum_series(parts: list[Series]) -> Series:
    """The sum per bucket, over the buckets every part has (a missing part would understate the total)."""
    if not parts:
        return {}
    common = set(parts[0]).intersection(*parts[1:])
    return {t: math.fsum(p[t] for p in parts) for t in sorted(common)}


def calibrate_efficiency(heat: Series, power: Series, ideal_cop: float, capacity_kw: float,
                         min_buckets: int) -> tuple[float | None, int]:
    """Median of heat / (electricity * Carnot COP) over running buckets, clamped; None below min_buckets."""
    ratios = [h / (p * ideal_cop) for t, h in heat.items()
              if (p := power.get(t)) is not None and p > 0 and h >= RUNNING_SHARE * capacity_kw
              and math.isfinite(h) and math.isfinite(p)]
    if len(ratios) < min_buckets:
        return None, len(ratios)
    return min(max(statistics.median(ratios), EFFICIENCY_MIN), EFFICIENCY_MAX), len(ratios)


def fit_history(data: HistoryData, cfg: PlantDispatch, now: datetime) -> HistoryFit:
    """Fit the profile, the demand model and the efficiencies that have enough history (cfg's minimums)."""
    reasons: list[str] = []
    need = cfg.history_min_buckets
    profile = None
    if len(data.it_heat) >= need:
        times = sorted(data.it_heat)
        profile = fit_profile(times, [data.it_heat[t] for t in times])
    else:
        reasons.append(f"IT heat: {len(data.it_heat)} of {need} buckets of history")
    demand = None
    joint = sorted(set(data.demand) & set(data.outdoor))
    if cfg.points.demand:
        if len(joint) >= need:
            demand = fit_demand(joint, [data.outdoor[t] for t in joint], [data.demand[t] for t in joint])
        else:
            reasons.append(f"demand: {len(joint)} of {need} buckets with demand and outdoor temperature")
    ideal = carnot_cop(cfg.source_temperature, cfg.sink_temperature)
    efficiency: dict[str, float] = {}
    running: dict[str, int] = {}
    for hp in cfg.heat_pumps:
        pump = data.pumps.get(hp.id)
        if pump is None:
            running[hp.id] = 0
            continue
        eta, running[hp.id] = calibrate_efficiency(pump.heat, pump.power, ideal, hp.capacity_kw, cfg.cop_min_buckets)
        if eta is not None:
            efficiency[hp.id] = eta
        else:
            reasons.append(f"{hp.id} COP: ran in {running[hp.id]} of {cfg.cop_min_buckets} buckets")
    last = data.outdoor[max(data.outdoor)] if data.outdoor else None
    return HistoryFit(now, len(data.it_heat), profile, demand, len(joint), last, efficiency, running,
                      "; ".join(reasons))


def anchored(forecast: Callable[[datetime], float], start: datetime, steps: int, step: timedelta,
             measured: float | None) -> tuple[float, ...]:
    """The forecast per step, shifted so the first step is the measurement, the shift fading over ANCHOR_DECAY_H."""
    base = [forecast(start + step * i) for i in range(steps)]
    if measured is None or not base:
        return tuple(max(b, 0.0) for b in base)
    offset = measured - base[0]
    hours = step.total_seconds() / 3600.0
    return tuple(max(b + offset * math.exp(-i * hours / ANCHOR_DECAY_H), 0.0) for i, b in enumerate(base))


def _floor(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


async def read_history(db: Database, cfg: PlantDispatch, control: ControlConfig, start: datetime,
                       end: datetime) -> HistoryData:
    """The dispatch points' 15-minute means over [start, end); StorageUnavailable while the database is away."""
    pts = cfg.points
    async with connection(db) as conn:
        async def series(point: str) -> Series:
            try:
                buckets = await point_history(conn, point, start, end, BUCKET, "avg")
            except UnknownPoint:  # never stored yet: no history, as for a point that never reported
                return {}
            return {b.time: float(b.value) for b in buckets if b.value is not None and math.isfinite(b.value)}

        it_heat = sum_series([await series(p) for p in pts.it_heat])
        demand = sum_series([await series(p) for p in pts.demand]) if pts.demand else {}
        outdoor_point = pts.outdoor_temperature or control.outdoor_temperature
        outdoor = await series(outdoor_point) if outdoor_point else {}
        heat_points = {hp.id: hp.heat_output for hp in control.heat_pumps}
        pumps: dict[str, PumpHistory] = {}
        for hp in cfg.heat_pumps:
            heat, power = heat_points.get(hp.id), pts.electric_power.get(hp.id)
            if heat and power:
                pumps[hp.id] = PumpHistory(await series(heat), await series(power))
    return HistoryData(it_heat, demand, outdoor, pumps)


class DispatchHistory:
    """The fit in force and its refresh from the database; `run()` until cancelled."""

    def __init__(self, cfg: PlantDispatch, control: ControlConfig, db: Database | None,
                 clock: SleepingClock | None = None) -> None:
        self.cfg, self.control, self._db = cfg, control, db
        self._clock: SleepingClock = clock or RealClock()
        self.fit: HistoryFit | None = None  # replaced whole by a refresh: a solve's thread reads it as it is
        self.error = ("no database" if db is None else "history off ([dispatch] history_days = 0)"
                      if not self.enabled else "no history read yet")
        self.refreshes = 0
        self._said: tuple[object, ...] | None = None

    @property
    def enabled(self) -> bool:
        """Whether history is read at all (a database, and history_days above 0)."""
        return self._db is not None and self.cfg.history_days > 0

    # --- what the plan uses ---------------------------------------------------------------------

    @property
    def forecast(self) -> str:
        """Where the IT-heat forecast comes from: history or persistence."""
        return "history" if self.fit is not None and self.fit.it_heat is not None else "persistence"

    @property
    def demand_forecast(self) -> str:
        """Where the demand forecast comes from: history, persistence, or none (no demand points)."""
        if not self.cfg.points.demand:
            return "none"
        return "history" if self.fit is not None and self.fit.demand is not None else "persistence"

    def efficiency(self, pump: str) -> float:
        """The Carnot efficiency in force for a pump: calibrated, else the configured one."""
        configured = next(hp.carnot_efficiency for hp in self.cfg.heat_pumps if hp.id == pump)
        return self.fit.efficiency.get(pump, configured) if self.fit is not None else configured

    def cop_source(self, pump: str) -> str:
        """calibrated or configured."""
        return "calibrated" if self.fit is not None and pump in self.fit.efficiency else "configured"

    def reason(self) -> str:
        """Why something is not from history (empty when everything is)."""
        parts = [self.error] if self.error else []
        if self.fit is not None and self.fit.reason:
            parts.append(self.fit.reason)
        return "; ".join(parts)

    def it_heat_kw(self, start: datetime, steps: int, step: timedelta, measured: float | None) -> tuple[float, ...]:
        """IT heat per step: the profile anchored at the measurement, else persistence (0 when unmeasured)."""
        fit = self.fit
        if fit is None or fit.it_heat is None:
            return (measured if measured is not None else 0.0,) * steps
        return anchored(fit.it_heat.at, start, steps, step, measured)

    def demand_kw(self, start: datetime, steps: int, step: timedelta, measured: float | None,
                  outdoor: float | None, default: float) -> tuple[float, ...]:
        """Demand per step: the model at today's outdoor temperature anchored at the measurement, else persistence."""
        fit = self.fit
        model = fit.demand if fit is not None else None
        outdoor = outdoor if outdoor is not None else fit.last_outdoor if fit is not None else None
        if model is None or outdoor is None:
            return (measured if measured is not None else default,) * steps
        at_outdoor = outdoor
        return anchored(lambda t: model.at(t, at_outdoor), start, steps, step, measured)

    # --- refreshing -----------------------------------------------------------------------------

    async def refresh(self) -> HistoryFit | None:
        """Read and fit once; the database away keeps the fit in force (none at first: persistence)."""
        if self._db is None or not self.enabled:
            self._note()
            return self.fit
        end = _floor(self._clock.now())
        start = end - timedelta(days=self.cfg.history_days)
        try:
            data = await read_history(self._db, self.cfg, self.control, start, end)
        except StorageUnavailable as err:
            self.error = f"database unavailable: {err}"
        except HeatrecError as err:  # a query the database refused: the plan goes on without history
            self.error = f"history not read: {err}"
        else:
            self.fit = fit_history(data, self.cfg, self._clock.now())
            self.error = ""
        self.refreshes += 1
        self._note()
        return self.fit

    def _note(self) -> None:
        """Log the sources in force once per change."""
        pumps = tuple((hp.id, self.cop_source(hp.id)) for hp in self.cfg.heat_pumps)
        said = (self.forecast, self.demand_forecast, pumps, bool(self.error))
        if said == self._said:
            return
        self._said = said
        cops = ", ".join(f"{p} {s} {self.efficiency(p):.3f}" for p, s in pumps)
        why = self.reason()
        (log.info if not why else log.warning)(
            "dispatch forecasts: IT heat %s, demand %s; Carnot efficiency %s%s", self.forecast,
            self.demand_forecast, cops, f" ({why})" if why else "")

    async def run(self) -> None:
        """Refresh at start and every history_refresh_s; while the database is away, as soon as it is back."""
        if not self.enabled:
            self._note()
            return
        db = self._db
        assert db is not None
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug in one fit must not stop the plant: the fit in force (or persistence) stays
                log.exception("dispatch history fit failed; the forecasts in force stay")
                self.error = "history fit failed (see the log)"
            if not db.up:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(db.ready.wait(), self.cfg.history_refresh_s)
                if db.up:
                    continue
            else:
                await self._clock.sleep(RETRY_S if self.error else self.cfg.history_refresh_s)
