"""Dispatch endpoints: GET /api/v1/dispatch (plan, prices, fallback), PUT (switch on/off), GET .../report (margin)."""

# No `from __future__ import annotations`: FastAPI must resolve the dependency aliases defined
# inside add_dispatch_routes, which string annotations would hide from it.
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request

from service.api.deps import NEEDS_DATABASE
from service.api.params import iso_times_only, within_span
from service.auth import Principal, Role
from service.dispatch.report import DispatchReport, margin_report
from service.dispatch.status import DispatchSetRequest, DispatchStatus, dispatch_status
from service.dispatch.task import DispatchTask

_SET_EXAMPLES = {"off": {"summary": "today's supply-temperature control, no plan", "value": {"enabled": False}},
                 "on": {"summary": "the plan constrains the heat pumps again", "value": {"enabled": True}}}


def add_dispatch_routes(app: FastAPI, require: Callable[[Role], Callable[[Request], Awaitable[Principal]]]) -> None:
    """Register the dispatch endpoints on the app (only the report needs the database)."""

    def task(request: Request) -> DispatchTask:
        t: DispatchTask | None = getattr(request.app.state.heatrec, "dispatch", None)
        if t is None:
            raise HTTPException(404, "dispatch is not enabled: add a [dispatch] section to the plant config "
                                     "(docs/CONFIG.md, docs/DISPATCH.md)")
        return t

    Viewer = Annotated[Principal, Depends(require("viewer"))]
    Operator = Annotated[Principal, Depends(require("operator"))]
    Task = Annotated[DispatchTask, Depends(task)]

    @app.get("/api/v1/dispatch", response_model=DispatchStatus, tags=["control"])
    async def get_dispatch(_: Viewer, t: Task) -> DispatchStatus:
        """The plan (steps, prices used, expected margin), the fallback in force and why, the switch (viewer)."""
        return dispatch_status(t)

    @app.put("/api/v1/dispatch", response_model=DispatchStatus, tags=["control"])
    async def put_dispatch(who: Operator, t: Task,
                           body: Annotated[DispatchSetRequest, Body(openapi_examples=_SET_EXAMPLES)]
                           ) -> DispatchStatus:
        """Switch dispatch on or off (operator); audited. Off: the controller is exactly today's."""
        await t.set_enabled(body.enabled, who.name, who.role)
        return dispatch_status(t)

    @app.get("/api/v1/dispatch/report", response_model=DispatchReport, tags=["control"], responses=NEEDS_DATABASE)
    async def dispatch_report(
        _: Viewer, request: Request,
        start: Annotated[datetime | None, Query(description="range start (ISO 8601); default end - 1 day")] = None,
        end: Annotated[datetime | None, Query(description="range end, exclusive (ISO 8601); default now")] = None,
    ) -> DispatchReport:
        """The executed plan's expected margin against the follow-demand baseline, from the stored plan (viewer).

        Also the hours the plan was applied, fell back or was off. Needs the database; an empty or inverted
        range, one outside 1990..2100 or longer than `[api] max_query_span_days` is refused with 422.
        """
        iso_times_only(request)
        t1 = _aware(end) if end is not None else datetime.now(UTC)
        t0 = _aware(start) if start is not None else t1 - timedelta(days=1)
        if not _EARLIEST <= t0 < t1 <= _LATEST:
            raise HTTPException(422, f"the range {t0.isoformat()} .. {t1.isoformat()} is empty, inverted or outside "
                                     "1990..2100: give start before end")
        within_span(request, t0, t1)
        return await margin_report(request.app.state.heatrec.db, t0, t1)


_EARLIEST, _LATEST = datetime(1990, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def _aware(t: datetime) -> datetime:
    # A time without zone is read as UTC, as everywhere in heatrec.
    return t if t.tzinfo else t.replace(tzinfo=UTC)
