"""History of one point: time_bucket aggregates over a time range, bounded in size (used by the API and accounting)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg

from service.errors import InvalidRequest, NotFound
from service.storage.database import translated

Aggregate = Literal["avg", "min", "max", "last"]
AGGREGATES: dict[str, str] = {"avg": "avg(value)", "min": "min(value)", "max": "max(value)",
                              "last": "last(value, time)"}
MAX_BUCKETS = 10_000
_STEP = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class HistoryError(InvalidRequest, ValueError):
    """The request cannot be answered as asked (bad range, step or aggregate); the message says why."""


class UnknownPoint(NotFound):
    """No point with this id is known to the database."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One time bucket: its start, the aggregated value and how many readings it holds."""

    time: datetime
    value: float | None
    count: int


def parse_step(text: str) -> timedelta:
    """'60', '60s', '5m', '1h', '1d', '500ms' → timedelta; HistoryError otherwise."""
    m = _STEP.match(text)
    if not m:
        raise HistoryError(f"step '{text}' is not a duration: use seconds (60) or 500ms, 30s, 5m, 1h, 1d")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0:
        raise HistoryError("step must be positive")
    try:
        # Finer buckets than 1 ms mean nothing for plant data.
        return max(timedelta(seconds=seconds), timedelta(milliseconds=1))
    except OverflowError as err:
        raise HistoryError(f"step '{text}' is too large") from err


def default_step(start: datetime, end: datetime, buckets: int = 500) -> timedelta:
    """A whole-second step that gives about `buckets` buckets over the range."""
    return timedelta(seconds=max(1, -(-int((end - start).total_seconds()) // buckets)))


def bounded_step(start: datetime, end: datetime, step: timedelta) -> timedelta:
    """`step`, or the smallest whole-millisecond step that keeps [start, end) within MAX_BUCKETS buckets."""
    if (end - start) / step <= MAX_BUCKETS:
        return step
    ms = -(-(end - start) // (timedelta(milliseconds=1) * MAX_BUCKETS))
    return timedelta(milliseconds=ms)


async def point_history(conn: asyncpg.Connection | asyncpg.Pool, point_id: str, start: datetime, end: datetime,
                        step: timedelta, agg: str = "avg", *, site: str | None = None) -> list[Bucket]:
    """Buckets over [start, end) for one point (see `_point_history`); database errors as storage errors.

    `site`: a point of that site in a central store (`fleet_points`), not one of this plant's own.
    """
    async with translated():
        return await _point_history(conn, point_id, start, end, step, agg, site)


async def _point_history(conn: asyncpg.Connection | asyncpg.Pool, point_id: str, start: datetime, end: datetime,
                         step: timedelta, agg: str, site: str | None = None) -> list[Bucket]:
    """Buckets over [start, end) for one point; readings without value (BAD, STALE) are left out.

    The result is bounded: a step that would give more than MAX_BUCKETS buckets is coarsened
    (see `bounded_step`, which callers use to report the step actually applied).
    """
    if agg not in AGGREGATES:
        raise HistoryError(f"agg '{agg}' is not one of {', '.join(AGGREGATES)}")
    if start.tzinfo is None or end.tzinfo is None:
        raise HistoryError("start and end need a time zone (e.g. 2026-01-01T00:00:00Z)")
    if end <= start:
        return []  # an empty or inverted range holds no readings (not an error: each bound may be defaulted)
    if step <= timedelta(0):
        raise HistoryError("step must be positive")
    step = bounded_step(start, end, step)
    if site is None:
        key = await conn.fetchval("SELECT key FROM points WHERE id = $1", point_id)
    else:
        key = await conn.fetchval("SELECT key FROM fleet_points WHERE site = $1 AND id = $2", site, point_id)
    if key is None:
        raise UnknownPoint(f"no point '{point_id}'" + (f" at site '{site}'" if site is not None else ""))
    # The bucket origin is `start`, so buckets begin where the caller's range does.
    rows = await conn.fetch(
        f"""SELECT time_bucket($1::interval, time, $3::timestamptz) AS t, {AGGREGATES[agg]} AS v, count(*) AS n
            FROM samples
            WHERE point_key = $2 AND time >= $3 AND time < $4 AND value IS NOT NULL
            GROUP BY t ORDER BY t""",
        step, key, start, end)
    return [Bucket(r["t"], r["v"], r["n"]) for r in rows]
