"""What the centre reads back from the central database per site: points, history and KPIs (docs/FLEET.md).

A site's points live in `fleet_points (key, site, id)`; everything here goes by that key, then uses the
site's own code: the history buckets of service/storage/history.py, and for KPIs the register arithmetic
of service/accounting/registers.py and the KPI document of service/accounting/kpis.py. The centre has no
[accounting] of its own: central.toml's `[[sites]]` names each site's heat-meter and electricity registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from service.accounting.engine import margin_for
from service.accounting.kpis import GJ_PER_MWH, KpiInputs, compute_kpis
from service.accounting.registers import Reading, RegisterSpec, register_steps, tally
from service.accounting.store import fetch_register_by_key
from service.config import AccountingConfig
from service.errors import NotFound
from service.fleet_config import CentralSite

# Registers are counted as the site counts its IT and facility registers: monotonic, no plausibility limit
# (the centre does not know each meter's largest power), a gap beyond 15 minutes flagged as such.
HEAT_SPEC = RegisterSpec(max_rate_per_s=1e9, gap_s=900.0, resolution=1e-6)    # GJ
ELECTRICITY_SPEC = RegisterSpec(max_rate_per_s=1e9, gap_s=900.0, resolution=0.1)  # kWh
GJ_PER_KWH = 0.0036


class UnknownSite(NotFound):
    """No site of this id is configured or known to the central store."""


class UnknownSitePoint(NotFound):
    """The site has no point of this id in the central store."""


@dataclass(frozen=True)
class SitePoint:
    """One of a site's points as the centre knows it: its latest reading and how many it holds."""

    id: str
    value: float | None
    quality: str | None
    time: datetime | None


async def site_points(conn: asyncpg.Connection, site: str) -> list[SitePoint]:
    """Every point the centre holds of `site`, with its newest reading (one index probe per point)."""
    rows = await conn.fetch(
        """SELECT p.id, s.value, q.name AS quality, s.time
           FROM fleet_points p
           LEFT JOIN LATERAL (SELECT value, quality, time FROM samples WHERE point_key = p.key
                              ORDER BY time DESC LIMIT 1) s ON true
           LEFT JOIN quality_names q ON q.quality = s.quality
           WHERE p.site = $1 ORDER BY p.id""", site)
    return [SitePoint(r["id"], r["value"], r["quality"], r["time"]) for r in rows]


async def point_key(conn: asyncpg.Connection, site: str, point: str) -> int | None:
    """The key of a site's point in `samples`, or None."""
    key: int | None = await conn.fetchval("SELECT key FROM fleet_points WHERE site = $1 AND id = $2", site, point)
    return key


async def _readings(conn: asyncpg.Connection, key: int, start: datetime, end: datetime,
                    spec: RegisterSpec) -> list[Reading]:
    """Good readings of a register in [start, end] and the two nearest either side (as the site's fetch_register)."""
    return await fetch_register_by_key(conn, key, start, end, margin_for(spec.gap_s))


async def register_increase(conn: asyncpg.Connection, site: str, point: str, spec: RegisterSpec,
                            start: datetime, end: datetime) -> float:
    """A site's register's increase over [start, end) in its own unit (0 for a point not yet heard of)."""
    if end <= start:
        return 0.0
    key = await point_key(conn, site, point)
    if key is None:
        return 0.0
    return tally(register_steps(await _readings(conn, key, start, end, spec), spec), start, end).energy


async def site_inputs(conn: asyncpg.Connection, site: CentralSite, start: datetime, end: datetime) -> KpiInputs:
    """The measured energies of one site over [start, end), GJ (None for what central.toml names no point for)."""
    delivered = 0.0
    for p in site.heat_meter_points:
        delivered += await register_increase(conn, site.id, p, HEAT_SPEC, start, end)

    async def kwh(points: list[str]) -> float:
        total = 0.0
        for p in points:
            total += await register_increase(conn, site.id, p, ELECTRICITY_SPEC, start, end)
        return total * GJ_PER_KWH

    hp = await kwh(site.heat_pump_points) if site.heat_pump_points else None
    it = await kwh([site.it_energy_point]) if site.it_energy_point else None
    fac = await kwh([site.facility_energy_point]) if site.facility_energy_point else None
    return KpiInputs(start, end, delivered, hp, it, fac)


def _until(start: datetime, end: datetime, as_of: datetime | None) -> datetime:
    # A period not over yet: its KPIs cover what has happened (as the site's kpis() does).
    now = (as_of or datetime.now(UTC)).astimezone(UTC)
    return max(start, min(end, now))


async def site_kpis(conn: asyncpg.Connection, site: CentralSite, start: datetime, end: datetime,
                    as_of: datetime | None = None) -> dict[str, Any]:
    """One site's KPI document over [start, end): the site's own compute_kpis on what the centre holds."""
    until = _until(start, end, as_of)
    k = await site_inputs(conn, site, start, until)
    acc = AccountingConfig(homes_mwh_per_home=site.homes_mwh_per_home)
    return {"site": site.id, "metered": bool(site.heat_meter_points)} | compute_kpis(k, acc, ZoneInfo(site.timezone))


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 6) if known else None


def fleet_totals(docs: list[dict[str, Any]], start: datetime, end: datetime) -> dict[str, Any]:
    """The fleet's KPIs from its sites' documents: energies, homes and CO2 summed, ratios of the sums.

    The energy reuse factor is that of the sites that meter their facility (a site without that meter
    cannot say how much of its energy was reused), as EnEfG asks of each data centre.
    """
    metered = [d for d in docs if d["metered"]]
    with_facility = [d for d in metered if d["facility_energy_mwh"]]
    facility = sum(d["facility_energy_mwh"] for d in with_facility)
    delivered_reused = sum(d["delivered_mwh"] for d in with_facility)
    delivered = sum(d["delivered_mwh"] for d in metered)
    return {
        "start": start.isoformat(), "end": end.isoformat(), "sites": len(docs), "metered_sites": len(metered),
        "delivered_mwh": round(delivered, 6), "delivered_gj": round(delivered * GJ_PER_MWH, 6),
        "homes_heated": _sum([d["homes_heated"] for d in metered]),
        "co2_avoided_t": round(sum(d["co2_avoided_t"] for d in metered), 6),
        "heat_pump_electricity_mwh": _sum([d["heat_pump_electricity_mwh"] for d in metered]),
        "it_energy_mwh": _sum([d["it_energy_mwh"] for d in metered]),
        "facility_energy_mwh": _sum([d["facility_energy_mwh"] for d in metered]),
        "erf": round(delivered_reused / facility, 6) if facility else None,
    }
