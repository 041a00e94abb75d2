"""What the console's pages show, computed from the service's own objects (no HTTP round trip)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.api.state import ServiceState
from service.errors import StorageUnavailable
from service.model import Sample

# The trend page's zoom: label -> span (the range buttons, in this order).
RANGES: dict[str, timedelta] = {
    "5m": timedelta(minutes=5), "15m": timedelta(minutes=15), "1h": timedelta(hours=1), "6h": timedelta(hours=6),
    "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
TREND_W, TREND_H, TREND_PAD = 800.0, 260.0, 8.0


def fmt(value: float | None) -> str:
    """A value as the pages show it (console.js formats live values the same way)."""
    if value is None or not math.isfinite(value):
        return "—"
    if abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass(frozen=True)
class PointRow:
    """One point on the overview."""

    id: str
    name: str
    unit: str
    kind: str
    writable: bool
    value: str
    quality: str  # GOOD, UNCERTAIN, BAD, STALE, or NONE before the first sample
    time: str


def point_rows(state: ServiceState) -> dict[str, list[PointRow]]:
    """Every configured point with its latest sample, by device."""
    latest: dict[str, Sample] = state.bus.latest
    out: dict[str, list[PointRow]] = {}
    for device in state.config.devices:
        rows = out.setdefault(device.id, [])
        for p in device.points:
            pid = f"{device.id}.{p.id}"
            s = latest.get(pid)
            rows.append(PointRow(pid, p.id, p.unit, p.kind, p.writable, fmt(s.value) if s else "—",
                                 s.quality.name if s else "NONE",
                                 f"{s.source_time:%H:%M:%S}" if s else ""))
    return out


def point_unit(state: ServiceState, pid: str) -> str | None:
    """The unit of a configured point, or None when there is no such point."""
    for device in state.config.devices:
        for p in device.points:
            if f"{device.id}.{p.id}" == pid:
                return p.unit
    return None


def outage_text(state: ServiceState, exc: StorageUnavailable) -> str:
    """Why a history page cannot show its data, and what still works (as the API's 503 says it)."""
    db = state.db
    retry = db.retry_after_s() if not db.up else exc.retry_after_s
    since = db.stats.since if not db.up else None
    why = f"since {since:%Y-%m-%d %H:%M:%SZ}" if since is not None else "at the moment"
    return (f"This page needs the database, which is unavailable {why}. Live values, control, current alarms "
            f"and health work without it; try again in {retry} s. The cause is on the health page.")


@dataclass(frozen=True)
class Trend:
    """An SVG polyline of a point's buckets, with its extremes for the axis labels."""

    points: str  # the polyline's "x,y x,y ..."
    low: float | None
    high: float | None
    last: float | None
    count: int


def trend(start: datetime, end: datetime, buckets: list[tuple[datetime, float | None]]) -> Trend:
    """Scale (time, value) buckets into the SVG's box; a gap (no value) is left out of the line."""
    values = [(t, v) for t, v in buckets if v is not None and math.isfinite(v)]
    if not values:
        return Trend("", None, None, None, 0)
    low, high = min(v for _, v in values), max(v for _, v in values)
    span_v = (high - low) or 1.0  # a flat line sits in the middle
    span_t = (end - start).total_seconds() or 1.0
    w, h, pad = TREND_W - 2 * TREND_PAD, TREND_H - 2 * TREND_PAD, TREND_PAD
    pts = []
    for t, v in values:
        x = pad + w * min(max((t - start).total_seconds() / span_t, 0.0), 1.0)
        y = pad + h * (1 - ((v - low) / span_v if high != low else 0.5))
        pts.append(f"{x:.1f},{y:.1f}")
    return Trend(" ".join(pts), low, high, values[-1][1], len(values))
