"""Closed-loop runs on simulated time: the pure controller against the plant model, no network.

Used by bench/bench_control.py and tests/control (as `bench.closed_loop`). The plant's protocol faces
are bypassed: the harness maps model state to a process image with the demo's point ids and applies
the controller's writes to the model's command methods, so a scenario of hours runs in well under a
second. It lives here, not in simulators/, because it couples the service's controller to the plant
model: simulators never import the service runtime (tests/test_layering.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from service.clock import VirtualClock
from service.config import ControlConfig, SimCdu, SimHeatMeter, SimHeatPump, SimulationConfig
from service.control.controller import Controller
from service.control.model import ProcessImage, Reading
from simulators.plant import PlantModel

METER = "meter1.flow_temperature"
Event = Callable[[PlantModel], None]


@dataclass
class Scenario:
    """A named closed-loop scenario: plant, disturbances by time, how long, where the metrics start."""

    name: str
    plant: SimulationConfig
    duration_s: float
    disturbance_s: float  # metrics (overshoot, settling) are measured from here
    events: list[tuple[float, Event]] = field(default_factory=list)
    outdoor: Callable[[float], float] | None = None  # outdoor temperature over elapsed time
    freeze_at_s: float | None = None  # the meter's flow temperature sticks from here (frozen sensor)
    control: dict[str, object] = field(default_factory=dict)  # control_config overrides for this plant

    def config(self, feedforward: bool = True, **overrides: object) -> ControlConfig:
        """The loop for this scenario's plant; feedforward=False gives the plain-PI baseline."""
        return control_config(feedforward, **{**self.control, **overrides})


@dataclass
class Metrics:
    """What one scenario run measured."""

    name: str
    iae: float  # K·s from warm-up end, while the loop tracks (not in a safe state, not held by the CDU limit)
    max_error_after_settling: float  # K
    overshoot: float  # K above the target after the disturbance
    settling_time_s: float | None  # after the disturbance, |error| ≤ band for good; None = never
    cdu_violations: int  # cycles with a CDU supply above its allowable maximum
    safe_state_s: float  # time spent in a safe state
    constrained_s: float  # time the CDU limit shaped the setpoint
    min_cdu_headroom_k: float
    first_safe_state_s: float | None = None

    def line(self) -> str:
        """One human-readable line."""
        settle = "never" if self.settling_time_s is None else f"{self.settling_time_s:.0f} s"
        return (f"{self.name:<16} IAE {self.iae:8.1f} K·s"
                f"  max err after settling {self.max_error_after_settling:5.2f} K"
                f"  overshoot {self.overshoot:5.2f} K  settling {settle:>7}  CDU violations {self.cdu_violations}"
                f"  min CDU headroom {self.min_cdu_headroom_k:5.2f} K  safe {self.safe_state_s:.0f} s"
                f"  cdu-limited {self.constrained_s:.0f} s")


def base_plant(**overrides: object) -> SimulationConfig:
    """Two 600 kW heat pumps on one 800 kW CDU loop (air-cooled style, 30/40 °C), limited dry coolers."""
    data: dict[str, object] = {
        "seed": 7, "outdoor_temperature": 0.0, "dry_cooler_capacity_kw": 500.0,
        "cdus": [SimCdu(id="cdu1", it_load_kw=800.0, supply_temperature_setpoint=30.0,
                        supply_temperature_allowable_max=35.0)],
        "heat_pumps": [SimHeatPump(id=f"hp{i}", capacity_kw=600.0, supply_setpoint=70.0, time_constant_s=60.0,
                                   dead_time_s=10.0, trip_temperature=95.0) for i in (1, 2)],
        "heat_meters": [SimHeatMeter(id="meter1")],
    }
    data.update(overrides)
    return SimulationConfig.model_validate(data)


def control_config(feedforward: bool = True, **overrides: object) -> ControlConfig:
    """The loop for base_plant, with the demo's point ids; feedforward=False is the plain-PI baseline."""
    data: dict[str, object] = {
        "supply_temperature": METER, "outdoor_temperature": "hp1.outdoor_temperature",
        "curve": [{"outdoor": -12.0, "supply": 80.0}, {"outdoor": 15.0, "supply": 65.0}],
        "target_min": 55.0, "target_max": 85.0, "target_ramp_k_per_min": 3.0,
        "pid": {"kp": 1.0, "ti_s": 60.0, "td_s": 0.0},
        "feedforward": feedforward, "feedforward_lead_s": 70.0 if feedforward else 0.0,
        "setpoint_min": 40.0, "setpoint_max": 85.0, "setpoint_rate_k_per_s": 0.5, "safe_setpoint": 65.0,
        "cdu_limit_setpoint_min": 55.0,  # return (~36 °C) + the condensers' design spread (20 K)
        "frozen_after_s": 30.0,
        "heat_pumps": [{"id": f"hp{i}", "setpoint": f"hp{i}.supply_setpoint", "sg_ready": f"hp{i}.sg_ready",
                        "heartbeat": f"hp{i}.heartbeat", "status": f"hp{i}.status",
                        "heat_output": f"hp{i}.heat_output", "capacity_kw": 600.0} for i in (1, 2)],
        "cdus": [{"supply_temperature": "cdu1.secondary_supply_temperature",
                  "allowable_max": "cdu1.supply_temperature_allowable_max"}],
        "staging": {"min_run_s": 300.0, "min_stop_s": 300.0, "stage_up_delay_s": 60.0, "stage_down_delay_s": 600.0,
                    "stage_down_load": 0.3},
    }
    data.update(overrides)
    if not feedforward:
        data["feedforward_lead_s"] = 0.0
    return ControlConfig.model_validate(data)


