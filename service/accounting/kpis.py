"""Reporting KPIs: delivered heat, homes, avoided CO2, heat-pump COP, heat share, ERF and PUE."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from service.accounting.engine import AccountingError, heat_pump_gj, meter_energy, register_energy
from service.accounting.registers import RegisterSpec
from service.config import AccountingConfig, Co2Factor, HeatrecConfig

GJ_PER_MWH = 3.6
_YEAR_S = 365.25 * 86400
# EnEfG § 11: ERF a data centre starting operation from these dates must reach.
ENEFG_ERF_TARGETS = ((date(2026, 7, 1), 0.10), (date(2027, 7, 1), 0.15), (date(2028, 7, 1), 0.20))
# Site electricity registers (kWh): no plausibility limit is known, so only wrap-free monotonic counting.
_SITE_SPEC = RegisterSpec(max_rate_per_s=1e9, gap_s=900.0, resolution=0.1)


def co2_factor(table: Sequence[Co2Factor], year: float) -> float:
    """kg CO2 per kWh in a (fractional) year: linear between table years, flat beyond the ends."""
    rows = sorted(table, key=lambda f: f.year)
    if year <= rows[0].year:
        return rows[0].kg_per_kwh
    for a, b in itertools.pairwise(rows):
        if a.year <= year <= b.year:
            return a.kg_per_kwh + (b.kg_per_kwh - a.kg_per_kwh) * (year - a.year) / (b.year - a.year)
    return rows[-1].kg_per_kwh


def enefg_erf_target(commissioned: date) -> float | None:
    """ERF EnEfG § 11 asks of a data centre starting operation on that date (None before 2026-07-01)."""
    target = None
    for since, value in ENEFG_ERF_TARGETS:
        if commissioned >= since:
            target = value
    return target


@dataclass(frozen=True)
class KpiInputs:
    """Measured energies of a period, in GJ (None when not metered)."""

    start: datetime
    end: datetime
    delivered_gj: float
    heat_pump_electricity_gj: float | None
    it_energy_gj: float | None
    facility_energy_gj: float | None


def compute_kpis(k: KpiInputs, acc: AccountingConfig, tz: ZoneInfo) -> dict[str, Any]:
    """The KPI document of a period (pure arithmetic; see docs/ACCOUNTING.md)."""
    mwh = k.delivered_gj / GJ_PER_MWH
    years = (k.end - k.start).total_seconds() / _YEAR_S
    mid = k.start + (k.end - k.start) / 2
    mid_local = mid.astimezone(tz)
    frac_year = mid_local.year + (mid_local.timetuple().tm_yday - 1) / 365.25
    factor = co2_factor(acc.co2_factors, frac_year)
    hp = k.heat_pump_electricity_gj
    out: dict[str, Any] = {
        "start": k.start.isoformat(), "end": k.end.isoformat(),
        "delivered_gj": round(k.delivered_gj, 6), "delivered_mwh": round(mwh, 6),
        "homes_heated": round(mwh / acc.homes_mwh_per_home / years, 1) if years > 0 else None,
        "homes_mwh_per_home": acc.homes_mwh_per_home,
        "co2_factor_kg_per_kwh": round(factor, 6),
        "co2_avoided_t": round(mwh * 1000 * factor / 1000, 6),
        "heat_pump_electricity_mwh": None if hp is None else round(hp / GJ_PER_MWH, 6),
        "seasonal_cop": round(k.delivered_gj / hp, 4) if hp else None,
        "it_energy_mwh": None if k.it_energy_gj is None else round(k.it_energy_gj / GJ_PER_MWH, 6),
        "facility_energy_mwh": None if k.facility_energy_gj is None else round(k.facility_energy_gj / GJ_PER_MWH, 6),
        "it_heat_recovered_share": None, "erf": None, "pue": None, "pue_enefg": None,
    }
    if k.it_energy_gj:
        # IT electricity ends up as heat; the heat pumps add their own electricity to what is delivered.
        out["it_heat_recovered_share"] = round(max(k.delivered_gj - (hp or 0.0), 0.0) / k.it_energy_gj, 6)
    if k.facility_energy_gj:
        out["erf"] = round(k.delivered_gj / k.facility_energy_gj, 6)
        if k.it_energy_gj:
            out["pue"] = round(k.facility_energy_gj / k.it_energy_gj, 6)
            # EnEfG: electricity used only to upgrade waste heat (heat pumps) is left out of PUE.
            out["pue_enefg"] = round((k.facility_energy_gj - (hp or 0.0)) / k.it_energy_gj, 6)
    return out


async def _site_gj(conn: asyncpg.Connection, point: str | None, start: datetime, end: datetime) -> float | None:
    if point is None:
        return None
    if end <= start:
        return 0.0
    return await register_energy(conn, point, _SITE_SPEC, start, end) * 0.0036


async def kpis(conn: asyncpg.Connection, cfg: HeatrecConfig, start: datetime, end: datetime,
               as_of: datetime | None = None) -> dict[str, Any]:
    """KPIs of [start, end) from the database, counted until as_of (default now) like a settlement."""
    acc = cfg.accounting
    if acc is None:
        raise AccountingError("the config has no [accounting] section (docs/CONFIG.md)")
    as_of = (as_of or datetime.now(UTC)).astimezone(UTC)
    until = max(start, min(end, as_of))  # a period not over yet: its KPIs cover what has happened
    delivered = 0.0
    for m in acc.meters:
        delivered += (await meter_energy(conn, m, start, end, as_of)).energy
    hp: float | None = None
    if acc.heat_pumps:
        hp = 0.0
        for h in acc.heat_pumps:
            hp += await heat_pump_gj(conn, h, start, end, as_of)
    k = KpiInputs(start, until, delivered, hp, await _site_gj(conn, acc.it_energy_point, start, until),
                  await _site_gj(conn, acc.facility_energy_point, start, until))
    return compute_kpis(k, acc, ZoneInfo(cfg.plant.timezone)) | {
        "period_start": start.isoformat(), "period_end": end.isoformat(), "as_of": as_of.isoformat()}
