"""The centre's read-back routes: a site's points, a point's history, per-site and fleet KPIs (viewer).

History answers as the site's `GET /api/v1/points/{id}/history` does (the same buckets, step and
aggregates, service/storage/history.py); KPIs are the site's KPI document (service/accounting/kpis.py)
over the registers central.toml's `[[sites]]` names. Unknown site or point: 404; a bad or too long
range: 422; the central database away: 503 with Retry-After.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel

from service.api.deps import NEEDS_DATABASE, ErrorOut, require
from service.api.history import STEP_PATTERN, HistoryBucket, HistoryOut
from service.api.params import iso_times_only, within_span
from service.auth import Principal
from service.fleet import readings
from service.fleet_config import CentralSite
from service.storage.database import connection
from service.storage.history import bounded_step, default_step, parse_step, point_history

router = APIRouter(tags=["fleet"])
Viewer = Annotated[Principal, Depends(require("viewer"))]
_EARLIEST, _LATEST = datetime(1990, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "missing, invalid or revoked token"},
    403: {"model": ErrorOut, "description": "the token lacks the viewer role"},
    404: {"model": ErrorOut, "description": "no such site, or no such point at the site"},
    422: {"model": ErrorOut, "description": "bad start, end, step or agg: end before start, outside 1990..2100, "
                                            "or longer than [api] max_query_span_days"},
    **NEEDS_DATABASE}


class SitePointOut(BaseModel):
    """One of a site's points as the centre holds it, with its newest reading."""

    id: str
    value: float | None
    quality: str | None
    time: datetime | None


class SitePointsOut(BaseModel):
    """Every point the centre holds of a site."""

    site: str
    points: list[SitePointOut]


def site_of(request: Request, site: str) -> CentralSite:
    """The site's central.toml entry (a default one for a site heard of when central.toml lists none); 404."""
    state = request.app.state.heatrec
    for s in state.config.sites or []:
        if s.id == site:
            return s
    if state.config.sites is None and site in {v.site for v in state.fleet.views()}:
        return CentralSite(id=site)
    raise HTTPException(404, f"no site '{site}': GET /api/v1/fleet/sites lists the fleet's sites")


def known_sites(request: Request) -> list[CentralSite]:
    """Every site the centre shows, configured or (without [[sites]]) heard of."""
    state = request.app.state.heatrec
    if state.config.sites is not None:
        return list(state.config.sites)
    return [CentralSite(id=v.site) for v in state.fleet.views()]


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # a time without zone is UTC, as everywhere in heatrec


def time_range(request: Request, start: datetime | None, end: datetime | None,
               default: timedelta) -> tuple[datetime, datetime]:
    """[start, end) from the query (end default now, start default end - default); 422 when it is bad."""
    iso_times_only(request)
    t1 = _aware(end) if end else datetime.now(UTC).replace(microsecond=0)
    t0 = _aware(start) if start else t1 - default
    for name, t in (("start", t0), ("end", t1)):
        if not _EARLIEST <= t <= _LATEST:
            raise HTTPException(422, f"{name}: {t.isoformat()} is outside 1990-01-01 .. 2100-01-01")
    if t1 < t0:
        raise HTTPException(422, f"end {t1.isoformat()} is before start {t0.isoformat()}")
    within_span(request, t0, t1)
    return t0, t1


@router.get("/api/v1/fleet/sites/{site}/points", response_model=SitePointsOut, responses=_ERRORS)
async def points(site: str, request: Request, _: Viewer) -> SitePointsOut:
    """Every point the centre holds of the site, with its newest reading (viewer)."""
    s = site_of(request, site)
    async with connection(request.app.state.heatrec.pool) as conn:
        rows = await readings.site_points(conn, s.id)
    return SitePointsOut(site=s.id, points=[SitePointOut(id=p.id, value=p.value, quality=p.quality, time=p.time)
                                            for p in rows])


@router.get("/api/v1/fleet/sites/{site}/points/{point_id}/history", response_model=HistoryOut, responses=_ERRORS)
async def history(
    site: str, point_id: str, request: Request, _: Viewer,
    start: Annotated[datetime | None, Query(description="range start (ISO 8601); default end - 1 h")] = None,
    end: Annotated[datetime | None, Query(description="range end, exclusive (ISO 8601); default now")] = None,
    step: Annotated[str | None, Query(description="bucket width: seconds, or 500ms, 30s, 5m, 1h, 1d; "
                                                   "default about 500 buckets", pattern=STEP_PATTERN)] = None,
    agg: Annotated[Literal["avg", "min", "max", "last"], Query(description="aggregate per bucket")] = "avg",
) -> HistoryOut:
    """Time-bucketed avg/min/max/last of one of the site's points, as the site's own history route (viewer)."""
    s = site_of(request, site)
    t0, t1 = time_range(request, start, end, timedelta(hours=1))
    width = bounded_step(t0, t1, parse_step(step) if step is not None else default_step(t0, t1))
    rows = await point_history(request.app.state.heatrec.pool, point_id, t0, t1, width, agg, site=s.id)
    return HistoryOut(point=point_id, agg=agg, start=t0, end=t1, step_s=width.total_seconds(),
                      buckets=[HistoryBucket(time=b.time, value=b.value, count=b.count) for b in rows])


@router.get("/api/v1/fleet/sites/{site}/kpis", responses=_ERRORS)
async def site_kpis(site: str, request: Request, _: Viewer, start: datetime | None = None,
                    end: datetime | None = None) -> dict[str, Any]:
    """The site's heat delivered, homes heated, CO2 avoided, ERF, PUE over [start, end) (viewer; default 30 days).

    Computed as the site computes them, from the registers central.toml's `[[sites]]` names
    (`metered: false` when it names no heat meter).
    """
    s = site_of(request, site)
    t0, t1 = time_range(request, start, end, timedelta(days=30))
    async with connection(request.app.state.heatrec.pool) as conn:
        return await readings.site_kpis(conn, s, t0, t1)


@router.get("/api/v1/fleet/kpis", responses=_ERRORS)
async def fleet_kpis(request: Request, _: Viewer, start: datetime | None = None,
                     end: datetime | None = None) -> dict[str, Any]:
    """The fleet's KPIs over [start, end): every site's, and their totals (viewer; default the last 30 days)."""
    t0, t1 = time_range(request, start, end, timedelta(days=30))
    async with connection(request.app.state.heatrec.pool) as conn:
        docs = [await readings.site_kpis(conn, s, t0, t1) for s in known_sites(request)]
    return {"fleet": readings.fleet_totals(docs, t0, t1), "sites": docs}
