"""The one write path: WriteArbiter (priority, holds, caps, envelope, max_rate, expiry, audit) and the control
loop's operator requests (expiry, restart, start grace), on virtual time with a fake device."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from drivers.base import WriteResult
from service.audit import AuditEntry
from service.clock import VirtualClock
from service.config import ModbusPoint
from service.control.arbiter import Priority
from service.control.model import ControlRequest, ControlRequestError
from service.writes import WriteArbiter, WriteRequest
from tests.control.test_control_loop import Harness

SP = "hp1.supply_setpoint"


class Device:
    """What reached the device, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []

    async def write(self, point: str, value: float) -> WriteResult:
        self.sent.append((point, value))
        return WriteResult(point, "ok", value, value, value)


def _arbiter(max_rate: float | None = 0.5) -> tuple[WriteArbiter, Device, VirtualClock, list[AuditEntry]]:
    point = ModbusPoint.model_validate({"id": "supply_setpoint", "address": 0, "function": "holding",
                                        "type": "int16", "scale": 0.1, "writable": True, "min": 40.0,
                                        "max": 80.0, "max_rate": max_rate})
    status = ModbusPoint.model_validate({"id": "status", "address": 5, "function": "input", "type": "uint16"})
    device, clock, audit = Device(), VirtualClock(), []

    async def record(e: AuditEntry) -> None:
        audit.append(e)

    return WriteArbiter({SP: point, "hp1.status": status}, device.write, clock, record), device, clock, audit


def auto(value: float) -> WriteRequest:
    return WriteRequest(SP, value, Priority.AUTOMATIC, "control")


async def test_max_rate_of_the_point_ramps_every_writer_and_is_audited() -> None:
    arb, dev, clock, audit = _arbiter(max_rate=0.5)
    assert (await arb.submit(auto(60.0))).ok  # nothing written before: nothing to ramp from
    clock.advance(2.0)
    r = await arb.submit(auto(70.0))
    assert r.ok and r.written == 61.0 and r.requested == 70.0 and "max_rate" in r.message
    assert dev.sent == [(SP, 60.0), (SP, 61.0)]
    assert [(e.action, e.requested, e.applied) for e in audit] == [("write.control", 70.0, 61.0)]
    clock.advance(2.0)
    assert (await arb.submit(auto(70.0))).written == 62.0
    assert len(audit) == 1, "a ramp is one episode in the trail, not an entry per cycle"


async def test_an_operator_value_outside_the_envelope_is_refused_and_nothing_is_sent() -> None:
    arb, dev, _, audit = _arbiter()
    r = await arb.submit(WriteRequest(SP, 95.0, Priority.OPERATOR, "api", "alice", "operator"))
    assert r.status == "rejected" and "envelope 40.0..80.0" in r.message and dev.sent == []
    assert audit[0].principal == "alice" and audit[0].outcome == "rejected"
    for target in ("hp1.status", "hp9.nothing"):
        assert (await arb.submit(WriteRequest(target, 1.0, Priority.OPERATOR, "api"))).status == "rejected"
    assert dev.sent == []


async def test_an_operator_hold_refuses_automatic_writes_until_it_expires() -> None:
    arb, dev, clock, audit = _arbiter(max_rate=None)
    held = await arb.submit(WriteRequest(SP, 55.0, Priority.OPERATOR, "scada", "bob", "operator", hold_s=60.0))
    assert held.ok and SP in arb.holds()
    r = await arb.submit(auto(70.0))
    assert r.status == "rejected" and "held by bob" in r.message
    assert (await arb.submit(auto(70.0))).status == "rejected"  # every cycle refused, audited once
    clock.advance(61.0)
    assert (await arb.submit(auto(70.0))).ok
    assert dev.sent == [(SP, 55.0), (SP, 70.0)] and arb.holds() == {}
    assert [e.outcome for e in audit] == ["accepted", "rejected", "expired"]


async def test_a_safety_cap_bounds_lower_priorities_until_released() -> None:
    arb, dev, _, audit = _arbiter(max_rate=None)
    arb.set_caps("cdu_limit", {SP: 65.0})
    r = await arb.submit(auto(70.0))
    assert r.written == 65.0 and "safety cap (cdu_limit)" in r.message
    assert (await arb.submit(WriteRequest(SP, 70.0, Priority.SAFETY, "safety"))).written == 70.0
    arb.set_caps("cdu_limit", {})
    assert (await arb.submit(auto(70.0))).written == 70.0
    assert [(e.action, e.applied) for e in audit] == [("write.control", 65.0), ("write.safety", 70.0)]
    assert [v for _, v in dev.sent] == [65.0, 70.0, 70.0]


