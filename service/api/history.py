"""GET /api/v1/points/{id}/history: aggregated history of one point (viewer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict

from service.api.deps import ErrorOut, require
from service.api.params import iso_times_only, within_span
from service.auth import Principal
from service.storage.history import (
    bounded_step,
    default_step,
    parse_step,
    point_history,
)

router = APIRouter(tags=["points"])
# Positive durations only, at most 9 integer digits, so the published schema already rejects "", "0" and overflow.
# Spaces only around the parts: a tab or newline, a control character, is refused in any parameter (guards.py).
STEP_PATTERN = r"^ *(?:0*[1-9]\d{0,8}(?:\.\d+)?|0*\.\d*[1-9]\d*|0*[0-9]\.\d*[1-9]\d*) *(?:ms|s|m|h|d)? *$"


class HistoryBucket(BaseModel):
    """One bucket: start time, aggregated value, readings in it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"time": "2026-03-01T12:00:00Z", "value": 70.4,
                                                               "count": 12}]})
    time: datetime
    value: float | None
    count: int


class HistoryOut(BaseModel):
    """A point's history over [start, end) in buckets of `step_s` seconds."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "point": "hp1.supply_temperature", "agg": "avg", "start": "2026-03-01T12:00:00Z",
        "end": "2026-03-01T12:02:00Z", "step_s": 60.0,
        "buckets": [{"time": "2026-03-01T12:00:00Z", "value": 70.4, "count": 12},
                    {"time": "2026-03-01T12:01:00Z", "value": 70.9, "count": 12}]}]})
    point: str
    agg: str
    start: datetime
    end: datetime
    step_s: float
    buckets: list[HistoryBucket]


def _aware(t: datetime) -> datetime:
    # A time without zone is read as UTC, as everywhere in heatrec.
    return t if t.tzinfo else t.replace(tzinfo=UTC)


_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "missing, invalid or revoked token"},
    403: {"model": ErrorOut, "description": "the token lacks the viewer role"},
    404: {"model": ErrorOut, "description": "no point with this id"},
    422: {"model": ErrorOut, "description": "bad start, end, step or agg, or a range longer than [api] "
                                            "max_query_span_days"},
    429: {"model": ErrorOut, "description": "too many failed authentications from this client"},
    503: {"model": ErrorOut, "description": "the database is unavailable"},
}


@router.get("/api/v1/points/{point_id}/history", response_model=HistoryOut, responses=_ERRORS)
async def history(
    point_id: str,
    request: Request,
    _: Annotated[Principal, Depends(require("viewer"))],
    start: Annotated[datetime | None, Query(description="range start (ISO 8601); default end - 1 h")] = None,
    end: Annotated[datetime | None, Query(description="range end, exclusive (ISO 8601); default now")] = None,
    step: Annotated[str | None, Query(description="bucket width: seconds, or 500ms, 30s, 5m, 1h, 1d; "
                                                   "default about 500 buckets", pattern=STEP_PATTERN)] = None,
    agg: Annotated[Literal["avg", "min", "max", "last"], Query(description="aggregate per bucket")] = "avg",
) -> HistoryOut:
    """Time-bucketed avg/min/max/last of one point's readings (viewer).

    At most 10,000 buckets: a finer step is coarsened, and `step_s` in the answer is the step applied.
    A range longer than `[api] max_query_span_days` (366 days by default) is refused with 422.
    """
    iso_times_only(request)  # the schema says date-time: "start=0.5" is refused, not read as 1970
    t1 = _aware(end) if end else datetime.now(UTC)
    t0 = _aware(start) if start else t1 - timedelta(hours=1)
    within_span(request, t0, t1)  # [api] max_query_span_days: the rows read grow with the range
    # HistoryError 422, UnknownPoint 404, a bucket beyond PostgreSQL's range 422, database away 503.
    width = parse_step(step) if step is not None else default_step(t0, t1)
    if t1 >= t0:
        width = bounded_step(t0, t1, width)
    rows = await point_history(request.app.state.heatrec.pool, point_id, t0, t1, width, agg)
    return HistoryOut(point=point_id, agg=agg, start=t0, end=t1, step_s=width.total_seconds(),
                      buckets=[HistoryBucket(time=b.time, value=b.value, count=b.count) for b in rows])
