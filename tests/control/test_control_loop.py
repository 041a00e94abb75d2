"""ControlLoop with a real SampleBus, virtual time and a fake write function."""

from __future__ import annotations

import asyncio
import itertools

import pydantic
import pytest

from bench.closed_loop import METER, control_config
from drivers.base import WriteResult
from service.audit import AuditEntry
from service.bus import SampleBus
from service.clock import VirtualClock
from service.control.loop import ControlLoop
from service.control.model import ControlRequest, ControlRequestError, ControlStats
from service.model import Quality, Sample
from service.tasks import cancel_and_wait
from tests.support import wait_until

INPUTS = {METER: 70.0, "hp1.outdoor_temperature": 0.0, "cdu1.secondary_supply_temperature": 30.0,
          "cdu1.supply_temperature_allowable_max": 35.0, "hp1.status": 1.0, "hp2.status": 1.0,
          "hp1.heat_output": 400.0, "hp2.heat_output": 400.0}


class Harness:
    """The loop, its bus and clock, the writes it made and the audit entries it recorded."""

    def __init__(self, **overrides: object) -> None:
        self.clock = VirtualClock()
        self.bus = SampleBus()
        self.writes: list[tuple[float, str, float]] = []
        self.audit: list[AuditEntry] = []
        self.fail: set[str] = set()
        self.loop = ControlLoop(control_config(**overrides), self.bus, self.write, self.clock, self.record)
        self.k = 0

    async def write(self, point: str, value: float) -> WriteResult:
        self.writes.append((self.clock.monotonic(), point, value))
        if point in self.fail:
            return WriteResult(point, "timeout", value, message="no answer")
        return WriteResult(point, "ok", value, value, value)

    async def record(self, entry: AuditEntry) -> None:
        self.audit.append(entry)

    def publish(self, **quality: Quality) -> None:
        now = self.clock.now()
        for point, value in INPUTS.items():
            if point in (METER, "cdu1.secondary_supply_temperature"):
                value += 0.01 * (self.k % 2)  # a live sensor
            q = quality.get(point.replace(".", "__"), Quality.GOOD)
            self.bus.publish(Sample(point, value, q, now, now))

    async def cycles(self, n: int, publish: bool = True, **quality: Quality) -> None:
        for _ in range(n):
            if publish:
                self.publish(**quality)
            await self.loop.cycle()
            await self.loop.flush()
            self.clock.advance(1.0)
            self.k += 1

    def written(self, point: str) -> list[tuple[float, float]]:
        return [(t, v) for t, p, v in self.writes if p == point]


async def test_writes_go_out_and_unchanged_setpoints_are_refreshed() -> None:
    h = Harness(refresh_s=10.0)
    await h.cycles(5)
    assert h.loop.status().mode == "auto" and not h.loop.status().safe_state
    assert len(h.written("hp1.heartbeat")) == 5, "a heartbeat every cycle keeps the device watchdog quiet"
    await h.loop.request(ControlRequest(mode="manual", heat_pump_setpoint=70.0), "ops", "operator")
    await h.cycles(10)  # reach 70 °C at the rate limit, then hold it
    h.writes.clear()
    await h.cycles(35)
    times = [t for t, _ in h.written("hp1.supply_setpoint")]
    assert 3 <= len(times) <= 4 and all(b - a == pytest.approx(10.0) for a, b in itertools.pairwise(times))
    assert {v for _, v in h.written("hp1.supply_setpoint")} == {70.0}


async def test_stale_input_means_the_safe_state_within_two_cycles() -> None:
    h = Harness(safe_setpoint=65.0, stale_after_s=5.0)
    await h.cycles(20)
    # The meter's gateway stops: its last sample ages; everything else stays fresh.
    last = h.bus.latest[METER]
    age_at_detection = 0  # seconds since the last sample = cycles since it was fresh
    while not h.loop.status().safe_state and age_at_detection < 10:
        h.publish()
        h.bus.latest[METER] = last
        await h.loop.cycle()
        await h.loop.flush()
        h.clock.advance(1.0)
        age_at_detection += 1
    assert h.loop.status().safe_state and h.loop.status().constraint == "safe_state:stale_input"
    assert age_at_detection <= 5 + 2, "stale after stale_after_s, safe within two cycles of that"
    assert h.loop.health()[0] == "degraded"
    entered = [e for e in h.audit if e.action == "control.safe_state"]
    assert entered and entered[0].outcome == "entered" and METER in entered[0].detail
    # A driver that marks the point STALE gets the same answer in the next cycle.
    h2 = Harness(safe_setpoint=65.0)
    await h2.cycles(10)
    await h2.cycles(1, meter1__flow_temperature=Quality.STALE)
    assert h2.loop.status().safe_state
    await h2.cycles(1)
    assert not h2.loop.status().safe_state
    assert [e.outcome for e in h2.audit if e.action == "control.safe_state"] == ["entered", "left"]


