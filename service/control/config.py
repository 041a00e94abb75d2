"""Models of the `[control]` section: target, PID, heat pumps, CDU limit control and staging.

Self-contained: whether the points the loop names exist and are writable is a check across sections,
made by HeatrecConfig in service/config.py, which also re-exports these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from service.schema import ID_PATTERN, POINT_REF_PATTERN, StrictModel

__all__ = ["ControlCdu", "ControlConfig", "ControlCurvePoint", "ControlHeatPump", "ControlPid", "ControlStaging"]

_POINT_REF = POINT_REF_PATTERN


class ControlCurvePoint(StrictModel):
    """One breakpoint of the outdoor compensation curve."""

    outdoor: float = Field(description="outdoor temperature, °C")
    supply: float = Field(description="network supply temperature target at that outdoor temperature, °C")


class ControlPid(StrictModel):
    """PID gains; output and setpoint in °C."""

    kp: float = Field(default=1.0, ge=0, description="proportional gain, K of setpoint per K of error")
    ti_s: float | None = Field(default=60.0, gt=0, description="integral time; none = no integral action")
    td_s: float = Field(default=0.0, ge=0, description="derivative time (on the measurement); 0 = none")
    derivative_filter: float = Field(default=8.0, gt=0, description="N: the derivative is filtered with Td/N")
    tracking_time_s: float | None = Field(default=None, gt=0,
                                          description="anti-windup back-calculation time; none = sqrt(Ti·Td) or Ti")


class ControlHeatPump(StrictModel):
    """One heat pump the loop setpoints (all points are full point ids, device.point)."""

    id: str = Field(pattern=ID_PATTERN, description="name in status, staging and audit")
    setpoint: str = Field(pattern=_POINT_REF, description="writable supply setpoint point, °C")
    supply_temperature: str | None = Field(default=None, pattern=_POINT_REF, description="its own supply, °C")
    sg_ready: str | None = Field(default=None, pattern=_POINT_REF,
                                 description="writable SG-Ready point: staging writes 0 (run) or 1 (blocked)")
    capacity_limit: str | None = Field(
        default=None, pattern=_POINT_REF,
        description="writable capacity-limit point, % of nominal heat output: the dispatch plan's heat per pump "
                    "while it is applied, 100 whenever it is not (cooling first)")
    heartbeat: str | None = Field(default=None, pattern=_POINT_REF,
                                  description="writable heartbeat point, written every cycle to keep the "
                                              "device's watchdog from falling back to its local setpoint")
    status: str | None = Field(default=None, pattern=_POINT_REF,
                               description="status word; bit 1 (fault) makes the pump unavailable to staging")
    heat_output: str | None = Field(default=None, pattern=_POINT_REF, description="condenser heat, kW")
    capacity_kw: float = Field(default=1000.0, gt=0, description="nominal heat output for staging decisions")


class ControlCdu(StrictModel):
    """A CDU whose secondary supply temperature must stay at or below its allowable maximum."""

    supply_temperature: str = Field(pattern=_POINT_REF, description="secondary supply temperature point, °C")
    allowable_max: str | None = Field(default=None, pattern=_POINT_REF,
                                      description="point holding the allowable maximum, °C")
    allowable_max_value: float | None = Field(default=None, description="fixed allowable maximum when no point")

    @model_validator(mode="after")
    def _limit(self) -> ControlCdu:
        if self.allowable_max is None and self.allowable_max_value is None:
            raise ValueError("set allowable_max (a point) or allowable_max_value (°C)")
        return self


class ControlStaging(StrictModel):
    """Lead/lag staging of several heat pumps through their SG-Ready points."""

    min_run_s: float = Field(default=600.0, ge=0, description="a started pump runs at least this long")
    min_stop_s: float = Field(default=300.0, ge=0, description="a stopped pump stays off at least this long")
    stage_up_delay_s: float = Field(default=120.0, ge=0, description="need for one more pump must last this long")
    stage_down_delay_s: float = Field(default=600.0, ge=0, description="surplus of one pump must last this long")
    stage_up_load: float = Field(default=0.9, gt=0, le=1,
                                 description="stage up when the running pumps give more than this share of capacity")
    stage_down_load: float = Field(default=0.4, ge=0, lt=1,
                                   description="stage down when one pump fewer would run below this share")
    direct_source_temperature: str | None = Field(
        default=None, pattern=_POINT_REF,
        description="source temperature point; when it minus direct_approach_k reaches the target, the direct "
                    "exchanger alone holds the supply and the heat pumps are staged off")
    direct_approach_k: float = Field(default=3.0, ge=0, description="direct exchanger approach, K")
    direct_margin_k: float = Field(default=1.0, ge=0, description="hysteresis of the direct/boost decision, K")


class ControlConfig(StrictModel):
    """The supply-temperature loop: target, PID with feedforward, CDU limit, staging, safe state."""

    period_s: float = Field(default=1.0, gt=0, le=60, description="fixed cycle period")
    initial_mode: Literal["auto", "manual", "off"] = Field(default="auto", description="mode at start-up")
    supply_temperature: str = Field(pattern=_POINT_REF, description="controlled variable: network supply, °C")
    supply_temperature_check: str | None = Field(
        default=None, pattern=_POINT_REF,
        description="a second sensor of the same supply on another path (e.g. the heat pump's own supply "
                    "temperature, or a second meter): disagreeing with supply_temperature beyond "
                    "supply_temperature_check_band_k for supply_temperature_check_delay_s is a safe state")
    supply_temperature_check_band_k: float = Field(
        default=5.0, gt=0, description="largest difference between the two supply sensors that still agrees, K")
    supply_temperature_check_delay_s: float = Field(
        default=10.0, ge=0, le=600,
        description="how long they may disagree before the loop goes safe, and must agree again before it leaves")
    outdoor_temperature: str | None = Field(default=None, pattern=_POINT_REF,
                                            description="outdoor temperature point the curve reads")
    target: Literal["curve", "fixed"] = Field(default="curve", description="where the target comes from")
    fixed_target: float | None = Field(default=None, description="target when target = fixed, °C")
    curve: list[ControlCurvePoint] = Field(
        default_factory=lambda: [ControlCurvePoint(outdoor=-12.0, supply=80.0),
                                 ControlCurvePoint(outdoor=15.0, supply=65.0)],
        description="outdoor compensation breakpoints, outdoor ascending; flat outside")
    target_min: float = Field(default=50.0, description="lowest target (curve, fixed or override), °C")
    target_max: float = Field(default=85.0, description="highest target, °C")
    target_ramp_k_per_min: float = Field(default=3.0, gt=0, description="the target in force moves at most this fast")
    pid: ControlPid = ControlPid()
    feedforward: bool = Field(default=True, description="add the feedforward terms below to the PID output")
    feedforward_lead_s: float = Field(default=0.0, ge=0,
                                      description="target-rate lead: adds lead·d(target)/dt to cover the plant lag")
    feedforward_heat: list[str] = Field(default_factory=list, description="points summed as recovered heat, kW")
    feedforward_heat_gain: float = Field(default=0.0, description="K of setpoint per MW of recovered heat")
    feedforward_heat_reference_kw: float = Field(default=0.0, description="recovered heat at which that term is 0")
    feedforward_outdoor_gain: float = Field(default=0.0, description="K of setpoint per K of outdoor temperature")
    feedforward_outdoor_reference: float = Field(default=0.0, description="outdoor temperature where it is 0")
    heat_pumps: list[ControlHeatPump] = Field(min_length=1)
    setpoint_min: float = Field(default=40.0, description="lowest heat-pump setpoint the loop writes, °C")
    setpoint_max: float = Field(default=85.0, description="highest heat-pump setpoint the loop writes, °C")
    setpoint_rate_k_per_s: float = Field(default=0.5, gt=0, description="largest setpoint change per second")
    deadband_k: float = Field(default=0.05, ge=0, description="smaller setpoint changes wait for the refresh")
    refresh_s: float = Field(default=10.0, gt=0, description="unchanged setpoints are written again this often")
    start_grace_s: float = Field(default=30.0, ge=0, le=600,
                                 description="at start, wait this long for the first inputs before a safe state")
    request_expiry_default_s: float = Field(default=28800.0, gt=0,
                                            description="an operator override or manual mode without expires_in_s "
                                                        "ends after this (one 8-hour shift)")
    request_expiry_max_s: float = Field(default=259200.0, gt=0,
                                        description="longest expires_in_s an operator may ask (3 days)")
    state_file: str = Field(default="var/control-state.json",
                            description="mode, override and manual setpoint in force, restored at start")
    safe_setpoint: float | None = Field(
        default=None, description="written to every heat pump in the safe state; none = stop writing and let "
                                  "each heat pump's watchdog fall back to its local setpoint")
    cdus: list[ControlCdu] = Field(default_factory=list)
    cdu_margin_k: float = Field(default=0.5, ge=0, description="the CDU limit controller holds this below the max")
    cdu_limit_setpoint_min: float | None = Field(
        default=None, description="lowest setpoint the CDU limit asks for; none = setpoint_min. Below about the "
                                  "network return plus the condenser's design spread the heat pump cannot pass "
                                  "its heat into the network, so a lower setpoint would take less heat from the "
                                  "CDUs, not more")
    cdu_headroom_alarm_k: float | None = Field(
        default=1.5, gt=0, description="alarm (high) while a CDU's allowable maximum minus its supply is below "
                                       "this; above cdu_margin_k, so it warns before the headroom is gone; "
                                       "none = no such alarm")
    cdu_headroom_alarm_delay_s: float = Field(default=5.0, ge=0, le=3600,
                                              description="how long the headroom must stay low before it alarms")
    cdu_pid: ControlPid = ControlPid(kp=4.0, ti_s=30.0, td_s=90.0)
    stale_after_s: float = Field(default=5.0, gt=0, description="an input older than this is stale")
    frozen_after_s: float | None = Field(
        default=300.0, gt=0, description="the supply temperature unchanged this long counts as a frozen sensor")
    staging: ControlStaging = ControlStaging()

    @model_validator(mode="after")
    def _consistent(self) -> ControlConfig:
        if self.request_expiry_default_s > self.request_expiry_max_s:
            raise ValueError(f"request_expiry_default_s ({self.request_expiry_default_s}) is above "
                             f"request_expiry_max_s ({self.request_expiry_max_s})")
        if self.target_min > self.target_max:
            raise ValueError(f"target_min ({self.target_min}) is above target_max ({self.target_max})")
        if self.setpoint_min > self.setpoint_max:
            raise ValueError(f"setpoint_min ({self.setpoint_min}) is above setpoint_max ({self.setpoint_max})")
        if self.target == "fixed" and self.fixed_target is None:
            raise ValueError("target = 'fixed' needs fixed_target")
        if self.target == "curve":
            if len(self.curve) < 2:
                raise ValueError("curve needs at least two breakpoints")
            if self.outdoor_temperature is None:
                raise ValueError("target = 'curve' needs outdoor_temperature (a point)")
        outs = [p.outdoor for p in self.curve]
        if any(outs[i + 1] <= outs[i] for i in range(len(outs) - 1)):
            raise ValueError("curve breakpoints must have strictly ascending outdoor temperatures")
        if self.safe_setpoint is not None and not self.setpoint_min <= self.safe_setpoint <= self.setpoint_max:
            raise ValueError(f"safe_setpoint ({self.safe_setpoint}) is outside setpoint_min..setpoint_max")
        if self.cdu_headroom_alarm_k is not None and self.cdu_headroom_alarm_k <= self.cdu_margin_k:
            raise ValueError(f"cdu_headroom_alarm_k ({self.cdu_headroom_alarm_k}) must be above cdu_margin_k "
                             f"({self.cdu_margin_k}): it warns before the margin the CDU limit holds is used up")
        floor = self.cdu_limit_setpoint_min
        if floor is not None and not self.setpoint_min <= floor <= self.setpoint_max:
            raise ValueError(f"cdu_limit_setpoint_min ({floor}) is outside setpoint_min..setpoint_max")
        if self.supply_temperature_check == self.supply_temperature:
            raise ValueError("supply_temperature_check must be another sensor than supply_temperature")
        ids = [h.id for h in self.heat_pumps]
        if len(set(ids)) != len(ids):
            raise ValueError("heat_pumps ids must be unique")
        return self

    def point_refs(self) -> list[tuple[str, str, bool]]:
        """(field path, point id, must be writable) for every point the loop reads or writes."""
        refs: list[tuple[str, str, bool]] = [("control.supply_temperature", self.supply_temperature, False)]
        if self.supply_temperature_check:
            refs.append(("control.supply_temperature_check", self.supply_temperature_check, False))
        if self.outdoor_temperature:
            refs.append(("control.outdoor_temperature", self.outdoor_temperature, False))
        refs += [(f"control.feedforward_heat[{i}]", p, False) for i, p in enumerate(self.feedforward_heat)]
        for i, hp in enumerate(self.heat_pumps):
            for name in ("setpoint", "supply_temperature", "sg_ready", "capacity_limit", "heartbeat", "status",
                         "heat_output"):
                point = getattr(hp, name)
                if point is not None:
                    refs.append((f"control.heat_pumps[{i}].{name}", point, name in ("setpoint", "sg_ready",
                                                                                      "capacity_limit", "heartbeat")))
        for i, cdu in enumerate(self.cdus):
            refs.append((f"control.cdus[{i}].supply_temperature", cdu.supply_temperature, False))
            if cdu.allowable_max:
                refs.append((f"control.cdus[{i}].allowable_max", cdu.allowable_max, False))
        if self.staging.direct_source_temperature:
            refs.append(("control.staging.direct_source_temperature", self.staging.direct_source_temperature, False))
        return refs
