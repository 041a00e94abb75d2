"""What the dispatch plan asks of the supply-temperature controller for one plan step (docs/DISPATCH.md).

Plain data the dispatch task sets on the Controller; the controller honours it at automatic priority, in
auto mode only, and ignores it whenever IT cooling needs every heat pump (cooling first always wins).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SG_NORMAL, SG_BLOCKED, SG_ENCOURAGED = 0, 1, 2  # SG-Ready states as the heat pumps' registers take them
# After the CDU headroom fell below the margin, dispatch resumes only once it is this far above it again.
DISPATCH_RECOVERY_K = 1.0


@dataclass(frozen=True)
class DispatchCommand:
    """The current plan step as constraints: which pumps are in service, their SG-Ready states, heat limits."""

    step_start: str  # the plan step's start (ISO), for status and audit
    in_service: frozenset[str]  # heat-pump ids the plan runs; the others are stopped (SG-Ready blocked)
    sg_ready: dict[str, int] = field(default_factory=dict)  # pump id -> SG-Ready state while in service
    heat_limit_kw: dict[str, float] = field(default_factory=dict)  # pump id -> the plan's output, kW (shown)
    status: str = "optimal"  # the plan's status: optimal, kept_previous, safe