def image_of(model: PlantModel, now_s: float, frozen: dict[str, float] | None = None) -> ProcessImage:
    """The model's state under the demo's point ids (a frozen point reports its stuck value)."""
    r: dict[str, Reading] = {}
    for cdu_id, cdu in model.cdus.items():
        # What the CDU's sensor reports (with its noise: a true value at rest would look frozen).
        r[f"{cdu_id}.secondary_supply_temperature"] = Reading(model.reported_cdu(cdu_id).supply_temperature)
        r[f"{cdu_id}.supply_temperature_allowable_max"] = Reading(cdu.supply_temperature_allowable_max)
        r[f"{cdu_id}.secondary_return_temperature"] = Reading(cdu.return_temperature)
        r[f"{cdu_id}.heat_removed"] = Reading(cdu.heat_removed_kw)
    for hp_id, hp in model.heat_pumps.items():
        r[f"{hp_id}.supply_temperature"] = Reading(hp.supply_temperature)
        r[f"{hp_id}.source_inlet_temperature"] = Reading(hp.source_inlet_temperature)
        r[f"{hp_id}.status"] = Reading(float(hp.status_word))
        r[f"{hp_id}.heat_output"] = Reading(hp.heat_output_kw)
        r[f"{hp_id}.outdoor_temperature"] = Reading(round(model.outdoor_temperature, 1))
    for meter_id, meter in model.heat_meters.items():
        r[f"{meter_id}.flow_temperature"] = Reading(meter.flow_temperature_c)
        r[f"{meter_id}.power"] = Reading(meter.power_kw)
    for point, value in (frozen or {}).items():
        r[point] = Reading(value)
    return ProcessImage(now_s, r)


def apply(model: PlantModel, writes: dict[str, float]) -> None:
    """Carry the controller's writes out on the model, as the Modbus face would."""
    for point, value in writes.items():
        device, name = point.split(".", 1)
        if name == "supply_setpoint":
            model.set_heat_pump_setpoint(device, round(value, 1))  # int16, 0.1 scale on the wire
        elif name == "sg_ready":
            model.set_sg_ready(device, int(value))
        elif name == "heartbeat":
            model.heartbeat(device, int(value))


def run(scenario: Scenario, cfg: ControlConfig, *, warmup_s: float = 300.0, band_k: float = 0.5,
        trace: list[tuple[float, float, float | None, float]] | None = None) -> Metrics:
    """Run one scenario with a 1 s cycle; returns its metrics (optionally a (t, target, y, cdu) trace)."""
    clock = VirtualClock()
    model = PlantModel(scenario.plant, clock)
    ctl = Controller(cfg)
    dt = cfg.period_s
    events = sorted(scenario.events, key=lambda e: e[0])
    frozen: dict[str, float] = {}
    iae = overshoot = safe_s = constrained_s = 0.0
    violations = 0
    min_headroom = math.inf
    first_safe: float | None = None
    errors: list[tuple[float, float]] = []
    t = 0.0
    while t < scenario.duration_s:
        while events and events[0][0] <= t:
            events.pop(0)[1](model)
        if scenario.outdoor is not None:
            model.outdoor_temperature = scenario.outdoor(t)
        if scenario.freeze_at_s is not None and t >= scenario.freeze_at_s and METER not in frozen:
            frozen[METER] = model.heat_meters["meter1"].flow_temperature_c
        res = ctl.step(image_of(model, t, frozen), dt)
        apply(model, res.writes)
        clock.advance(dt)
        model.step(dt)
        t += dt
        y = model.heat_meters["meter1"].flow_temperature_c  # the true supply, whatever the sensor says
        for cdu in model.cdus.values():
            room = cdu.supply_temperature_allowable_max - cdu.supply_temperature
            min_headroom = min(min_headroom, room)
            violations += room < 0
        if trace is not None:
            trace.append((t, res.target or math.nan, y, max(c.supply_temperature for c in model.cdus.values())))
        if res.safe_state:
            safe_s += dt
            first_safe = t if first_safe is None else first_safe
            continue
        if res.constraint == "cdu_limit":
            constrained_s += dt  # IT cooling first: the target is given up on purpose, not a tracking error
            continue
        if t < warmup_s or res.target is None:
            continue
        e = res.target - y
        iae += abs(e) * dt
        if t >= scenario.disturbance_s:
            errors.append((t, e))
            overshoot = max(overshoot, -e)
    settle: float | None = None
    max_after = 0.0
    last_out = next((t for t, e in reversed(errors) if abs(e) > band_k), None)
    if errors and (last_out is None or last_out < errors[-1][0]):
        settle = 0.0 if last_out is None else last_out - scenario.disturbance_s
        max_after = max((abs(e) for t, e in errors if last_out is None or t > last_out), default=0.0)
    return Metrics(scenario.name, iae, max_after, overshoot, settle, violations, safe_s, constrained_s,
                   min_headroom, first_safe)


