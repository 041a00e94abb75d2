"""The plan over time as samples on the bus: one record per step and per change, priced against the baseline."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.api.state import ServiceState
from service.config import parse_config
from service.dispatch import plan_points as pp
from service.dispatch.optimiser import CENT, Inputs, Step, follow_demand_steps
from service.model import Sample
from tests.dispatch.test_dispatch_task import RUNNING, START, Rig, write_prices


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield Rig(tmp_path)


def by_hand(inputs: Inputs, t: int, step: Step, before: list[int]) -> Decimal:
    """Revenue - electricity - rejection - starts of one step, from the step's own figures."""
    assert inputs.electricity_dkk_per_kwh is not None
    h = inputs.step_s / 3600
    total = (float(inputs.heat_price_dkk_per_kwh) * step.delivered_kw * h
             - float(inputs.electricity_dkk_per_kwh[t]) * step.electricity_kw * h
             - float(inputs.rejection_cost_dkk_per_kwh) * step.rejected_kw * h
             - sum(float(u.start_cost_dkk) * max(on - b, 0) for u, on, b in zip(inputs.units, step.on, before,
                                                                               strict=True)))
    return Decimal(repr(round(total, 6))).quantize(CENT)


def published(rig: Rig) -> dict[str, Sample]:
    return {p: s for p, s in rig.bus.latest.items() if p.startswith("dispatch.")}


def test_the_baseline_follows_demand_within_capacity_and_the_it_heat(rig: Rig, tmp_path: Path) -> None:
    write_prices(tmp_path / "prices.json", ["100.00"] * 96)
    rig.plant(it_heat=600.0, hp1=RUNNING, hp2=RUNNING)
    series, _ = rig.task.read_prices()
    inputs = rig.task.build_inputs(rig.task.measure(), series, START)
    base = follow_demand_steps(inputs)
    assert len(base) == inputs.steps
    b = base[0]
    lift = [1 - 1 / u.cop[0] for u in inputs.units]
    # No demand point: the network takes what the plant makes, so the pumps lift all the IT heat they can.
    assert b.heat_kw[0] == 500.0 and 0 < b.heat_kw[1] < 500.0 and b.on == (1, 1)
    assert sum(q * s for q, s in zip(b.heat_kw, lift, strict=True)) == pytest.approx(600.0)
    assert b.rejected_kw == pytest.approx(0.0, abs=1e-9) and b.charge_kw == b.discharge_kw == 0.0
    assert b.delivered_kw == pytest.approx(sum(b.heat_kw))
    # With a demand below it, the pumps make the demand and the dry coolers take the rest of the IT heat.
    small = follow_demand_steps(Inputs(**{**inputs.__dict__, "demand_kw": (300.0,) * inputs.steps}))[0]
    assert small.heat_kw == (300.0, 0.0) and small.on == (1, 0)
    assert small.rejected_kw == pytest.approx(600.0 - 300.0 * lift[0])


async def test_each_step_and_each_change_is_one_record_at_its_time(rig: Rig, tmp_path: Path) -> None:
    write_prices(tmp_path / "prices.json", ["100.00"] * 8 + ["3000.00"] * 88)
    rig.plant(it_heat=600.0, hp1=RUNNING, hp2=RUNNING)
    plan = await rig.task.replan()
    inputs = rig.task.inputs
    assert plan.status == "optimal" and inputs is not None and inputs.electricity_dkk_per_kwh is not None
    got = published(rig)
    step = plan.steps[0]
    assert {s.source_time for s in got.values()} == {START}, "every point of the record at the step's time"
    values = {p: s.value for p, s in got.items()}
    assert values[pp.STATUS] == pp.STATUS_CODES["optimal"]
    assert values[pp.PLANNED_HEAT] == pytest.approx(sum(step.heat_kw), abs=1e-3)
    assert values[pp.unit_heat("hp1")] == pytest.approx(step.heat_kw[0], abs=1e-3)
    assert values[pp.unit_on("hp2")] == step.on[1]
    assert values[pp.PRICE] == float(inputs.electricity_dkk_per_kwh[0] * 1000)
    before = [1, 1]  # both pumps ran before the first step
    assert values[pp.EXPECTED] == float(by_hand(inputs, 0, step, before))
    assert values[pp.BASELINE] == float(by_hand(inputs, 0, follow_demand_steps(inputs)[0], before))
    n = rig.task.publisher.records
    rig.task.apply()
    rig.clock.advance(300)
    rig.task.apply()
    assert rig.task.publisher.records == n, "nothing changed within the step: no new record"
    rig.clock.advance(600)
    rig.task.apply()
    assert rig.task.publisher.records == n + 1
    assert published(rig)[pp.STATUS].source_time == START + timedelta(minutes=15), "the next step, from its start"
    # Switched off five minutes into the step: a record from then, status off, the plan still shown.
    rig.clock.advance(300)
    await rig.task.set_enabled(False, "o", "operator")
    off = published(rig)
    assert off[pp.STATUS].value == pp.STATUS_CODES["off"]
    assert off[pp.STATUS].source_time == START + timedelta(minutes=20)


async def test_without_prices_the_steps_are_recorded_as_fallback_without_margins(rig: Rig) -> None:
    rig.plant()
    plan = await rig.task.replan()
    assert plan.status == "follow_demand"
    got = published(rig)
    assert set(got) == {pp.STATUS} and got[pp.STATUS].value == pp.STATUS_CODES["follow_demand"]
    assert got[pp.STATUS].source_time == START


async def test_the_report_is_refused_with_retry_after_while_the_database_is_away(tmp_path: Path) -> None:
    state = ServiceState(parse_config({}), Rig(tmp_path).bus, None)  # a database never reached: always away
    _, viewer = state.tokens.create("viewer", "v")
    auth = {"Authorization": f"Bearer {viewer}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url="http://t") as http:
        r = await http.get("/api/v1/dispatch/report", params={"start": "2026-01-05T00:00:00Z",
                                                              "end": "2026-01-06T00:00:00Z"}, headers=auth)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
        assert r.json()["unavailable"] == "database"
        for params in ({"start": "2026-01-06T00:00:00Z", "end": "2026-01-05T00:00:00Z"},  # inverted
                       {"start": "2026-01-05T00:00:00Z", "end": "2026-01-05T00:00:00Z"},  # empty
                       {"start": "1900-01-01T00:00:00Z", "end": "1900-01-02T00:00:00Z"},  # out of range
                       {"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},  # too long
                       {"start": "0.5"}):
            r = await http.get("/api/v1/dispatch/report", params=params, headers=auth)
            assert r.status_code == 422, (params, r.text)
        assert (await http.get("/api/v1/dispatch/report")).status_code == 401
        spec = (await http.get("/openapi.json")).json()["paths"]["/api/v1/dispatch/report"]["get"]
        assert "503" in spec["responses"] and "422" in spec["responses"]
