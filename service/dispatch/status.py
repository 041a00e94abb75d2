"""What `GET /api/v1/dispatch` shows of the dispatch task: the plan, the prices it used, the fallback in force."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.dispatch.task import DispatchTask

PlanState = Literal["optimal", "kept_previous", "follow_demand", "safe"]


class DispatchStepOut(BaseModel):
    """One plan step (powers are means over the step, kW; the store's content at its end, kWh)."""

    start: datetime = Field(description="start of the step in price time (UTC)")
    heat_kw: dict[str, float] = Field(description="heat output per heat pump")
    on: dict[str, bool] = Field(description="whether each heat pump runs")
    electricity_kw: float
    direct_kw: float
    rejected_kw: float = Field(description="heat sent to the dry coolers")
    charge_kw: float
    discharge_kw: float
    store_kwh: float
    delivered_kw: float = Field(description="heat into the network")
    electricity_dkk_per_kwh: Decimal | None = Field(description="spot price plus tariffs and taxes used")


class DispatchCommandOut(BaseModel):
    """The step in force as the controller's constraints."""

    step_start: str
    in_service: list[str]
    sg_ready: dict[str, int] = Field(description="SG-Ready state per pump in service: 0 normal, 2 encouraged")
    heat_limit_kw: dict[str, float]
    capacity_limit_percent: dict[str, float] = Field(
        default_factory=dict, description="the plan's heat as a capacity limit per running pump, % of its nominal "
                                          "heat output (the share plus a margin, rounded up; at least its "
                                          "minimum load); the controller writes it while the step is applied")


class DispatchSetRequest(BaseModel):
    """Switch dispatch on or off."""

    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool = Field(description="true: the plan constrains the heat pumps; false: today's control")


class DispatchStatus(BaseModel):
    """The dispatch task now: switch, plan, fallback and what the controller does with the step in force."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "enabled": True, "enabled_by": "configuration", "status": "follow_demand", "fallback": True,
        "reason": "missing prices: prices.json: cannot read price file (No such file or directory)",
        "execution": None, "last_solve_at": "2026-03-01T12:00:00Z", "solve_s": 0.01, "expected_margin_dkk": None,
        "heat_price_dkk_per_kwh": "0.35", "plan_start": None, "step_s": 900.0, "plant_step_s": 900.0,
        "current_step": None, "command": None, "planned_heat_kw": None, "actual_heat_kw": 640.0,
        "fallback_episodes": 1, "steps": [], "forecast": "history", "demand_forecast": "none",
        "forecast_reason": "hp2 COP: ran in 3 of 16 buckets", "history_buckets": 1344,
        "history_fitted_at": "2026-03-01T11:00:05Z", "cop_source": {"hp1": "calibrated", "hp2": "configured"},
        "carnot_efficiency": {"hp1": 0.47, "hp2": 0.5}, "cop_running_buckets": {"hp1": 880, "hp2": 3}}]})
    enabled: bool
    enabled_by: str = Field(description="who switched it last: configuration, or an operator")
    status: PlanState | None = Field(description="the plan in force: optimal, or the fallback it is; none before "
                                                 "the first solve")
    fallback: bool = Field(description="true while the plan in force is not a fresh solver plan")
    reason: str = Field(description="why the fallback (empty for a fresh plan)")
    execution: str | None = Field(description="what the controller does with the step: applied, yielded:<why> "
                                              "(cooling first), inactive:<mode>; none = no constraints")
    last_solve_at: datetime | None
    solve_s: float = Field(description="duration of the last solve, s")
    expected_margin_dkk: Decimal | None = Field(description="heat revenue - electricity - wear over the plan")
    heat_price_dkk_per_kwh: Decimal
    plan_start: datetime | None
    step_s: float = Field(description="length of a plan step in price time, s (the prices' 15 minutes)")
    plant_step_s: float = Field(description="how long a step lasts on the plant, s (shorter: a compressed run)")
    current_step: int | None = Field(description="index of the step in force")
    command: DispatchCommandOut | None
    planned_heat_kw: float | None = Field(description="the step in force's heat-pump output")
    actual_heat_kw: float | None = Field(description="the dispatched heat pumps' measured output")
    fallback_episodes: int
    steps: list[DispatchStepOut]
    forecast: Literal["history", "persistence"] = Field(
        default="persistence", description="IT heat over the horizon: the history's hour-of-week profile (anchored "
                                           "at the measurement now), or the measurement now held")
    demand_forecast: Literal["history", "persistence", "none"] = Field(
        default="none", description="network demand: the history's model at today's outdoor temperature, the "
                                    "measurement now held, or none (no demand points)")
    forecast_reason: str = Field(default="", description="why a part is not from history (empty when all is)")
    history_buckets: int = Field(default=0, description="15-minute buckets of IT-heat history in the fit")
    history_fitted_at: datetime | None = Field(default=None, description="when the fit in force was made")
    cop_source: dict[str, Literal["calibrated", "configured"]] = Field(
        default_factory=dict, description="per pump: Carnot efficiency calibrated from measured COP, or configured")
    carnot_efficiency: dict[str, float] = Field(default_factory=dict, description="per pump: the efficiency in force")
    cop_running_buckets: dict[str, int] = Field(default_factory=dict,
                                                description="per pump: running buckets of the calibration")
    capacity_limit_written: dict[str, float] = Field(
        default_factory=dict, description="per heat pump with a capacity_limit point: the limit the controller "
                                          "writes now, % of nominal heat output (100 whenever the step is not "
                                          "applied: cooling first)")


def dispatch_status(task: DispatchTask) -> DispatchStatus:
    """Build the status from the task's state."""
    plan, inputs = task.plan, task.inputs
    prices = inputs.electricity_dkk_per_kwh if inputs is not None else None
    steps: list[DispatchStepOut] = []
    if plan is not None:
        offset = 0
        if inputs is not None and plan.steps:
            offset = max(int((plan.steps[0].start - inputs.start).total_seconds() // inputs.step_s), 0)
        for i, s in enumerate(plan.steps):
            price = prices[offset + i] if prices is not None and offset + i < len(prices) else None
            steps.append(DispatchStepOut(
                start=s.start, heat_kw=dict(zip(plan.unit_ids, (round(h, 3) for h in s.heat_kw), strict=True)),
                on=dict(zip(plan.unit_ids, (bool(x) for x in s.on), strict=True)),
                electricity_kw=round(s.electricity_kw, 3), direct_kw=round(s.direct_kw, 3),
                rejected_kw=round(s.rejected_kw, 3),
                charge_kw=round(s.charge_kw, 3), discharge_kw=round(s.discharge_kw, 3),
                store_kwh=round(s.store_kwh, 3), delivered_kw=round(s.delivered_kw, 3),
                electricity_dkk_per_kwh=price))
    index = task.current_index()
    cmd = task.controller.dispatch
    last = task.controller.last
    return DispatchStatus(
        enabled=task.enabled, enabled_by=task.enabled_by, status=plan.status if plan else None,
        fallback=plan.is_fallback if plan else False, reason=plan.reason if plan else "",
        execution=last.dispatch if last is not None and cmd is not None else None,
        last_solve_at=task.last_solve_at, solve_s=round(task.stats.last_solve_s, 4),
        expected_margin_dkk=plan.expected_margin_dkk if plan else None,
        heat_price_dkk_per_kwh=task.cfg.heat_price_dkk_per_mwh / 1000,
        plan_start=plan.start if plan and plan.steps else None, step_s=plan.step_s if plan else 900.0,
        plant_step_s=task.cfg.step_s, current_step=index,
        command=DispatchCommandOut(step_start=cmd.step_start, in_service=sorted(cmd.in_service),
                                   sg_ready=cmd.sg_ready, heat_limit_kw=cmd.heat_limit_kw,
                                   capacity_limit_percent=cmd.capacity_limit) if cmd else None,
        planned_heat_kw=round(sum(plan.steps[index].heat_kw), 3) if plan and index is not None else None,
        actual_heat_kw=task.measure().heat_output_kw, fallback_episodes=task.stats.episodes, steps=steps,
        capacity_limit_written=dict(last.capacity_limits) if last is not None else {}, **_history_fields(task))


def _history_fields(task: DispatchTask) -> dict[str, Any]:
    """Where the forecasts and the COP come from (service/dispatch/history.py)."""
    h, pumps = task.history, [hp.id for hp in task.cfg.heat_pumps]
    fit = h.fit
    return {"forecast": h.forecast, "demand_forecast": h.demand_forecast, "forecast_reason": h.reason(),
            "history_buckets": fit.buckets if fit is not None else 0,
            "history_fitted_at": fit.fitted_at if fit is not None else None,
            "cop_source": {p: h.cop_source(p) for p in pumps},
            "carnot_efficiency": {p: round(h.efficiency(p), 4) for p in pumps},
            "cop_running_buckets": {p: fit.running_buckets.get(p, 0) if fit is not None else 0 for p in pumps}}
