"""Arbiter: one decision per point, safety > operator > automatic, caps, envelope and rate clamps."""

from __future__ import annotations

from service.control.arbiter import Arbiter, Cap, Envelope, Priority, Request

SP = "hp1.supply_setpoint"


def test_higher_priority_wins() -> None:
    arb = Arbiter({SP: Envelope(40.0, 85.0)})
    out = arb.resolve([Request(SP, 70.0, Priority.AUTOMATIC, "pid"), Request(SP, 60.0, Priority.OPERATOR, "op"),
                       Request(SP, 65.0, Priority.SAFETY, "safe")], [], 1.0)
    assert out[SP].value == 65.0 and out[SP].winner == "safe"
    out = arb.resolve([Request(SP, 70.0, Priority.AUTOMATIC, "pid"), Request(SP, 60.0, Priority.OPERATOR, "op")],
                      [], 1.0)
    assert out[SP].value == 60.0 and out[SP].winner == "op"


def test_a_safety_cap_holds_operator_and_automatic_requests_down() -> None:
    arb = Arbiter({SP: Envelope(40.0, 85.0)})
    for prio in (Priority.AUTOMATIC, Priority.OPERATOR):
        out = arb.resolve([Request(SP, 80.0, prio, "x")], [Cap(SP, 72.0, "cdu_limit"), Cap(SP, 75.0, "other")], 1.0)
        assert out[SP].value == 72.0 and out[SP].limited_by == "cap:cdu_limit"


def test_envelope_and_rate_clamps() -> None:
    arb = Arbiter({SP: Envelope(40.0, 85.0, max_rate=0.5)})
    assert arb.resolve([Request(SP, 99.0, Priority.OPERATOR, "op")], [], 1.0)[SP].value == 85.0
    out = arb.resolve([Request(SP, 70.0, Priority.OPERATOR, "op")], [], 2.0)
    assert out[SP].value == 84.0 and out[SP].limited_by == "rate"
    arb.forget(SP)
    assert arb.resolve([Request(SP, 70.0, Priority.OPERATOR, "op")], [], 1.0)[SP].value == 70.0
