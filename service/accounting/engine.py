"""Accounting computed from the database: meter energy per interval, settlements per contract and month."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from service.accounting.metering import DRIFT, PowerSample, check_interval, integrate_gj
from service.accounting.registers import (
    ESTIMATED,
    RegisterSpec,
    Step,
    Tally,
    register_steps,
    tally,
    uncovered,
)
from service.accounting.rules import RuleSet, load_rules, split_period
from service.accounting.settlement import GJ_PER_KWH, UNCHECKED, Settlement, settle_segment
from service.accounting.store import (
    fetch_manual,
    fetch_power,
    fetch_register,
    fetch_replacements,
    hour_aligned,
    rollup_total,
    sql_register_totals,
)
from service.config import AccountingConfig, AccountingHeatPump, AccountingMeter, HeatrecConfig
from service.errors import InvalidRequest

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
INCOMPLETE = "incomplete"  # part of the range has neither register nor sensor data


class AccountingError(InvalidRequest):
    """Bad input to an accounting computation; the message says what to fix."""


def month_bounds(period: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a YYYY-MM month in the plant's local time."""
    m = _PERIOD.match(period)
    if not m:
        raise AccountingError(f"period '{period}' is not YYYY-MM")
    year, month = int(m.group(1)), int(m.group(2))
    if not 1990 <= year <= 2100:
        raise AccountingError(f"period '{period}': year out of range 1990..2100")
    # In UTC: arithmetic on datetimes sharing a ZoneInfo is wall-clock arithmetic, wrong across DST.
    start = datetime(year, month, 1, tzinfo=tz).astimezone(UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz).astimezone(UTC)
    return start, end


def meter_spec(m: AccountingMeter) -> RegisterSpec:
    """Counting parameters of a heat meter's GJ register."""
    return RegisterSpec(max_rate_per_s=m.max_power_kw / 1e6, gap_s=m.gap_s, wrap=m.register_wrap_gj,
                        resolution=1e-6)


def heat_pump_spec(h: AccountingHeatPump) -> RegisterSpec:
    """Counting parameters of a heat pump's kWh electricity register (0.1 kWh resolution)."""
    return RegisterSpec(max_rate_per_s=h.max_power_kw / 3600.0, gap_s=h.gap_s, wrap=h.register_wrap_kwh,
                        resolution=0.1)


def margin_for(gap_s: float) -> timedelta:
    # Look this far beyond the range for the readings that frame it (and confirm faults at its edges).
    return timedelta(seconds=max(gap_s * 4, 86400.0))


@dataclass
class MeterData:
    """Everything needed to account one meter over a range."""

    steps: list[Step]
    power: list[PowerSample] = field(default_factory=list)


async def load_meter(conn: asyncpg.Connection, m: AccountingMeter, start: datetime, end: datetime) -> MeterData:
    """Register steps (with manual readings and recorded replacements) and sensor samples of a meter."""
    margin = margin_for(m.gap_s)
    readings = await fetch_register(conn, m.energy_point, start, end, margin)
    readings += await fetch_manual(conn, m.id, start, end, margin)
    reps = await fetch_replacements(conn, m.id, start, end, margin)
    power: list[PowerSample] = []
    if m.flow_point and m.flow_temperature_point and m.return_temperature_point:
        power = await fetch_power(conn, m.flow_point, m.flow_temperature_point, m.return_temperature_point,
                                  start - timedelta(seconds=m.gap_s), end)
    return MeterData(register_steps(readings, meter_spec(m), reps), power)


def meter_tally(m: AccountingMeter, data: MeterData, start: datetime, end: datetime,
                open_end: bool = False) -> Tally:
    """Energy of [start, end): register steps, plus integrated power where no register covers the time.

    With open_end, end is the moment of computing (a period not over yet): the last seconds since the
    meter's latest reading, if within gap_s, are left for the next reading to count rather than
    estimated, so an open period is not marked estimated for data that is simply not due yet.
    """
    t = tally(data.steps, start, end)
    hold = timedelta(seconds=m.gap_s)
    for lo, hi in uncovered(data.steps, start, end):
        if open_end and hi == end and data.steps and data.steps[-1].end <= lo and hi - lo <= hold:
            continue
        if data.power and data.power[0].time <= hi:
            est = integrate_gj(data.power, lo, hi, m.gap_s)
            t.energy += est
            t.estimated += est
            t.flags.add(ESTIMATED)
        if not data.power or data.power[0].time > lo + hold or data.power[-1].time + hold < hi:
            t.flags.add(INCOMPLETE)  # the sensors do not reach over all of it either
    return t


