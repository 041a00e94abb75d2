"""The centre's routes of a site's alarms, events and audit entries (viewer, read only), newest first, paged.

`GET /api/v1/fleet/sites/{site}/alarms`: the site's alarms that are not normal and its recent transitions;
`/events` and `/audit`: its events and audit entries. Pages go by `limit` and `before` (or `cursor`, as
the site's own audit API calls it): the `seq` of the previous page's last entry, given as `next_cursor`.
A site neither configured nor heard of is a JSON 404, as is a cursor naming no entry of the site; the
central database away is a JSON 503 with Retry-After (both by service/fleet/api.py's error handlers).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from service.api.deps import NEEDS_DATABASE, ErrorOut, require
from service.auth import Principal
from service.fleet import records_store
from service.fleet_config import SITE_PATTERN
from service.storage.database import connection

router = APIRouter(tags=["fleet"])

MAX_LIMIT = 1000
_CURSOR = r"^[1-9][0-9]{0,17}$"
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, invalid or revoked token"},
    403: {"model": ErrorOut, "description": "the token lacks the viewer role"},
    404: {"model": ErrorOut, "description": "no such site, or a cursor naming no entry of the site"},
    **NEEDS_DATABASE}


class AlarmOut(BaseModel):
    """One alarm of a site that is not normal, as the site's newest record says."""

    id: str
    source: str
    kind: str
    severity: str
    message: str
    state: str
    active: bool
    value: float | None
    since: datetime | None
    shelved_until: datetime | None
    acked_by: str | None


class TransitionOut(BaseModel):
    """One alarm state change at the site."""

    seq: int = Field(description="the centre's number of this entry (a page cursor)")
    time: datetime
    alarm_id: str
    old_state: str
    new_state: str
    value: float | None
    by_user: str | None
    message: str


class EventOut(BaseModel):
    """One service event at the site (a device connected, the database away, ...)."""

    seq: int = Field(description="the centre's number of this entry (a page cursor)")
    time: datetime
    source: str
    kind: str
    severity: str
    message: str
    data: dict[str, Any]


class AuditOut(BaseModel):
    """One audited write request at the site."""

    seq: int = Field(description="the centre's number of this entry (a page cursor)")
    time: datetime
    principal: str
    role: str
    action: str
    target: str
    requested: Any
    applied: Any
    outcome: str
    detail: str


class _Page(BaseModel):
    site: str
    next_cursor: str | None = Field(default=None, description="pass as `before` to get the next, older page")
    next: str | None = Field(default=None, description="relative URL of the next page")


class AlarmsPage(_Page):
    """The site's alarms that are not normal, and its transitions newest first (paged)."""

    active: list[AlarmOut]
    transitions: list[TransitionOut]


class EventsPage(_Page):
    """The site's events, newest first."""

    entries: list[EventOut]


class AuditPage(_Page):
    """The site's audit entries, newest first."""

    entries: list[AuditOut]


Site = Annotated[str, Path(pattern=SITE_PATTERN, description="the site's id")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"entries per page, at most {MAX_LIMIT}")]
Before = Annotated[str | None, Query(pattern=_CURSOR, description="`next_cursor` of the previous page")]


Viewer = Annotated[Principal, Depends(require("viewer"))]


def _site(request: Request, site: str) -> str:
    """The site, if central.toml lists it (or, listing none, the centre has heard of it); else 404."""
    state = request.app.state.heatrec
    if state.config.sites is not None:
        known = {s.id for s in state.config.sites}
    else:
        known = {v.site for v in state.fleet.views()}
    if site not in known:
        raise HTTPException(404, f"no site '{site}': GET /api/v1/fleet/sites lists the fleet's sites")
    return site


async def _read(request: Request, site: str, limit: int, before: str | None, cursor: str | None,
                table: str) -> tuple[list[dict[str, Any]], dict[str, str | None], list[dict[str, Any]]]:
    """One page of the site's rows of `table`, the next page's links, and (for alarms) the alarms not normal."""
    _site(request, site)
    start = before or cursor
    async with connection(request.app.state.heatrec.pool) as conn:
        rows = await records_store.page(conn, table, site, limit, int(start) if start else None)
        active = await records_store.active_alarms(conn, site) if table == "fleet_alarm_events" else []
    last = str(rows[-1]["seq"]) if len(rows) == limit else None
    links: dict[str, str | None] = {"next_cursor": last, "next": None}
    if last is not None:
        query = request.url.remove_query_params("cursor").include_query_params(before=last).query
        links["next"] = f"{request.url.path}?{query}"
    return rows, links, active


@router.get("/api/v1/fleet/sites/{site}/alarms", response_model=AlarmsPage, responses=_ERRORS)
async def site_alarms(request: Request, site: Site, _: Viewer, limit: Limit = 100, before: Before = None,
                      cursor: Before = None) -> AlarmsPage:
    """A site's alarms that are not normal, and its alarm transitions newest first, paged (viewer)."""
    rows, links, active = await _read(request, site, limit, before, cursor, "fleet_alarm_events")
    return AlarmsPage(site=site, active=[AlarmOut(**a) for a in active],
                      transitions=[TransitionOut(**r) for r in rows], **links)


@router.get("/api/v1/fleet/sites/{site}/events", response_model=EventsPage, responses=_ERRORS)
async def site_events(request: Request, site: Site, _: Viewer, limit: Limit = 100, before: Before = None,
                      cursor: Before = None) -> EventsPage:
    """A site's service events, newest first, paged (viewer)."""
    rows, links, _active = await _read(request, site, limit, before, cursor, "fleet_events")
    return EventsPage(site=site, entries=[EventOut(**r) for r in rows], **links)


@router.get("/api/v1/fleet/sites/{site}/audit", response_model=AuditPage, responses=_ERRORS)
async def site_audit(request: Request, site: Site, _: Viewer, limit: Limit = 100, before: Before = None,
                     cursor: Before = None) -> AuditPage:
    """A site's audited write requests, newest first, paged (viewer)."""
    rows, links, _active = await _read(request, site, limit, before, cursor, "fleet_audit")
    return AuditPage(site=site, entries=[AuditOut(**r) for r in rows], **links)
