"""The steering input's cross-check: a second supply sensor on another path; disagreement beyond the band for
longer than the delay is a safe state, left bumplessly once they agree again."""

from __future__ import annotations

import pydantic
import pytest

from bench.closed_loop import METER, control_config
from service.audit import AuditEntry
from service.bus import SampleBus
from service.clock import VirtualClock
from service.control.controller import Controller, StepResult
from service.control.loop import ControlLoop
from service.control.model import ProcessImage, Reading
from service.model import Quality, Sample

CHECK = "hp1.supply_temperature"
GOOD = {"hp1.outdoor_temperature": 0.0, "cdu1.secondary_supply_temperature": 30.0,
        "cdu1.supply_temperature_allowable_max": 35.0, "hp1.status": 1.0, "hp2.status": 1.0,
        "hp1.heat_output": 400.0, "hp2.heat_output": 400.0}


def checked() -> Controller:
    return Controller(control_config(supply_temperature_check=CHECK, supply_temperature_check_band_k=5.0,
                                     supply_temperature_check_delay_s=5.0))


def image(t: float, supply: float, check: float | str | None = None) -> ProcessImage:
    """Plant readings at time t: the steered supply (a live sensor: it never repeats for long) and its check."""
    readings = {p: Reading(v) for p, v in GOOD.items()}
    readings[METER] = Reading(supply + 0.01 * (int(t) % 2))
    readings["cdu1.secondary_supply_temperature"] = Reading(30.0 + 0.01 * (int(t) % 2))
    checked_value = supply if check is None else check
    readings[CHECK] = Reading(None, checked_value) if isinstance(checked_value, str) else Reading(checked_value)  # type: ignore[arg-type]
    return ProcessImage(t, readings)


def steps(ctl: Controller, start: float, n: int, supply: float, check: float | str | None = None) -> list[StepResult]:
    return [ctl.step(image(start + k, supply, check), 1.0) for k in range(n)]


def test_disagreement_within_the_delay_is_tolerated_beyond_it_is_the_safe_state() -> None:
    ctl = checked()
    steps(ctl, 0, 30, 70.0)
    held = ctl.last.setpoints["hp1"] if ctl.last else None
    # A spoofed supply of 45 °C while the heat pump's own sensor reads 70 °C: 25 K apart.
    early = steps(ctl, 30, 5, 45.0, 70.0)
    assert not any(r.safe_state for r in early), "a short disagreement (transport delay, a transient) is tolerated"
    res = ctl.step(image(35, 45.0, 70.0), 1.0)
    assert res.safe_state and res.constraint == "safe_state:disagreeing_input"
    assert res.safe_state_reason is not None and METER in res.safe_state_reason and CHECK in res.safe_state_reason
    assert res.decisions["hp1.supply_setpoint"].winner == "safe_state"
    # While the PID believed the spoofed 45 °C it could only push the setpoint up at the rate clamp, for the delay.
    assert held is not None and max(r.setpoints["hp1"] or 0 for r in [*early, res]) <= held + 0.5 * 6 + 1e-6
    later = steps(ctl, 36, 60, 45.0, 70.0)
    assert all(r.safe_state for r in later)
    assert later[-1].writes["hp1.supply_setpoint"] == 65.0, "the safe setpoint, reached at the rate clamp"


def test_agreeing_again_leaves_the_safe_state_bumplessly() -> None:
    ctl = checked()
    steps(ctl, 0, 30, 70.0)
    steps(ctl, 30, 80, 45.0, 70.0)
    assert ctl.last is not None and ctl.last.safe_state
    held = ctl.last.setpoints["hp1"]
    assert held == 65.0
    # Both sensors on the same page again: believed once they have agreed for the whole delay (5 s) in a row.
    agreeing = steps(ctl, 110, 5, 66.0, 66.5)
    assert all(r.safe_state for r in agreeing), "one agreeing sample is not enough to believe the input again"
    back = ctl.step(image(115, 66.0, 66.5), 1.0)
    assert not back.safe_state and back.constraint != "safe_state:disagreeing_input"
    assert back.setpoints["hp1"] is not None and abs(back.setpoints["hp1"] - held) <= 0.5 + 1e-9, \
        "the PID resumes from the held output: no jump"
    assert back.decisions["hp1.supply_setpoint"].winner == "auto"


def test_the_band_is_inclusive_and_a_brief_excursion_followed_by_agreement_is_tolerated() -> None:
    ctl = checked()
    assert not any(r.safe_state for r in steps(ctl, 0, 60, 70.0, 75.0)), "5 K apart is still within the band"
    for k in range(40):  # 4 s out, then 6 s back (more than the delay), again and again
        res = ctl.step(image(60 + k, 70.0, 80.0 if k % 10 < 4 else 70.0), 1.0)
        assert not res.safe_state