async def meter_energy(conn: asyncpg.Connection, m: AccountingMeter, start: datetime, end: datetime,
                       as_of: datetime | None = None) -> Tally:
    """Energy of a meter in [start, min(end, as_of)): nothing after as_of is counted or estimated."""
    if as_of is not None and as_of < end:
        if as_of <= start:
            return Tally()
        # The hours before as_of from the roll-up when clean; only the last part by the full logic.
        cut = max(start, _floor(as_of, 3600))
        head = await meter_energy(conn, m, start, cut) if cut > start else Tally()
        tail = meter_tally(m, await load_meter(conn, m, cut, as_of), cut, as_of, open_end=True)
        return Tally(energy=head.energy + tail.energy, estimated=head.estimated + tail.estimated,
                     flags=head.flags | tail.flags, covered_s=head.covered_s + tail.covered_s)
    margin = margin_for(m.gap_s)
    extra = await conn.fetchval(
        "SELECT (SELECT count(*) FROM manual_readings WHERE meter_id = $1 AND time >= $2 AND time <= $3) "
        "+ (SELECT count(*) FROM meter_replacements WHERE meter_id = $1 AND time >= $2 AND time <= $3)",
        m.id, start - margin, end + margin)
    if extra == 0:
        # Hour-aligned ranges (months, rule segments) from the hourly roll-up, others straight from the rows.
        fast = await rollup_total(conn, m.energy_point, meter_spec(m), start, end, margin)
        if fast is None and not (hour_aligned(start) and hour_aligned(end)):
            fast = (await sql_register_totals(conn, [(m.energy_point, meter_spec(m))], start, end, margin)).get(
                m.energy_point)
        clean = (fast is not None and fast.anomalies == 0 and fast.first is not None and fast.last is not None
                 and fast.first <= start and fast.last >= end)
        if clean and fast is not None:
            return Tally(energy=fast.energy, covered_s=(end - start).total_seconds())
    return meter_tally(m, await load_meter(conn, m, start, end), start, end)


async def heat_pump_gj(conn: asyncpg.Connection, h: AccountingHeatPump, start: datetime, end: datetime,
                       as_of: datetime | None = None) -> float:
    """Electricity of a heat pump in [start, min(end, as_of)), GJ."""
    if as_of is not None:
        end = min(end, as_of)
    if end <= start:
        return 0.0
    return await register_energy(conn, h.electricity_point, heat_pump_spec(h), start, end) * GJ_PER_KWH


async def register_energy(conn: asyncpg.Connection, point: str, spec: RegisterSpec, start: datetime,
                          end: datetime) -> float:
    """A register's increase over [start, end) in its own unit: the roll-up when clean, else the full logic."""
    margin = margin_for(spec.gap_s)
    fast = await rollup_total(conn, point, spec, start, end, margin)
    if fast is not None:
        return fast.energy
    readings = await fetch_register(conn, point, start, end, margin)
    return tally(register_steps(readings, spec), start, end).energy


