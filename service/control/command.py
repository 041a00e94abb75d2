"""What the dispatch plan asks of the supply-temperature controller for one plan step (docs/DISPATCH.md).

Plain data the dispatch task sets on the Controller; the controller honours it at automatic priority, in
auto mode only, and ignores it whenever IT cooling needs every heat pump (cooling first always wins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SG_NORMAL, SG_BLOCKED, SG_ENCOURAGED = 0, 1, 2  # SG-Ready states as the heat pumps' registers take them
# After the CDU headroom fell below the margin, dispatch resumes only once it is this far above it again.
DISPATCH_RECOVERY_K = 1.0
CAPACITY_FULL = 100.0  # capacity limit, % of nominal heat output: no cap
# Above the plan's share of capacity: the plan's heat is a step's mean from models of COP and source heat, so
# the cap is meant to bind only where the plan holds the pump back, not on a few kW of model error.
CAPACITY_LIMIT_MARGIN = 5.0  # percentage points
CAPACITY_LIMIT_RESOLUTION = 0.1  # % per register count (the simulated heat pump's holding register 3)


def capacity_limit_percent(heat_kw: float, capacity_kw: float, min_load_fraction: float = 0.0) -> float:
    """The cap that lets a pump make the plan's heat: its share of capacity plus the margin, in 0.1 % steps.

    Rounded up (a cap must never hold the pump below the plan), at least the pump's minimum load (below it the
    machine would stop, which is SG-Ready's job, not the cap's), and 100 % when the plan runs it at full.
    """
    if capacity_kw <= 0 or not math.isfinite(heat_kw):
        return CAPACITY_FULL
    share = max(heat_kw / capacity_kw * 100.0 + CAPACITY_LIMIT_MARGIN, min_load_fraction * 100.0)
    # The small tolerance keeps a share that is a whole step in float (80.0000000001 %) from rounding up a step.
    steps = math.ceil(share / CAPACITY_LIMIT_RESOLUTION - 1e-6)
    return min(round(steps * CAPACITY_LIMIT_RESOLUTION, 1), CAPACITY_FULL)


@dataclass(frozen=True)
class DispatchCommand:
    """The current plan step as constraints: which pumps are in service, their SG-Ready states, capacity limits."""

    step_start: str  # the plan step's start (ISO), for status and audit
    in_service: frozenset[str]  # heat-pump ids the plan runs; the others are stopped (SG-Ready blocked)
    sg_ready: dict[str, int] = field(default_factory=dict)  # pump id -> SG-Ready state while in service
    heat_limit_kw: dict[str, float] = field(default_factory=dict)  # pump id -> the plan's output, kW
    status: str = "optimal"  # the plan's status: optimal, kept_previous, safe
    # pump id -> capacity limit, % of nominal heat output, for the pumps in service (missing: CAPACITY_FULL)
    capacity_limit: dict[str, float] = field(default_factory=dict)
