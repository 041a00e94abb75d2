"""The dispatch margin report: the executed plan's expected margin against the follow-demand baseline, from storage.

It reads the records `service/dispatch/plan_points.py` publishes (`dispatch.step_status`, the expected and the
baseline step margins). A record is in force from its time until the next record or the end of its quarter
hour, whichever comes first; each counts with that share of its step, so a replan that changed the step
half-way counts half of each. A record belongs to the period its time falls in. The margins are summed over
the steps the plan was applied in (status optimal or kept_previous, dispatch on): the baseline's over the same
steps, so the difference is what following the plan is expected to have earned over today's control.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from service.dispatch.optimiser import CENT
from service.dispatch.plan_points import APPLIED, BASELINE, EXPECTED, FALLBACK, STATUS, STEP, floor_step
from service.storage.database import Database, connection

_US_PER_STEP = Decimal(int(STEP.total_seconds() * 1_000_000))
_HOURS_PER_STEP = Decimal(STEP.total_seconds()) / 3600


class DispatchReport(BaseModel):
    """What dispatch is expected to have earned over [start, end), against the follow-demand baseline."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z", "records": 97,
        "hours_applied": 22.5, "hours_fallback": 1.5, "hours_off": 0.0, "expected_margin_dkk": "1834.20",
        "baseline_margin_dkk": "1402.75", "difference_dkk": "431.45", "ratio": "1.3076"}]})
    start: datetime
    end: datetime
    records: int = Field(description="stored plan records in the period (one per step, more after a replan)")
    hours_applied: float = Field(description="hours the plan's step was handed to the controller")
    hours_fallback: float = Field(description="hours of a fallback: follow-demand (today's control) or the safe plan")
    hours_off: float = Field(description="hours dispatch was switched off")
    expected_margin_dkk: Decimal = Field(description="expected margin of the executed plan over the applied hours")
    baseline_margin_dkk: Decimal = Field(description="the follow-demand baseline's margin over the same hours")
    difference_dkk: Decimal = Field(description="expected - baseline")
    ratio: Decimal | None = Field(description="expected / baseline (4 decimals); null when the baseline is 0")


def _money(value: float) -> Decimal:
    # The stored values are cents written as floats: their shortest repr gives the cents back exactly.
    return Decimal(repr(value)).quantize(CENT)


async def margin_report(db: Database | asyncpg.Pool, start: datetime, end: datetime) -> DispatchReport:
    """Sum the stored plan records over [start, end); database errors as storage errors (503 while it is away)."""
    async with connection(db) as conn:
        # Up to a step past the end: the record that ends the last one in the period lies within its step.
        rows = await conn.fetch(
            """SELECT p.id, s.time, s.value FROM samples s JOIN points p ON p.key = s.point_key
               WHERE p.id = ANY($1::text[]) AND s.time >= $2 AND s.time < $3 AND s.value IS NOT NULL
               ORDER BY s.time""",
            [STATUS, EXPECTED, BASELINE], start, end + STEP)
    records: dict[datetime, dict[str, float]] = {}
    for r in rows:
        records.setdefault(r["time"], {})[r["id"]] = float(r["value"])
    times = [t for t in sorted(records) if STATUS in records[t]]
    hours = {"applied": Decimal(0), "fallback": Decimal(0), "off": Decimal(0)}
    expected = baseline = Decimal(0)
    counted = 0
    for i, t in enumerate(times):
        if t >= end:
            break
        until = floor_step(t) + STEP
        if i + 1 < len(times):
            until = min(until, times[i + 1])
        share = Decimal((until - t) // timedelta(microseconds=1)) / _US_PER_STEP
        values = records[t]
        status = int(values[STATUS])
        counted += 1
        if status in APPLIED:
            hours["applied"] += share * _HOURS_PER_STEP
            expected += _money(values.get(EXPECTED, 0.0)) * share
            baseline += _money(values.get(BASELINE, 0.0)) * share
        elif status in FALLBACK:
            hours["fallback"] += share * _HOURS_PER_STEP
        else:
            hours["off"] += share * _HOURS_PER_STEP
    expected, baseline = expected.quantize(CENT), baseline.quantize(CENT)
    ratio = (expected / baseline).quantize(Decimal("0.0001")) if baseline != 0 else None
    return DispatchReport(start=start, end=end, records=counted, hours_applied=round(float(hours["applied"]), 4),
                          hours_fallback=round(float(hours["fallback"]), 4), hours_off=round(float(hours["off"]), 4),
                          expected_margin_dkk=expected, baseline_margin_dkk=baseline,
                          difference_dkk=expected - baseline, ratio=ratio)