def test_spoofed_samples_interleaved_with_real_ones_are_a_disagreement_not_a_reset() -> None:
    ctl = checked()
    steps(ctl, 0, 30, 70.0)
    # An attacker at 20 Hz over a meter that sends its real value once a second: now and then a cycle sees the
    # real value. Those single agreeing cycles must neither hold off the safe state nor end it.
    results = [ctl.step(image(30 + k, 70.0 if k % 4 == 3 else 45.0, 70.0), 1.0) for k in range(40)]
    first = next(k for k, r in enumerate(results) if r.safe_state)
    assert first <= 6, f"safe only after {first} s"
    assert all(r.safe_state for r in results[first:]), "an interleaved real sample let the loop out of its safe state"


@pytest.mark.parametrize("problem", ["stale", "bad", "missing"])
def test_a_gap_in_the_check_sensor_does_not_end_a_distrust(problem: str) -> None:
    ctl = checked()
    steps(ctl, 0, 30, 70.0)
    assert steps(ctl, 30, 8, 45.0, 70.0)[-1].safe_state
    # The spoof goes on while the heat pump's own sensor misses a few polls (its device slow under the flood):
    gap = steps(ctl, 38, 3, 45.0, problem)
    assert all(r.safe_state for r in gap), "a gap in the check sensor let the loop out of its safe state"
    assert all(r.safe_state for r in steps(ctl, 41, 10, 45.0, 70.0))
    # Only the two agreeing for the whole delay ends it.
    back = steps(ctl, 51, 8, 70.0, 70.0)
    assert back[0].safe_state and not back[-1].safe_state


@pytest.mark.parametrize("problem", ["stale", "bad", "missing"])
def test_an_unusable_check_sensor_leaves_the_supply_input_alone(problem: str) -> None:
    ctl = checked()
    results = steps(ctl, 0, 30, 70.0, problem)
    assert not any(r.safe_state for r in results), "the second sensor can only veto, not stop the loop by itself"


def test_manual_mode_is_not_steered_by_the_supply_and_not_stopped_by_the_check() -> None:
    ctl = checked()
    steps(ctl, 0, 10, 70.0)
    ctl.set_mode("manual")
    assert not any(r.safe_state for r in steps(ctl, 10, 30, 45.0, 70.0))


def test_the_check_must_be_another_sensor() -> None:
    with pytest.raises(pydantic.ValidationError, match="another sensor"):
        control_config(supply_temperature_check=METER)
    cfg = control_config(supply_temperature_check=CHECK)
    assert ("control.supply_temperature_check", CHECK, False) in cfg.point_refs()


async def test_the_loop_reads_the_check_audits_entering_and_leaving_and_shows_it_in_status() -> None:
    clock, bus = VirtualClock(), SampleBus()
    audit: list[AuditEntry] = []

    async def write(point: str, value: float) -> object:
        from drivers.base import WriteResult
        return WriteResult(point, "ok", value, value, value)

    async def record(entry: AuditEntry) -> None:
        audit.append(entry)

    loop = ControlLoop(control_config(supply_temperature_check=CHECK, supply_temperature_check_delay_s=3.0), bus,
                       write, clock, record)  # type: ignore[arg-type]

    async def cycles(n: int, supply: float, check: float) -> None:
        for k in range(n):
            now = clock.now()
            for point, value in {**GOOD, METER: supply + 0.01 * (k % 2), CHECK: check}.items():
                bus.publish(Sample(point, value, Quality.GOOD, now, now))
            await loop.cycle()
            await loop.flush()
            clock.advance(1.0)

    await cycles(10, 70.0, 70.2)
    assert not loop.status().safe_state
    await cycles(5, 45.0, 70.2)
    status = loop.status()
    assert status.safe_state and status.constraint == "safe_state:disagreeing_input"
    assert status.safe_state_reason is not None and status.safe_state_reason.startswith(f"disagreeing:{METER}")
    assert loop.health()[0] == "degraded"
    await cycles(2, 69.0, 69.5)
    assert loop.status().safe_state, "agreeing for less than the delay: still not believed"
    await cycles(2, 69.0, 69.5)
    assert not loop.status().safe_state
    entries = [(e.action, e.outcome, e.detail) for e in audit if e.action == "control.safe_state"]
    assert [o for _, o, _ in entries] == ["entered", "left"] and "disagreeing" in entries[0][2]
