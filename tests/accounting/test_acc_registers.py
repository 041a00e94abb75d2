"""Register arithmetic: golden cases written out, and hypothesis properties."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.accounting.registers import (
    DISCARDED,
    GAP,
    MANUAL,
    NEGATIVE,
    REPLACEMENT,
    RESTART,
    UNRESOLVED,
    WRAP,
    Reading,
    RegisterSpec,
    Replacement,
    register_steps,
    tally,
    uncovered,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)
# 1 MW at most: 0.001 GJ/s; readings a minute apart can rise by up to 0.06 GJ (0.072 with the margin).
SPEC = RegisterSpec(max_rate_per_s=0.001, gap_s=300, wrap=1000.0)


def series(values: list[float], step_s: int = 60) -> list[Reading]:
    return [Reading(T0 + timedelta(seconds=i * step_s), v) for i, v in enumerate(values)]


def total(readings: list[Reading], **kw: object) -> float:
    steps = register_steps(readings, SPEC, **kw)  # type: ignore[arg-type]
    return sum(s.energy for s in steps)


def test_plain_differences() -> None:
    # 100.00 -> 100.05 -> 100.09 -> 100.10: 0.05 + 0.04 + 0.01 = 0.10 GJ
    assert total(series([100.0, 100.05, 100.09, 100.10])) == pytest.approx(0.10)


def test_wrap_is_counted_across_the_rollover() -> None:
    # 999.98 -> 0.03 on a 1000 GJ register: (0.03 + 1000) - 999.98 = 0.05 GJ, flagged wrap
    steps = register_steps(series([999.95, 999.98, 0.03, 0.05]), SPEC)
    assert [round(s.energy, 9) for s in steps] == [0.03, 0.05, 0.02]
    assert WRAP in steps[1].flags


def test_recorded_meter_replacement() -> None:
    # Old meter read 500.00 at 00:01; removed at 00:01:30 reading 500.02; new meter starts at 0.00 and
    # reads 0.03 at 00:02: (500.02 - 500.00) + (0.03 - 0.00) = 0.05 GJ, then 0.03 -> 0.07 = 0.04 GJ.
    readings = series([499.96, 500.0, 0.03, 0.07])
    rep = Replacement(T0 + timedelta(seconds=90), old_final=500.02, new_initial=0.0)
    steps = register_steps(readings, SPEC, [rep])
    assert [round(s.energy, 9) for s in steps] == [0.04, 0.05, 0.04]
    assert REPLACEMENT in steps[1].flags


def test_unrecorded_restart_is_confirmed_then_counted_from_zero() -> None:
    # 500.00 -> 0.02 (new meter) -> 0.06: the drop is held until 0.06 confirms it; the new meter's 0.02
    # counts (flagged register_restart), then 0.06 - 0.02 = 0.04. Total 0.04 + 0.02 + 0.04 = 0.10.
    steps = register_steps(series([499.96, 500.0, 0.02, 0.06]), RegisterSpec(0.001, 300, wrap=None))
    assert sum(s.energy for s in steps) == pytest.approx(0.10)
    assert any(RESTART in s.flags for s in steps)


def test_negative_glitch_is_discarded() -> None:
    # 10.00, 10.05, 3.00 (glitch), 10.12: the glitch is held back, 10.05 -> 10.12 = 0.07 counts.
    # Total: 0.05 + 0.07 = 0.12, the step after the glitch says it discarded one.
    steps = register_steps(series([10.0, 10.05, 3.0, 10.12]), SPEC)
    assert sum(s.energy for s in steps) == pytest.approx(0.12)
    assert DISCARDED in steps[-1].flags


def test_lasting_negative_step_is_a_fault_counting_nothing() -> None:
    # 10.00 -> 8.00 -> 8.04: too large a drop to be a new meter's count (8 GJ in a minute), and not a wrap.
    # The new level is confirmed by 8.04; the drop counts 0 (negative_step), then 0.04.
    steps = register_steps(series([10.0, 8.0, 8.04]), SPEC)
    assert [round(s.energy, 9) for s in steps] == [0.0, 0.04]
    assert NEGATIVE in steps[0].flags


def test_trailing_fault_is_unresolved() -> None:
    steps = register_steps(series([10.0, 10.05, 3.0]), SPEC)
    assert UNRESOLVED in steps[-1].flags and steps[-1].energy == 0


def test_gap_is_spread_over_time_and_flagged() -> None:
    # Readings at 00:00 (100.0) and 01:00 (101.8): a gap of 3600 s > gap_s 300. The meter counted the
    # 1.8 GJ; it is spread linearly, so 00:00-00:20 gets 1.8 x 1200/3600 = 0.6 GJ, flagged estimated.
    readings = [Reading(T0, 100.0), Reading(T0 + timedelta(hours=1), 101.8)]
    steps = register_steps(readings, RegisterSpec(0.001, 300))
    t = tally(steps, T0, T0 + timedelta(minutes=20))
    assert t.energy == pytest.approx(0.6)
    assert t.estimated == pytest.approx(0.6)
    assert GAP in t.flags


def test_manual_reading_is_flagged() -> None:
    readings = [*series([1.0, 1.05]), Reading(T0 + timedelta(seconds=120), 1.09, manual=True)]
    steps = register_steps(readings, SPEC)
    assert MANUAL in steps[-1].flags and MANUAL not in steps[0].flags
    assert sum(s.energy for s in steps) == pytest.approx(0.09)


def test_uncovered_parts() -> None:
    steps = register_steps(series([1.0, 1.01, 1.02]), SPEC)  # covers 00:00-00:02
    gaps = uncovered(steps, T0 - timedelta(minutes=1), T0 + timedelta(minutes=3))
    assert gaps == [(T0 - timedelta(minutes=1), T0), (T0 + timedelta(minutes=2), T0 + timedelta(minutes=3))]


increments = st.lists(st.floats(min_value=0.0, max_value=0.06), min_size=2, max_size=60)


@settings(max_examples=200, deadline=None)
@given(increments, st.floats(min_value=0, max_value=999.99), st.lists(st.integers(0, 59), max_size=4),
       st.lists(st.floats(min_value=-50, max_value=50), max_size=4))
def test_energy_never_negative(incs: list[float], start: float, glitch_at: list[int], glitch: list[float]) -> None:
    values, v = [], start
    for x in incs:
        v = (v + x) % SPEC.wrap  # type: ignore[operator]
        values.append(v)
    for i, g in zip(glitch_at, glitch, strict=False):
        if i < len(values):
            values[i] = max(values[i] + g, 0.0)
    assert all(s.energy >= 0 for s in register_steps(series(values), SPEC))


@settings(max_examples=200, deadline=None)
@given(increments, st.floats(min_value=0.01, max_value=0.99), st.integers(min_value=0, max_value=59))
def test_wrap_handled_at_any_point(incs: list[float], offset: float, wrap_at: int) -> None:
    # Start the register so that it rolls over 1000 GJ between reading wrap_at and the next one:
    # the total is still the sum of the increments.
    wrap = 1000.0
    cum = [0.0]
    for x in incs:
        cum.append(cum[-1] + x)
    k = wrap_at % len(incs)
    start = wrap - cum[k] - incs[k] * offset  # reading k sits just below the roll-over
    values = [(start + c) % wrap for c in cum]
    steps = register_steps(series(values), SPEC)
    assert sum(s.energy for s in steps) == pytest.approx(cum[-1], abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(increments, st.lists(st.integers(min_value=1, max_value=3600), min_size=1, max_size=6),
       st.sampled_from([60, 90, 400]))
def test_totals_invariant_to_how_a_period_is_split(incs: list[float], cuts_s: list[int], step_s: int) -> None:
    values, v = [5.0], 5.0
    for x in incs:
        v += x
        values.append(v)
    steps = register_steps(series(values, step_s), RegisterSpec(0.001, 300))
    start, end = T0 - timedelta(minutes=5), T0 + timedelta(seconds=step_s * len(values) + 300)
    whole = tally(steps, start, end).energy
    bounds = sorted({start, end, *(start + timedelta(seconds=c * 7) for c in cuts_s)})
    bounds = [b for b in bounds if b <= end]
    parts = sum(tally(steps, a, b).energy for a, b in itertools.pairwise(bounds))
    assert parts == pytest.approx(whole, rel=1e-9, abs=1e-12)
    assert whole == pytest.approx(values[-1] - values[0], abs=1e-9)
