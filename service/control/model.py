"""The control loop's public types: operator requests, status, stats and the frozen process image."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from service.errors import InvalidRequest

Mode = Literal["auto", "manual", "off"]
TargetSource = Literal["curve", "fixed", "override"]


class ControlRequestError(InvalidRequest):
    """An operator request that cannot be applied; the message says what is wrong and what to do."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict  # True: valid request, wrong state (HTTP 409); False: bad value (422)
        self.http_status = 409 if conflict else 422


class ControlRequest(BaseModel):
    """A partial change from an operator or SCADA; only the fields given are changed."""

    # An empty object changes nothing and is refused (422): the schema says so, for generated clients.
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1})

    mode: Mode | None = None
    supply_temperature_target: float | None = None  # an explicit null clears the override (back to the curve)
    heat_pump_setpoint: float | None = None  # manual mode only; applied to every heat pump
    # How long the override or manual mode of this request holds (default: control.request_expiry_default_s).
    expires_in_s: float | None = None

    @field_validator("supply_temperature_target", "heat_pump_setpoint", "expires_in_s", mode="before")
    @classmethod
    def _number(cls, v: object) -> object:
        # Strict mode already refuses strings and booleans; ints are fine as °C but NaN/inf are not.
        if isinstance(v, bool):
            raise ValueError("must be a number, not a boolean")
        if isinstance(v, int | float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        if isinstance(v, int):
            return float(v)
        return v


class ControlStatus(BaseModel):
    """What the loop is doing now."""

    mode: Mode
    supply_temperature_target: float | None
    target_source: TargetSource
    supply_temperature: float | None
    constraint: str | None
    safe_state: bool
    heat_pump_setpoints: dict[str, float | None]
    outdoor_temperature: float | None
    target_requested: float | None = None  # before the ramp limit
    override: float | None = None
    override_expires_at: datetime | None = None  # when the override ends and the target returns to the curve
    manual_setpoint: float | None = None
    manual_expires_at: datetime | None = None  # when manual mode ends and control returns to auto
    heat_pumps_running: list[str] = []  # running by their own status word (commanded, when a pump has none)
    heat_pumps_not_running: dict[str, str] = {}  # pump id -> why not (tripped, stopped, offline, staging);
    # a pump running on its watchdog fallback is listed in both
    cdu_headroom_k: float | None = None
    safe_state_reason: str | None = None
    strategy: Literal["boost", "direct"] = "boost"
    cycles: int = 0


@dataclass
class ControlStats:
    """Cycle counters and timing; they only grow, except the last-cycle values and the jitter window."""

    cycles: int = 0
    overruns: int = 0
    last_cycle_s: float = 0.0
    max_cycle_s: float = 0.0
    last_jitter_s: float = 0.0
    max_jitter_s: float = 0.0
    writes: int = 0
    write_failures: int = 0
    writes_skipped: int = 0  # the previous cycle's writes were still in flight
    safe_state_entries: int = 0
    cdu_limited_cycles: int = 0  # cycles in which the CDU limit capped the setpoints
    jitter_samples_s: list[float] = field(default_factory=list)  # the most recent cycles, for percentiles
    JITTER_WINDOW = 4096

    def record(self, jitter_s: float, cycle_s: float, period_s: float) -> None:
        """Account one cycle."""
        self.cycles += 1
        self.last_cycle_s = cycle_s
        self.max_cycle_s = max(self.max_cycle_s, cycle_s)
        self.last_jitter_s = jitter_s
        self.max_jitter_s = max(self.max_jitter_s, jitter_s)
        if cycle_s > period_s:
            self.overruns += 1
        self.jitter_samples_s.append(jitter_s)
        if len(self.jitter_samples_s) > self.JITTER_WINDOW:
            del self.jitter_samples_s[: len(self.jitter_samples_s) - self.JITTER_WINDOW]

    def jitter_percentile(self, q: float) -> float:
        """q in 0..100 over the recent window; 0 when nothing was measured."""
        data = sorted(self.jitter_samples_s)
        if not data:
            return 0.0
        return data[min(math.ceil(q / 100.0 * len(data)) - 1, len(data) - 1) if q > 0 else 0]


Problem = Literal["missing", "bad", "stale", "frozen"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One input as the cycle sees it: a usable value, or why there is none."""

    value: float | None
    problem: Problem | None = None


@dataclass(frozen=True)
class ProcessImage:
    """A frozen snapshot of every input the controller reads in one cycle."""

    now_s: float  # monotonic seconds
    readings: Mapping[str, Reading]

    def get(self, point: str) -> Reading:
        """The point's reading; missing when the image has none."""
        return self.readings.get(point) or Reading(None, "missing")
