"""The dispatch plan over time: the step in force published on the sample bus as the plant's own points.

Each time the step in force changes, and at every new step, the task publishes one record: samples of the
points below, all at the same source time, the time from which the record is in force (the step's start, or
the moment a replan changed the step within it). They take the one write path (SampleBus → SampleWriter →
TimescaleDB, spooled while the database is away), so Grafana shows plan against actual and the margin
report (`service/dispatch/report.py`) sums them. Times are the plan's (price) time: in a compressed run
(`step_s` below 900) that is the replayed price day, not the wall clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from service.bus import SampleSink
from service.dispatch.optimiser import Inputs, Plan, Step, follow_demand_steps, margin_of
from service.model import Quality, Sample

PREFIX = "dispatch"  # the points' "device" in the point registry
STATUS = f"{PREFIX}.step_status"
PLANNED_HEAT = f"{PREFIX}.planned_heat_kw"
PRICE = f"{PREFIX}.electricity_price_dkk_per_mwh"
EXPECTED = f"{PREFIX}.expected_step_margin_dkk"
BASELINE = f"{PREFIX}.baseline_step_margin_dkk"
# dispatch.step_status: what the plant did in the step. Applied: the plan's step was handed to the controller.
STATUS_CODES = {"off": 0, "optimal": 1, "kept_previous": 2, "follow_demand": 3, "safe": 4}
APPLIED = (STATUS_CODES["optimal"], STATUS_CODES["kept_previous"])
FALLBACK = (STATUS_CODES["follow_demand"], STATUS_CODES["safe"])
STEP = timedelta(minutes=15)  # a plan step in price time


def unit_heat(unit: str) -> str:
    """The point of one heat pump's (or set's) planned heat output, kW."""
    return f"{PREFIX}.{unit}.planned_heat_kw"


def unit_on(unit: str) -> str:
    """The point of how many pumps of a unit the plan runs (0/1 for a single pump)."""
    return f"{PREFIX}.{unit}.planned_on"


def floor_step(t: datetime) -> datetime:
    """The start of the quarter hour holding `t` (UTC)."""
    t = t.astimezone(UTC)
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


def step_inputs(inputs: Inputs, t: int) -> Inputs:
    """The inputs of step `t` alone, so the core's `margin_of` prices one step."""
    def one(seq: Sequence[float] | None) -> tuple[float, ...] | None:
        return None if seq is None else (seq[t],)

    prices = inputs.electricity_dkk_per_kwh
    return replace(inputs, start=inputs.start + timedelta(seconds=inputs.step_s * t),
                   electricity_dkk_per_kwh=None if prices is None else (prices[t],),
                   it_heat_kw=(inputs.it_heat_kw[t],), demand_kw=(inputs.demand_kw[t],),
                   dry_cooler_kw=(inputs.dry_cooler_kw[t],), direct_exchange_kw=one(inputs.direct_exchange_kw),
                   units=tuple(replace(u, cop=(u.cop[t],)) for u in inputs.units))


def was_on(inputs: Inputs) -> list[int]:
    """Pumps running before the first step, as the optimiser counts them for starts."""
    return [min(int(u.was_on), u.count) if u.available else 0 for u in inputs.units]


def step_margin(inputs: Inputs, t: int, step: Step, before: Sequence[int]) -> Decimal:
    """The margin of one step (at the inputs' step `t`), starts counted from the pumps running `before` it."""
    return margin_of(step_inputs(inputs, t), [step], before)


@dataclass(frozen=True)
class Record:
    """One record: the step it belongs to and the value of each point."""

    step_start: datetime
    values: dict[str, float]


def step_record(plan: Plan | None, inputs: Inputs | None, index: int | None, enabled: bool, now: datetime,
                baseline: tuple[Step, ...] | None = None) -> Record | None:
    """What the plant runs now (`index`: the plan step in force), as point values; None before any plan."""
    if plan is None:
        return None
    step = plan.steps[index] if index is not None else None
    status = "off" if not enabled else plan.status if step is not None else "follow_demand"
    start = step.start if step is not None else floor_step(now)
    values: dict[str, float] = {STATUS: float(STATUS_CODES[status])}
    if step is not None:
        values[PLANNED_HEAT] = round(sum(step.heat_kw), 3)
        for u, heat, on in zip(plan.unit_ids, step.heat_kw, step.on, strict=True):
            values[unit_heat(u)] = round(heat, 3)
            values[unit_on(u)] = float(on)
    if inputs is None or inputs.electricity_dkk_per_kwh is None:
        return Record(start, values)
    t = round((start - inputs.start).total_seconds() / inputs.step_s)
    if not 0 <= t < min(inputs.steps, len(inputs.electricity_dkk_per_kwh)):
        return Record(start, values)
    values[PRICE] = float(inputs.electricity_dkk_per_kwh[t] * 1000)
    if step is not None and plan.status in ("optimal", "kept_previous"):
        before = list(plan.steps[index - 1].on) if index else was_on(inputs)
        values[EXPECTED] = float(step_margin(inputs, t, step, before))
    base = baseline if baseline is not None else follow_demand_steps(inputs)
    before = list(base[t - 1].on) if t else was_on(inputs)
    values[BASELINE] = float(step_margin(inputs, t, base[t], before))
    return Record(start, values)


class PlanPublisher:
    """Publishes a record when the step in force (or what is known of it) changes, and at every new step."""

    def __init__(self, sink: SampleSink) -> None:
        self._sink = sink
        self._last: Record | None = None
        self._last_time: datetime | None = None
        self._baseline: tuple[Inputs, tuple[Step, ...]] | None = None
        self.records = 0

    def baseline(self, inputs: Inputs | None) -> tuple[Step, ...] | None:
        """The follow-demand baseline of these inputs (computed once per solve)."""
        if inputs is None:
            return None
        if self._baseline is None or self._baseline[0] is not inputs:
            self._baseline = (inputs, follow_demand_steps(inputs))
        return self._baseline[1]

    def observe(self, plan: Plan | None, inputs: Inputs | None, index: int | None, enabled: bool,
                now: datetime, received: datetime) -> list[Sample]:
        """Publish the record of the step in force at plan time `now` if it is new; returns what was published."""
        rec = step_record(plan, inputs, index, enabled, now, self.baseline(inputs))
        last, last_time = self._last, self._last_time
        if rec is None or rec == last:
            return []
        if last is not None and last_time is not None and rec.step_start != last.step_start \
                and rec.step_start > last_time:
            at = rec.step_start  # the next step: in force from its start
        else:
            at = max(now.astimezone(UTC), rec.step_start)  # the first record, or a change within the step
        if last_time is not None and at <= last_time:
            at = last_time + timedelta(microseconds=1)  # one record per time: (point, time) is unique when stored
        samples = [Sample(point, value, Quality.GOOD, at, received) for point, value in rec.values.items()]
        for s in samples:
            self._sink.publish(s)
        self._last, self._last_time = rec, at
        self.records += 1
        return samples
