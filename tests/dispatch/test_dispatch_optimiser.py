"""The MILP's plan on small cases whose optimum is worked out by hand, and each fallback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from service.dispatch.optimiser import (
    Inputs,
    Plan,
    StoreInput,
    UnitInput,
    keep_previous,
    optimise,
)

T0 = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
HIGH, LOW, LOWER = Decimal("2.0"), Decimal("0.2"), Decimal("0.1")  # DKK per kWh of electricity


def _pump(**kw: object) -> UnitInput:
    base: dict[str, object] = {"id": "hp1", "capacity_kw": 200.0, "cop": (4.0,) * 4}
    base.update(kw)
    return UnitInput(**base)  # type: ignore[arg-type]


def _inputs(prices: tuple[Decimal, ...] | None, **kw: object) -> Inputs:
    base: dict[str, object] = {
        "start": T0, "heat_price_dkk_per_kwh": Decimal("0.3"), "electricity_dkk_per_kwh": prices,
        "it_heat_kw": (150.0,) * 4, "demand_kw": (100.0,) * 4, "dry_cooler_kw": (1000.0,) * 4,
        "units": (_pump(),), "rejection_cost_dkk_per_kwh": Decimal(0), "terminal_value_dkk_per_kwh": Decimal(0)}
    base.update(kw)
    return Inputs(**base)  # type: ignore[arg-type]


def _heat(plan: Plan) -> list[float]:
    return [round(s.heat_kw[0], 6) for s in plan.steps]


def _cooling_balance(plan: Plan, cops: tuple[float, ...]) -> None:
    for t, s in enumerate(plan.steps):
        source = sum(h * (1 - 1 / cops[t]) for h in s.heat_kw)
        assert source + s.direct_kw + s.rejected_kw == pytest.approx(s.it_heat_kw, abs=1e-6)


def test_the_store_charges_in_the_cheapest_step_and_covers_the_dear_one() -> None:
    """[high, low, lower, high], COP 4, heat 0.3 DKK/kWh, 100 kW demand, a 100 kWh store empty at the start.

    At COP 4 a heat kWh costs 0.5 (high), 0.05 (low), 0.025 (lower): selling it at 0.3 loses in the dear steps.
    Step 0: off (store empty). Step 1: 100 kW for the demand. Step 2: 200 kW (the pump's full output), 100 kW
    into the store (25 kWh). Step 3: off, the store gives 100 kW. Revenue 3 x 100 kW x 0.25 h x 0.3 = 22.50;
    electricity 25 kW x 0.25 h x 0.2 + 50 kW x 0.25 h x 0.1 = 2.50; one start at 1.00: margin 19.00.
    """
    store = StoreInput(capacity_kwh=100.0, initial_kwh=0.0)
    plan = optimise(_inputs((HIGH, LOW, LOWER, HIGH), store=store,
                            units=(_pump(start_cost_dkk=Decimal(1)),)), None, 10.0)
    assert plan.status == "optimal" and plan.reason == ""
    assert _heat(plan) == [0.0, 100.0, 200.0, 0.0]
    assert [s.on[0] for s in plan.steps] == [False, True, True, False]
    assert [round(s.charge_kw, 6) for s in plan.steps] == [0.0, 0.0, 100.0, 0.0]
    assert [round(s.discharge_kw, 6) for s in plan.steps] == [0.0, 0.0, 0.0, 100.0]
    assert [round(s.store_kwh, 6) for s in plan.steps] == [0.0, 0.0, 25.0, 0.0]
    assert [round(s.delivered_kw, 6) for s in plan.steps] == [0.0, 100.0, 100.0, 100.0]
    # The dry coolers take what the pump does not: 150, 150 - 75, 150 - 150, 150.
    assert [round(s.rejected_kw, 6) for s in plan.steps] == [150.0, 75.0, 0.0, 150.0]
    assert plan.expected_margin_dkk == Decimal("19.00")
    _cooling_balance(plan, (4.0,) * 4)


def test_without_a_store_the_pump_runs_only_when_heat_pays() -> None:
    """The same prices, no store: on in the two cheap steps at the demand, margin 2 x 7.50 - 1.25 - 0.625."""
    plan = optimise(_inputs((HIGH, LOW, LOWER, HIGH)), None, 10.0)
    assert _heat(plan) == [0.0, 100.0, 100.0, 0.0]
    assert plan.expected_margin_dkk == Decimal("13.12")  # 13.125 rounded half-even
    _cooling_balance(plan, (4.0,) * 4)


def test_negative_prices_run_the_pump_flat_out_and_reject_nothing() -> None:
    """At -0.5 DKK/kWh the pump is paid to run: 200 kW every step, 100 kW of it into the store (25 kWh a step,
    full after 4), so all 150 kW of IT heat goes through the pump and the dry coolers take nothing."""
    store = StoreInput(capacity_kwh=100.0, initial_kwh=0.0)
    plan = optimise(_inputs((Decimal("-0.5"),) * 4, store=store,
                            rejection_cost_dkk_per_kwh=Decimal("0.001")), None, 10.0)
    assert _heat(plan) == [200.0] * 4
    assert [round(s.rejected_kw, 6) for s in plan.steps] == [0.0] * 4
    assert [round(s.store_kwh, 6) for s in plan.steps] == [25.0, 50.0, 75.0, 100.0]
    # 4 x (100 kW x 0.25 h x 0.3 + 50 kW x 0.25 h x 0.5) = 4 x 13.75
    assert plan.expected_margin_dkk == Decimal("55.00")


def _min_run_case(**pump: object) -> Plan:
    """[low, high, high, low], minimum load 50 %: cheap steps earn 6.25, dear ones at minimum load lose 2.50."""
    return optimise(_inputs((LOW, HIGH, HIGH, LOW), units=(_pump(capacity_kw=100.0, min_load_fraction=0.5,
                                                                **pump),)), None, 10.0)


def test_without_a_minimum_run_time_the_pump_stops_through_the_dear_steps() -> None:
    """On, off, off, on: 2 x 6.25."""
    plan = _min_run_case()
    assert [s.on[0] for s in plan.steps] == [True, False, False, True]
    assert plan.expected_margin_dkk == Decimal("12.50")


def test_the_minimum_run_time_is_honoured() -> None:
    """Three steps' minimum run: running through at minimum load (6.25 - 2.5 - 2.5 + 6.25 = 7.50) beats
    starting only in the last step (6.25)."""
    plan = _min_run_case(min_run_steps=3)
    assert [s.on[0] for s in plan.steps] == [True, True, True, True]
    assert _heat(plan) == [100.0, 50.0, 50.0, 100.0]
    assert plan.expected_margin_dkk == Decimal("7.50")


def test_the_minimum_stop_time_is_honoured() -> None:
    """A three-step minimum stop forbids the two-step pause: run through (7.50) beats stopping for good (6.25)."""
    plan = _min_run_case(min_stop_steps=3)
    assert [s.on[0] for s in plan.steps] == [True, True, True, True]
    assert plan.expected_margin_dkk == Decimal("7.50")


def test_a_pump_still_in_its_minimum_run_time_stays_on() -> None:
    """Started one step ago with a three-step minimum run: on in steps 0 and 1 although step 0 is dear."""
    plan = optimise(_inputs((HIGH, HIGH, HIGH, HIGH), units=(_pump(
        min_load_fraction=0.5, min_run_steps=3, was_on=True, steps_in_state=1),)), None, 10.0)
    assert [s.on[0] for s in plan.steps] == [True, True, False, False]
    assert _heat(plan) == [100.0, 100.0, 0.0, 0.0]


def test_direct_exchange_comes_first_and_is_free() -> None:
    """A 60 kW direct exchanger: it sells 60 kW of IT heat at no cost; the pump (dear prices) stays off."""
    plan = optimise(_inputs((HIGH,) * 4, direct_exchange_kw=(60.0,) * 4), None, 10.0)
    assert [round(s.direct_kw, 6) for s in plan.steps] == [60.0] * 4
    assert _heat(plan) == [0.0] * 4
    assert [round(s.rejected_kw, 6) for s in plan.steps] == [90.0] * 4
    assert plan.expected_margin_dkk == Decimal("18.00")  # 4 x 60 kW x 0.25 h x 0.3


def test_more_it_heat_than_all_means_can_take_gives_the_cooling_first_safe_plan() -> None:
    """IT heat 1000 kW; the pump's source (150 kW) and the dry coolers (300 kW) cannot take it: infeasible."""
    plan = optimise(_inputs((LOW,) * 4, it_heat_kw=(1000.0,) * 4, dry_cooler_kw=(300.0,) * 4), None, 10.0)
    assert plan.status == "safe"
    assert plan.reason.startswith("infeasible")
    assert [s.heat_kw for s in plan.steps] == [(200.0,)] * 4
    assert [s.on for s in plan.steps] == [(True,)] * 4
    assert [s.rejected_kw for s in plan.steps] == [300.0] * 4
    assert plan.expected_margin_dkk is None


def test_the_network_cannot_take_heat_the_pumps_must_make_so_the_plan_is_infeasible() -> None:
    """The dry coolers take 50 of 150 kW: the pump must make ≥ 133 kW, the network takes 100: safe plan."""
    plan = optimise(_inputs((LOW,) * 4, dry_cooler_kw=(50.0,) * 4), None, 10.0)
    assert plan.status == "safe" and plan.reason.startswith("infeasible")


def test_missing_prices_fall_back_to_follow_demand_control() -> None:
    """No prices, or fewer than the horizon's steps: no plan, and the reason says how many were priced."""
    none = optimise(_inputs(None), None, 10.0)
    assert (none.status, none.steps, none.reason) == ("follow_demand", (), "missing prices: 0 of 4 steps priced")
    short = optimise(_inputs((LOW, LOW)), None, 10.0)
    assert (short.status, short.reason) == ("follow_demand", "missing prices: 2 of 4 steps priced")


def test_a_solver_timeout_keeps_the_previous_plan_shifted_to_now() -> None:
    """Time limit 0: the solver stops at once; the previous plan goes on from the new start."""
    previous = optimise(_inputs((HIGH, LOW, LOWER, HIGH)), None, 10.0)
    later = _inputs((HIGH, LOW, LOWER, HIGH), start=T0 + timedelta(minutes=30))
    plan = optimise(later, previous, 0.0)
    assert plan.status == "kept_previous"
    assert plan.reason.startswith("solver timeout")
    assert plan.steps == previous.steps[2:]
    assert plan.start == T0 + timedelta(minutes=30)
    assert plan.expected_margin_dkk is None


def test_a_solver_timeout_without_a_previous_plan_is_safe() -> None:
    """Nothing to keep, nothing found in no time: the safe plan, with the timeout named."""
    plan = optimise(_inputs((HIGH, LOW, LOWER, HIGH)), None, 0.0)
    assert plan.status == "safe"
    assert plan.reason == "solver timeout after " + plan.reason.split("after ")[1]
    assert "no previous plan" in plan.reason


def test_keep_previous_has_nothing_when_the_plan_is_used_up() -> None:
    """A previous plan whose last step is past gives no plan to keep."""
    previous = optimise(_inputs((LOW,) * 4), None, 10.0)
    assert keep_previous(previous, T0 + timedelta(hours=1), "timeout") is None
    assert keep_previous(None, T0, "timeout") is None


def test_unequal_inputs_are_refused_with_a_safe_plan() -> None:
    """A forecast shorter than the prices is a bug upstream: the safe plan names it."""
    plan = optimise(_inputs((LOW,) * 4, demand_kw=(100.0,) * 3), None, 10.0)
    assert plan.status == "safe"
    assert plan.reason == "invalid inputs: inputs of unequal length: it_heat_kw has 4 steps, demand_kw has 3"


def test_store_losses_and_terminal_value() -> None:
    """A full 100 kWh store losing 4 %/h (1 % a step) and worth nothing at the end is emptied into the
    demand first: the pump stays off while the store lasts (dear prices)."""
    store = StoreInput(capacity_kwh=100.0, initial_kwh=100.0, loss_per_hour=0.04)
    plan = optimise(_inputs((HIGH,) * 4, store=store), None, 10.0)
    assert _heat(plan) == [0.0] * 4
    # 99 kWh can be drawn in step 0 at most 100 kW·0.25 h = 25 kWh: 25 kWh each step while it lasts.
    contents = [round(s.store_kwh, 4) for s in plan.steps]
    assert contents == [74.0, 48.26, 22.7774, 0.0]
    assert plan.steps[-1].discharge_kw == pytest.approx(22.7774 * 0.99 / 0.25, abs=1e-3)


def test_identical_pumps_dispatched_as_a_count() -> None:
    """Three 100 kW pumps as one unit (count 3, minimum load 50 kW each), cheap prices, no store.

    Demand [250, 120, 40, 0]: three pumps make 250; two make 120 (one cannot, three would make at least 150);
    40 is below one pump's minimum and the network cannot take 50: all off. Margin (0.3 - 0.2/4) DKK/kWh x
    370 kW x 0.25 h = 23.125, less 3 starts x 0.50 = 21.625 (21.62 to the cent, half even)."""
    plan = optimise(_inputs((LOW,) * 4, it_heat_kw=(300.0,) * 4, demand_kw=(250.0, 120.0, 40.0, 0.0),
                            units=(_pump(capacity_kw=100.0, min_load_fraction=0.5, count=3,
                                         start_cost_dkk=Decimal("0.5")),)), None, 10.0)
    assert [s.on[0] for s in plan.steps] == [3, 2, 0, 0]
    assert _heat(plan) == [250.0, 120.0, 0.0, 0.0]
    assert plan.expected_margin_dkk == Decimal("21.62")


def test_an_unavailable_pump_is_never_planned() -> None:
    """Out of service: no heat even at negative prices, and the safe plan does not count on it either."""
    plan = optimise(_inputs((Decimal("-1"),) * 4, units=(_pump(available=False),)), None, 10.0)
    assert _heat(plan) == [0.0] * 4 and [s.on[0] for s in plan.steps] == [0] * 4
    safe = optimise(_inputs((LOW,) * 4, it_heat_kw=(5000.0,) * 4, units=(_pump(available=False),)), None, 10.0)
    assert safe.status == "safe" and [s.heat_kw for s in safe.steps] == [(0.0,)] * 4