def _scale(x: float) -> Event:
    def event(model: PlantModel) -> None:
        model.it_load_scale = x
    return event


def _trip(hp_id: str) -> Event:
    def event(model: PlantModel) -> None:
        model.set_fault(hp_id, True)
    return event


def dlc_plant() -> SimulationConfig:
    """Direct liquid cooling at 50/60 °C: a direct exchanger passes 800 kW, two heat pumps boost the rest."""
    return SimulationConfig.model_validate({
        "seed": 3, "outdoor_temperature": -5.0, "dh_design_demand_kw": 3000.0, "direct_exchange_kw": 800.0,
        "direct_exchange_approach_k": 3.0, "dry_cooler_capacity_kw": 2000.0,
        "cdus": [SimCdu(id="cdu1", it_load_kw=2000.0, supply_temperature_setpoint=50.0,
                        supply_temperature_allowable_max=53.0, setpoint_min=40.0, setpoint_max=55.0)],
        "heat_pumps": [SimHeatPump(id=f"hp{i}", capacity_kw=1000.0, supply_setpoint=70.0, time_constant_s=60.0,
                                   dead_time_s=10.0) for i in (1, 2)],
        "heat_meters": [SimHeatMeter(id="meter1")]})


# The direct exchanger's share dilutes the boosted water: less IT heat, less boost, a lower mix. The mixing
# balance asks about 10 K more setpoint per MW of IT load lost, but far less per MW gained (the boost is then
# capped by network demand); -3 K/MW is the best single linear gain over the up and down steps here.
DLC_CONTROL: dict[str, object] = {
    "curve": [{"outdoor": -12.0, "supply": 68.0}, {"outdoor": 15.0, "supply": 58.0}], "target_min": 55.0,
    "feedforward_heat": ["cdu1.heat_removed"], "feedforward_heat_gain": -3.0,
    "feedforward_heat_reference_kw": 2000.0,
    "heat_pumps": [{"id": f"hp{i}", "setpoint": f"hp{i}.supply_setpoint", "heartbeat": f"hp{i}.heartbeat",
                    "status": f"hp{i}.status", "capacity_kw": 1000.0} for i in (1, 2)],
}


def suite() -> list[Scenario]:
    """The five scenarios of issue 6, and IT-load steps on a direct-exchange plant."""
    def ramp(t: float) -> float:  # -10 → +15 °C over an hour, after 10 minutes
        return -10.0 + 25.0 * min(max((t - 600.0) / 3600.0, 0.0), 1.0)

    return [
        Scenario("it_load_steps", base_plant(outdoor_temperature=-5.0), 3600.0, 600.0,
                 [(600.0, _scale(1.3)), (1800.0, _scale(0.7)), (2700.0, _scale(1.0))]),
        Scenario("outdoor_ramp", base_plant(outdoor_temperature=-10.0), 5400.0, 600.0, outdoor=ramp),
        Scenario("heat_pump_trip", base_plant(outdoor_temperature=0.0), 3000.0, 900.0, [(900.0, _trip("hp1"))]),
        Scenario("frozen_sensor", base_plant(outdoor_temperature=0.0), 1800.0, 900.0, freeze_at_s=900.0),
        # 1.5 K below the limit, no dry-cooler reserve: +30 % IT load would overheat it without the limit.
        Scenario("cdu_near_limit", base_plant(
            outdoor_temperature=-5.0, dry_cooler_capacity_kw=0.0,
            cdus=[SimCdu(id="cdu1", it_load_kw=800.0, supply_temperature_setpoint=30.0,
                         supply_temperature_allowable_max=31.5)]),
            3600.0, 600.0, [(600.0, _scale(1.3)), (2400.0, _scale(1.0))]),
        Scenario("dlc_load_steps", dlc_plant(), 3600.0, 600.0,
                 [(600.0, _scale(1.3)), (1800.0, _scale(0.7)), (2700.0, _scale(1.0))], control=DLC_CONTROL),
    ]