async def test_operator_requests_are_validated_applied_and_audited_with_old_and_new() -> None:
    h = Harness()
    await h.cycles(3)
    status = await h.loop.request(ControlRequest(supply_temperature_target=72.0), "alice", "operator")
    assert status.target_source == "override" and status.override == 72.0
    entry = h.audit[-1]
    assert (entry.principal, entry.role, entry.target, entry.outcome) == \
        ("alice", "operator", "control.supply_temperature_target", "accepted")
    assert "old=null" in entry.detail and "new=72.0" in entry.detail
    cleared = await h.loop.request(ControlRequest.model_validate({"supply_temperature_target": None}), "alice",
                                   "operator")
    assert cleared.target_source == "curve" and "old=72.0 new=null" in h.audit[-1].detail
    with pytest.raises(ControlRequestError, match="outside") as bad:
        await h.loop.request(ControlRequest(supply_temperature_target=120.0), "alice", "operator")
    assert not bad.value.conflict and h.audit[-1].outcome == "refused"
    with pytest.raises(ControlRequestError, match="manual mode only") as conflict:
        await h.loop.request(ControlRequest(heat_pump_setpoint=60.0), "alice", "operator")
    assert conflict.value.conflict
    await h.loop.request(ControlRequest(mode="manual", heat_pump_setpoint=60.0), "bob", "operator")
    mode, setpoint = h.audit[-2:]
    assert (mode.principal, mode.target) == ("bob", "control.mode")
    assert mode.detail.startswith("old=auto new=manual (holding the heat-pump setpoint in force, 7")
    assert setpoint.target == "control.heat_pump_setpoint" and setpoint.detail.endswith(" new=60.0")
    assert setpoint.detail.startswith("old=7"), "entering manual held the output in force (about 70 °C)"
    await h.cycles(30)
    assert h.loop.status().heat_pump_setpoints == {"hp1": 60.0, "hp2": 60.0}


def test_a_request_refuses_booleans_strings_and_unknown_keys() -> None:
    for body in ({"supply_temperature_target": True}, {"supply_temperature_target": "70"}, {"mode": "fast"},
                 {"setpoint": 70}, {"heat_pump_setpoint": float("nan")}):
        with pytest.raises(pydantic.ValidationError):
            ControlRequest.model_validate(body)
    assert ControlRequest.model_validate({"supply_temperature_target": 70}).supply_temperature_target == 70.0


async def test_a_failing_write_degrades_health_and_is_retried() -> None:
    h = Harness()
    h.fail.add("hp2.supply_setpoint")
    await h.cycles(3)
    state, detail = h.loop.health()
    assert state == "degraded" and "hp2.supply_setpoint" in detail
    assert len(h.written("hp2.supply_setpoint")) == 3, "retried every cycle"
    h.fail.clear()
    await h.cycles(1)
    assert h.loop.health()[0] == "ok"
    assert h.loop.stats.write_failures == 3


async def test_run_cycles_on_the_real_clock_until_cancelled() -> None:
    bus = SampleBus()
    writes: list[str] = []

    async def write(point: str, value: float) -> WriteResult:
        writes.append(point)
        return WriteResult(point, "ok", value, value, value)

    loop = ControlLoop(control_config(period_s=0.02, start_grace_s=0.0), bus, write)
    task = asyncio.create_task(loop.run())
    await wait_until(lambda: loop.stats.cycles >= 10, 10.0, "ten control cycles")
    await cancel_and_wait(task)
    cycles = loop.stats.cycles
    assert len(loop.stats.jitter_samples_s) == cycles and loop.stats.max_jitter_s >= 0
    assert writes == [], "no inputs on the bus: the loop never wrote (start-up safe state)"
    assert loop.status().safe_state and loop.health()[0] == "degraded"


async def test_a_slow_device_never_queues_writes_behind_it() -> None:
    h = Harness()
    release = asyncio.Event()

    async def slow(point: str, value: float) -> WriteResult:
        await release.wait()
        return WriteResult(point, "ok", value, value, value)

    h.loop._write = slow  # the device stops answering for a while
    for _ in range(3):
        h.publish()
        await h.loop.cycle()
        h.clock.advance(1.0)
    assert h.loop.stats.writes_skipped == 2, "the first batch is in flight; the next two cycles write nothing"
    release.set()
    await h.loop.flush()
    assert h.loop.stats.writes > 0 and h.loop.stats.write_failures == 0


def test_stats_count_overruns_and_give_percentiles() -> None:
    s = ControlStats()
    for k in range(100):
        s.record(jitter_s=k / 1000.0, cycle_s=1.5 if k == 7 else 0.01, period_s=1.0)
    assert s.cycles == 100 and s.overruns == 1 and s.max_cycle_s == 1.5
    assert s.jitter_percentile(99) == pytest.approx(0.098) and s.jitter_percentile(50) == pytest.approx(0.049)