async def test_an_override_expires_back_to_the_curve_audited() -> None:
    h = Harness()
    await h.cycles(3)
    status = await h.loop.request(ControlRequest(supply_temperature_target=75.0, expires_in_s=60.0), "ops", "operator")
    assert status.override == 75.0 and status.override_expires_at == h.clock.now() + timedelta(seconds=60)
    await h.cycles(59)
    assert h.loop.status().override == 75.0
    await h.cycles(2)
    st = h.loop.status()
    assert st.override is None and st.override_expires_at is None and st.target_source == "curve"
    assert [e.target for e in h.audit if e.outcome == "expired"] == ["control.supply_temperature_target"]


async def test_manual_mode_expires_to_auto_and_requests_carry_a_default_expiry() -> None:
    h = Harness(request_expiry_default_s=30.0)
    await h.cycles(3)
    st = await h.loop.request(ControlRequest(mode="manual", heat_pump_setpoint=70.0), "ops", "operator")
    assert st.manual_expires_at == h.clock.now() + timedelta(seconds=30)
    await h.cycles(31)
    assert h.loop.status().mode == "auto"
    assert any(e.target == "control.mode" and e.outcome == "expired" for e in h.audit)


async def test_expiry_beyond_the_maximum_or_with_nothing_to_hold_is_refused() -> None:
    h = Harness(request_expiry_max_s=3600.0, request_expiry_default_s=600.0)
    await h.cycles(2)
    with pytest.raises(ControlRequestError, match="request_expiry_max_s"):
        await h.loop.request(ControlRequest(supply_temperature_target=75.0, expires_in_s=7200.0), "ops", "operator")
    with pytest.raises(ControlRequestError, match="neither is in force") as err:
        await h.loop.request(ControlRequest(expires_in_s=60.0), "ops", "operator")
    assert err.value.conflict


async def test_requests_in_force_survive_a_restart_and_expired_ones_do_not(tmp_path: Path) -> None:
    state = tmp_path / "control-state.json"
    h = Harness()
    h.loop._state_path = state  # what Service passes (control.state_file)
    await h.cycles(2)
    await h.loop.request(ControlRequest(supply_temperature_target=74.0, expires_in_s=600.0), "ops", "operator")
    assert state.exists()

    again = Harness()
    again.loop._state_path = state
    again.clock.advance((h.clock.now() - again.clock.now()).total_seconds() + 100)  # restarted 100 s later
    await again.loop.restore()
    st = again.loop.status()
    assert st.override == 74.0 and st.override_expires_at == h.loop.status().override_expires_at
    assert [e.outcome for e in again.audit] == ["restored"] and "override 74.0" in again.audit[0].detail

    late = Harness()
    late.loop._state_path = state
    late.clock.advance((h.clock.now() - late.clock.now()).total_seconds() + 601)
    await late.loop.restore()
    assert late.loop.status().override is None and late.audit == []


async def test_start_waits_for_the_first_inputs_before_a_safe_state() -> None:
    h = Harness(start_grace_s=30.0)
    await h.cycles(10, publish=False)
    st = h.loop.status()
    assert not st.safe_state and st.constraint == "starting" and h.loop.health() == (
        "ok", "control starting: waiting for the first inputs")
    assert h.writes == [] and h.audit == []
    await h.cycles(25, publish=False)  # the grace is over and still nothing: now it is a safe state
    assert h.loop.status().safe_state and [e.action for e in h.audit] == ["control.safe_state"]


async def test_loop_parameters_are_requested_through_the_arbiter() -> None:
    from service.errors import NotFound

    h = Harness()
    await h.cycles(2)
    arbiter = WriteArbiter.for_control(h.loop)
    st = await arbiter.request_control(ControlRequest(supply_temperature_target=74.0), "ops", "operator")
    assert st.override == 74.0 and h.audit[-1].principal == "ops"
    with pytest.raises(ControlRequestError):  # the loop's own checks still apply
        await arbiter.request_control(ControlRequest(supply_temperature_target=500.0), "ops", "operator")
    with pytest.raises(NotFound, match=r"\[control\]"):
        await WriteArbiter.for_control(None).request_control(ControlRequest(mode="auto"), "ops", "operator")
    refused = await arbiter.submit(WriteRequest(SP, 60.0, Priority.OPERATOR, "api"))
    assert refused.status == "rejected", "a parameters-only arbiter reaches no device"