async def settle(conn: asyncpg.Connection, cfg: HeatrecConfig, contract_id: str, start: datetime,
                 end: datetime, label: str, rules: RuleSet | None = None,
                 as_of: datetime | None = None) -> Settlement:
    """Settle one contract over [start, end) as of a moment (default now): split at rule changes, meter
    energy and charge per segment; nothing after as_of is counted, so an open period holds no future."""
    as_of = (as_of or datetime.now(UTC)).astimezone(UTC)
    acc = _acc(cfg)
    contract = next((c for c in acc.contracts if c.id == contract_id), None)
    if contract is None:
        raise AccountingError(f"no contract '{contract_id}' in [accounting]")
    rules = rules or load_rules(acc.rules_dir, contract.rule_set)
    tz = ZoneInfo(cfg.plant.timezone)
    meters = {m.id: m for m in acc.meters}
    pumps = {h.id: h for h in acc.heat_pumps}
    per_meter = {mid: 0.0 for mid in contract.meters}
    flags: set[str] = set()
    results = []
    for seg in split_period(rules, start, end, tz):
        delivered = estimated = 0.0
        for mid in contract.meters:
            t = await meter_energy(conn, meters[mid], seg.start, seg.end, as_of)
            per_meter[mid] += t.energy
            delivered += t.energy
            estimated += t.estimated
            flags |= t.flags
        hp = 0.0
        for hid in contract.heat_pumps:
            hp += await heat_pump_gj(conn, pumps[hid], seg.start, seg.end, as_of)
        results.append(settle_segment(contract, rules, seg, delivered, estimated, hp))
    if not all(r.price_bound_checked for r in results):
        flags.add(UNCHECKED)
    return Settlement(contract_id=contract.id, period=label, start=start, end=end, energy_gj=per_meter,
                      segments=tuple(results), flags=tuple(sorted(flags)), supplier=contract.supplier,
                      utility=contract.utility, rule_set=rules.name, as_of=as_of)


async def settle_month(conn: asyncpg.Connection, cfg: HeatrecConfig, period: str,
                       contracts: Sequence[str] | None = None, as_of: datetime | None = None) -> list[Settlement]:
    """Every (or the named) contract's settlement of a YYYY-MM month, as of a moment (default now)."""
    acc = _acc(cfg)
    start, end = month_bounds(period, ZoneInfo(cfg.plant.timezone))
    ids = list(contracts) if contracts else [c.id for c in acc.contracts]
    as_of = as_of or datetime.now(UTC)
    return [await settle(conn, cfg, cid, start, end, period, as_of=as_of) for cid in ids]


def _acc(cfg: HeatrecConfig) -> AccountingConfig:
    if cfg.accounting is None:
        raise AccountingError("the config has no [accounting] section (docs/CONFIG.md)")
    return cfg.accounting


@dataclass(frozen=True)
class Interval:
    """One meter's energy in one interval, with its flags and cross-check."""

    meter: str
    start: datetime
    end: datetime
    energy_gj: float
    estimated_gj: float
    integrated_gj: float | None
    drift_percent: float | None
    envelope_percent: float | None
    flags: tuple[str, ...]

    @property
    def estimated(self) -> bool:
        """Some of the energy is estimated."""
        return self.estimated_gj > 0 or ESTIMATED in self.flags

    @property
    def manual(self) -> bool:
        """A manual reading contributed."""
        return "manual" in self.flags


def _floor(t: datetime, step_s: int) -> datetime:
    ts = t.timestamp()
    return datetime.fromtimestamp(ts - ts % step_s, UTC)


async def meter_intervals(conn: asyncpg.Connection, m: AccountingMeter, start: datetime, end: datetime,
                          step_s: int) -> list[Interval]:
    """Per-interval energy of a meter over [start, end), intervals aligned to multiples of step_s (UTC)."""
    data = await load_meter(conn, m, start, end)
    out = []
    t = _floor(start, step_s)
    while t < end:
        lo, hi = max(t, start), min(t + timedelta(seconds=step_s), end)
        t += timedelta(seconds=step_s)
        if hi <= lo:
            continue
        tl = meter_tally(m, data, lo, hi)
        flags = set(tl.flags)
        integrated = drift = envelope = None
        if data.power:
            chk = check_interval(tl.energy, data.power, lo, hi, qp=m.qp_m3h, qi=m.qi_m3h,
                                 delta_theta_min=m.delta_theta_min_k, mid_class=m.mid_class, max_hold_s=m.gap_s)
            integrated, drift, envelope = chk.integrated_gj, chk.drift_percent, chk.envelope_percent
            flags |= chk.flags
            if tl.estimated > 0:
                flags.discard(DRIFT)  # an estimate cannot drift from itself
        out.append(Interval(m.id, lo, hi, tl.energy, tl.estimated, integrated, drift, envelope,
                            tuple(sorted(flags))))
    return out


def year_bounds(year: int, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a calendar year in local time."""
    return (datetime.combine(date(year, 1, 1), datetime.min.time(), tzinfo=tz).astimezone(UTC),
            datetime.combine(date(year + 1, 1, 1), datetime.min.time(), tzinfo=tz).astimezone(UTC))
