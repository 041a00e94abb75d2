"""Energy from differences of a meter's own register: wrap, replacement, faults, gaps.

A register (totalizer) is read at irregular times. Consecutive readings make *steps*; each step's
energy is the register difference, corrected for roll-over and meter replacement. A step that is
negative or faster than the meter can count is a fault: the reading is held back, and only when the
next reading confirms the new level is it accepted (as a restart of a new meter, or as a lost jump);
otherwise it was a glitch and is discarded. Energy of a step is spread over time linearly, so the
energy of any period is the sum of the time-overlaps of the steps, and totals do not depend on how a
period is cut.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

# Flags an interval can carry (docs/ACCOUNTING.md explains each).
WRAP = "wrap"
REPLACEMENT = "replacement"
RESTART = "register_restart"
NEGATIVE = "negative_step"
JUMP = "register_jump"
DISCARDED = "fault_discarded"
UNRESOLVED = "fault_unresolved"
GAP = "gap"
ESTIMATED = "estimated"
MANUAL = "manual"
# A step flagged with one of these carries energy whose split over time (or amount) is not measured.
ESTIMATING_FLAGS = frozenset({GAP, RESTART, ESTIMATED})


@dataclass(frozen=True)
class Reading:
    """One register value at a time; manual when an operator typed it in."""

    time: datetime
    value: float
    manual: bool = False


@dataclass(frozen=True)
class Replacement:
    """A recorded meter exchange: the old meter's last register and the new meter's first."""

    time: datetime
    old_final: float
    new_initial: float = 0.0


@dataclass(frozen=True)
class Step:
    """Energy counted between two readings, spread evenly over [start, end)."""

    start: datetime
    end: datetime
    energy: float
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def estimated(self) -> bool:
        """True when the energy's placement in time (or its amount) is an estimate."""
        return bool(self.flags & ESTIMATING_FLAGS)


@dataclass(frozen=True)
class RegisterSpec:
    """What the counting logic needs to know about one register."""

    max_rate_per_s: float  # register units per second at the largest plausible power
    gap_s: float
    wrap: float | None = None
    resolution: float = 1e-6  # differences this small either way are read as zero

    def limit(self, dt_s: float) -> float:
        """Largest plausible increase over dt_s seconds (20 % margin above the largest power)."""
        return self.max_rate_per_s * dt_s * 1.2 + self.resolution


def _classify(a: Reading, b: Reading, spec: RegisterSpec) -> tuple[float, frozenset[str]] | None:
    """Energy and flags of the step a -> b, or None when it is a fault."""
    dt = (b.time - a.time).total_seconds()
    d = b.value - a.value
    flags: set[str] = set()
    if dt > spec.gap_s:
        flags.add(GAP)
    if a.manual or b.manual:
        flags.add(MANUAL)
    if -spec.resolution <= d <= spec.limit(dt):
        return max(d, 0.0), frozenset(flags)
    if d < 0 and spec.wrap is not None and 0 <= d + spec.wrap <= spec.limit(dt):
        return d + spec.wrap, frozenset(flags | {WRAP})
    return None


def register_steps(readings: Iterable[Reading], spec: RegisterSpec,
                   replacements: Sequence[Replacement] = ()) -> list[Step]:
    """Steps of a register series (sorted by time here); see the module docstring for the rules."""
    rows = sorted(readings, key=lambda r: r.time)
    reps = sorted(replacements, key=lambda r: r.time)
    if not rows:
        return []
    steps: list[Step] = []
    base = rows[0]
    pending: Reading | None = None
    for cur in rows[1:]:
        if cur.time <= base.time:
            continue  # a repeated telegram
        rep = next((r for r in reps if base.time < r.time <= cur.time), None)
        if rep is not None:
            energy = (rep.old_final - base.value) + (cur.value - rep.new_initial)
            rflags = {REPLACEMENT}
            if energy < -spec.resolution or energy > spec.limit((cur.time - base.time).total_seconds()):
                rflags.add(NEGATIVE if energy < 0 else JUMP)  # the recorded figures do not fit the readings
                energy = 0.0
            if base.manual or cur.manual:
                rflags.add(MANUAL)
            steps.append(Step(base.time, cur.time, max(energy, 0.0), frozenset(rflags)))
            base, pending = cur, None
            continue
        ok = _classify(base, cur, spec)
        if ok is not None:
            energy, flags = ok
            if pending is not None:
                flags = flags | {DISCARDED}  # the held reading was a glitch
            steps.append(Step(base.time, cur.time, energy, flags))
            base, pending = cur, None
            continue
        if pending is not None and cur.time > pending.time:
            confirmed = _classify(pending, cur, spec)
            if confirmed is not None:
                steps.append(_level_change(base, pending, spec))
                energy, flags = confirmed
                steps.append(Step(pending.time, cur.time, energy, flags))
                base, pending = cur, None
                continue
        pending = cur
    if pending is not None:
        steps.append(Step(base.time, pending.time, 0.0, frozenset({UNRESOLVED})))
    return steps


def _level_change(base: Reading, new: Reading, spec: RegisterSpec) -> Step:
    """The step to a confirmed new register level: a restarted (replaced) meter, or a lost jump."""
    dt = (new.time - base.time).total_seconds()
    if new.value < base.value and 0 <= new.value <= spec.limit(dt):
        # A new meter counting from zero that nobody recorded: count what it has counted, flag for review.
        return Step(base.time, new.time, new.value, frozenset({RESTART}))
    return Step(base.time, new.time, 0.0, frozenset({NEGATIVE if new.value < base.value else JUMP}))


def overlap_energy(step: Step, start: datetime, end: datetime) -> float:
    """The part of a step's energy that falls in [start, end), by time."""
    lo, hi = max(step.start, start), min(step.end, end)
    if hi <= lo:
        return 0.0
    span = (step.end - step.start).total_seconds()
    return step.energy * (hi - lo).total_seconds() / span


@dataclass
class Tally:
    """Energy in a time range: total, the estimated part, and every flag seen."""

    energy: float = 0.0
    estimated: float = 0.0
    flags: set[str] = field(default_factory=set)
    covered_s: float = 0.0  # seconds of the range that some step covers


def _from(steps: Sequence[Step], start: datetime) -> int:
    """Index of the first step that ends after start (steps in time order, not overlapping)."""
    return bisect.bisect_right(steps, start, key=lambda s: s.end)


def tally(steps: Sequence[Step], start: datetime, end: datetime) -> Tally:
    """Sum the overlaps of steps (in time order, as register_steps makes them) with [start, end)."""
    out = Tally()
    for i in range(_from(steps, start), len(steps)):
        s = steps[i]
        if s.start >= end:
            break
        lo, hi = max(s.start, start), min(s.end, end)
        if hi <= lo:
            continue
        e = overlap_energy(s, start, end)
        out.energy += e
        out.covered_s += (hi - lo).total_seconds()
        if s.estimated:
            out.estimated += e
        out.flags |= s.flags
    return out


def uncovered(steps: Sequence[Step], start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Parts of [start, end) no step (in time order) covers: before the first reading, after the last, unresolved."""
    out: list[tuple[datetime, datetime]] = []
    t = start
    for i in range(_from(steps, start), len(steps)):
        s = steps[i]
        if s.start >= end:
            break
        if s.end <= t:
            continue
        if UNRESOLVED in s.flags:
            continue  # no energy known there
        if s.start > t:
            out.append((t, min(s.start, end)))
        t = max(t, s.end)
        if t >= end:
            break
    if t < end:
        out.append((t, end))
    return out
