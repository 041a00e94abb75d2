"""Plant physics: IT load → CDU loop → heat pump → district heating, metered per EN 1434.

The model is deliberately simple but keeps the relations a control engineer checks:
energy balances close, COP follows a Carnot fraction, temperatures lag their setpoints,
and the meter integrates flow * k * Δθ into a register that never decreases.
It is deterministic for a given seed and sequence of `step` calls. Over 400 lines because the energy
balance is closed in one `step` across all parts; splitting it would scatter that balance.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections import deque
from dataclasses import dataclass, replace

from service.clock import Clock
from simulators.config import SimCdu, SimHeatMeter, SimHeatPump, SimHeatStore, SimulationConfig
from simulators.water import heat_coefficient

log = logging.getLogger(__name__)

CP_WATER = 4.18  # kJ/(kg·K), loop water between 25 and 75 °C
WATER_DENSITY = 986.0  # kg/m³ near 55 °C, the heat store's water
CDU_LOOP_DENSITY = 994.0  # kg/m³ at ~35 °C, converts the CDU mass flow to L/min
CDU_DESIGN_DELTA_K = 10.0  # the CDU pump holds this secondary spread at any load
CDU_NOMINAL_PUMP_PERCENT = 80.0  # pump speed at nominal IT load, leaving headroom
CDU_MIN_PUMP_PERCENT = 20.0
CDU_LOAD_SWING = 0.03  # ±3 % slow IT load variation (period below)
CDU_LOAD_PERIOD_S = 1800.0
CDU_LOAD_NOISE = 0.003  # relative process noise on the IT load
CDU_TEMPERATURE_NOISE_K = 0.02  # noise of the CDU's secondary supply and return sensors, as reported
CDU_ALLOWABLE_MAX_RANGE = (0.0, 100.0)  # °C a CDU panel accepts as its allowable maximum (the EURange)
HX_APPROACH_K = 2.0  # CDU heat exchanger: primary side leaves this much below secondary return
MIN_LIFT_K = 5.0  # below this lift the Carnot formula explodes; real compressors have a floor
MAX_COP = 10.0
MIN_COP = 1.1  # at COP ≤ 1 it would be an electric heater; keeps Q_evap = Q_cond·(COP-1)/COP positive
DH_DESIGN_SPREAD_K = 20.0  # DH pump sized to carry the full capacity at this spread
SG_READY_SHIFT_K = {0: 0.0, 1: 0.0, 2: 3.0, 3: 5.0}  # setpoint raise for encouraged / forced
METER_FLOW_NOISE = 0.002  # relative noise of the meter's flow sensor
METER_TEMPERATURE_NOISE_K = 0.01  # noise of each sensor of the temperature pair
METER_MIN_DELTA_K = 0.5  # below this the calculator counts no energy


class SgReady(enum.IntEnum):
    """SG-Ready operating state as written to the heat pump."""

    NORMAL = 0
    BLOCKED = 1
    ENCOURAGED = 2
    FORCED = 3


@dataclass
class CduState:
    """A CDU's true state (DMTF Redfish CoolingUnit names); `PlantModel.reported_cdu` is what it serves."""

    it_load_kw: float
    supply_temperature: float
    return_temperature: float
    flow_liters_per_minute: float
    heat_removed_kw: float
    pump_speed_percent: float
    valve_position_percent: float
    supply_temperature_setpoint: float
    supply_temperature_allowable_max: float


@dataclass
class HeatPumpState:
    """What a heat pump controller reports, plus its command inputs."""

    supply_temperature: float
    return_temperature: float
    source_inlet_temperature: float
    source_outlet_temperature: float
    cop: float
    heat_output_kw: float
    electric_power_kw: float
    evaporator_heat_kw: float
    remote_setpoint: float
    local_setpoint: float
    sg_ready: SgReady = SgReady.NORMAL
    running: bool = True
    fault: bool = False
    watchdog_armed: bool = False
    watchdog_fallback: bool = False
    heartbeat: int = 0
    electric_energy_kwh: float = 0.0  # the pump's own electricity meter, never reset
    tripped_on_temperature: bool = False
    capacity_limit_percent: float = 100.0  # the commanded cap on the heat output, % of capacity_kw

    @property
    def status_word(self) -> int:
        """bit0 running, bit1 fault/trip, bit2 watchdog fallback active."""
        return int(self.running) | int(self.fault) << 1 | int(self.watchdog_fallback) << 2


@dataclass
class HeatMeterState:
    """An EN 1434 heat meter's registers and instantaneous values."""

    serial: str
    energy_gj: float
    volume_m3: float
    power_kw: float
    flow_m3h: float
    flow_temperature_c: float
    return_temperature_c: float


@dataclass
class HeatStoreState:
    """The accumulator tank: its content (fully mixed), and what flowed in and out in the last step."""

    capacity_kwh: float
    content_kwh: float
    charge_kw: float = 0.0
    discharge_kw: float = 0.0
    loss_kw: float = 0.0
    min_temperature: float = 40.0
    max_temperature: float = 70.0

    @property
    def state_of_charge(self) -> float:
        """Content as a share of full, 0..1."""
        return self.content_kwh / self.capacity_kwh if self.capacity_kwh > 0 else 0.0

    @property
    def temperature(self) -> float:
        """Mean water temperature, °C."""
        return self.min_temperature + self.state_of_charge * (self.max_temperature - self.min_temperature)


def store_capacity_kwh(cfg: SimHeatStore) -> float:
    """Heat held between the empty and the full temperature, kWh (water's heat capacity and density near 55 °C)."""
    return cfg.volume_m3 * CP_WATER * WATER_DENSITY * (cfg.max_temperature - cfg.min_temperature) / 3600.0


@dataclass
class EnergyLedger:
    """Energy integrals since start, kWh: what the balance IT = delivered - work + dry + losses checks."""

    it_heat: float = 0.0
    direct_exchange: float = 0.0
    condenser_heat: float = 0.0
    compressor_work: float = 0.0
    dry_cooler: float = 0.0
    losses: float = 0.0
    delivered: float = 0.0
    unremoved: float = 0.0  # heat neither recovered nor rejected: it warms the CDU loop
    store_charged: float = 0.0  # into the heat store (not delivered yet)
    store_discharged: float = 0.0  # out of the heat store into the network (part of delivered)
    store_losses: float = 0.0  # through the tank's shell

    def imbalance(self) -> float:
        """IT heat minus (delivered + stored - work + dry coolers + losses + unremoved), kWh; zero when they close."""
        return self.it_heat - (self.delivered + self.store_charged - self.store_discharged - self.compressor_work
                               + self.dry_cooler + self.losses + self.unremoved)


def carnot_cop(t_hot_c: float, t_cold_c: float, eta: float) -> float:
    """COP = η · T_hot / (T_hot - T_cold), kelvin; lift floored at MIN_LIFT_K, COP kept in MIN..MAX_COP."""
    t_hot = t_hot_c + 273.15
    lift = max(t_hot_c - t_cold_c, MIN_LIFT_K)
    return min(max(eta * t_hot / lift, MIN_COP), MAX_COP)


def dh_return_temperature(outdoor_c: float) -> float:
    """District-heating return: about 35 °C in deep winter to 40 °C in summer (less cooling at low load)."""
    return min(max(35.0 + (outdoor_c + 10.0) / 6.0, 35.0), 40.0)


def dh_demand_kw(cfg: SimulationConfig, outdoor_c: float) -> float:
    """Network heat demand: linear in the heating-degree difference, floored by hot water; inf if unset."""
    if cfg.dh_design_demand_kw is None:
        return math.inf
    span = cfg.dh_heating_limit_temperature - cfg.dh_design_outdoor_temperature
    heating = min(max((cfg.dh_heating_limit_temperature - outdoor_c) / span, 0.0), 1.0) if span > 0 else 1.0
    return cfg.dh_design_demand_kw * max(heating, cfg.dh_base_demand_fraction)


def dry_cooler_capacity(cfg: SimulationConfig, loop_c: float, outdoor_c: float) -> float | None:
    """What the dry coolers can reject now, kW; None = unlimited.

    Rated at dry_cooler_design_outdoor_temperature with the loop water at dry_cooler_design_loop_temperature;
    an air cooler's duty is about proportional to the water-to-air difference, so on a hotter day (or a
    cooler loop) it takes less, never more than its rating (the fans are at full speed at the design point).
    """
    cap = cfg.dry_cooler_capacity_kw
    design_out = cfg.dry_cooler_design_outdoor_temperature
    if cap is None or design_out is None:
        return cap
    design_span = cfg.dry_cooler_design_loop_temperature - design_out
    return cap * min(max(loop_c - outdoor_c, 0.0) / design_span, 1.0)


def first_order(value: float, target: float, dt_s: float, tau_s: float) -> float:
    """Exact discrete first-order lag, stable for any step size."""
    return target + (value - target) * math.exp(-dt_s / tau_s)


class PlantModel:
    """The whole simulated plant; protocol faces read its states and call its command methods."""

    def __init__(self, cfg: SimulationConfig, clock: Clock) -> None:
        self.cfg = cfg
        self._clock = clock
        self._rng = random.Random(cfg.seed)
        # Sensor noise of what the CDUs report: its own seeded stream, so the physics (which draws from
        # _rng) follows exactly the same trajectory as without it.
        self._sensor_rng = random.Random(f"{cfg.seed}:cdu-sensors")
        self._cdu_noise: dict[str, tuple[float, float]] = {}
        self._last_monotonic = clock.monotonic()
        self._last_heartbeat_s: dict[str, float] = {}
        self.elapsed_s = 0.0
        self.time = clock.now()
        self.outdoor_temperature = cfg.outdoor_temperature
        self.dry_cooler_kw = 0.0
        self.unremoved_kw = 0.0  # heat the primary side could not take (dry coolers at capacity)
        self.direct_exchange_kw = 0.0
        self.losses_kw = 0.0
        self.delivered_kw = 0.0
        self.dh_demand_kw = dh_demand_kw(cfg, cfg.outdoor_temperature)
        self.it_load_scale = 1.0  # scenarios scale every CDU's IT load with this
        self.dh_demand_scale = 1.0  # ... and the network's demand with this (a demand collapse)
        self.dry_cooler_available_kw: float | None = cfg.dry_cooler_capacity_kw  # at today's outdoor temperature
        self._last_heat_kw = 0.0
        self.ledger = EnergyLedger()
        st = cfg.heat_store
        self.store: HeatStoreState | None = None if st is None else HeatStoreState(
            store_capacity_kwh(st), store_capacity_kwh(st) * st.initial_state_of_charge,
            min_temperature=st.min_temperature, max_temperature=st.max_temperature)
        # Dead time: each heat pump's commanded targets (elapsed_s, °C); the oldest due one acts.
        self._targets: dict[str, deque[tuple[float, float]]] = {}
        self._acting: dict[str, float] = {}
        # Capacity limit in force: pump -> capped / uncapped heat of the last step, which the supply sags by.
        self._capped: dict[str, float] = {}
        self._cdu_cfg: dict[str, SimCdu] = {c.id: c for c in cfg.cdus}
        self._hp_cfg: dict[str, SimHeatPump] = {h.id: h for h in cfg.heat_pumps}
        self._meter_cfg: dict[str, SimHeatMeter] = {m.id: m for m in cfg.heat_meters}
        dh_return = dh_return_temperature(self.outdoor_temperature)
        # Start in steady state: temperatures at their setpoints, so the first readings are plausible.
        self.cdus: dict[str, CduState] = {
            c.id: CduState(
                it_load_kw=c.it_load_kw, supply_temperature=c.supply_temperature_setpoint,
                return_temperature=c.supply_temperature_setpoint + CDU_DESIGN_DELTA_K,
                flow_liters_per_minute=0.0, heat_removed_kw=0.0, pump_speed_percent=0.0,
                valve_position_percent=0.0, supply_temperature_setpoint=c.supply_temperature_setpoint,
                supply_temperature_allowable_max=c.supply_temperature_allowable_max)
            for c in cfg.cdus}
        self.heat_pumps: dict[str, HeatPumpState] = {
            h.id: HeatPumpState(
                supply_temperature=h.supply_setpoint, return_temperature=dh_return,
                source_inlet_temperature=0.0, source_outlet_temperature=0.0, cop=0.0,
                heat_output_kw=0.0, electric_power_kw=0.0, evaporator_heat_kw=0.0,
                remote_setpoint=h.supply_setpoint, local_setpoint=h.supply_setpoint,
                electric_energy_kwh=h.initial_electric_energy_kwh)
            for h in cfg.heat_pumps}
        self.heat_meters: dict[str, HeatMeterState] = {
            m.id: HeatMeterState(
                serial=m.serial, energy_gj=m.initial_energy_gj, volume_m3=m.initial_volume_m3,
                power_kw=0.0, flow_m3h=0.0, flow_temperature_c=dh_return, return_temperature_c=dh_return)
            for m in cfg.heat_meters}
        self.step(0.0)

    # --- time -------------------------------------------------------------------------------

    def tick(self) -> float:
        """Advance by the clock's monotonic time since the previous tick; returns that step."""
        now = self._clock.monotonic()
        dt = max(now - self._last_monotonic, 0.0)
        self._last_monotonic = now
        self.step(dt)
        return dt

    def step(self, dt_s: float) -> None:
        """Advance the physics by dt_s seconds."""
        if dt_s < 0 or not math.isfinite(dt_s):
            raise ValueError(f"step must be a finite, non-negative time (got {dt_s})")
        self.elapsed_s += dt_s
        self.time = self._clock.now()
        dh_return = dh_return_temperature(self.outdoor_temperature)
        self.dh_demand_kw = dh_demand_kw(self.cfg, self.outdoor_temperature) * self.dh_demand_scale
        heat_kw, mass_flow, mixed_return = self._step_cdus(dt_s)
        heat_kw, mass_flow, mixed_return = self._add_surplus_source(heat_kw, mass_flow, mixed_return)
        source_inlet = mixed_return - HX_APPROACH_K
        direct, direct_outlet = self._direct_exchange(heat_kw, source_inlet, dh_return)
        # The heat pumps see the loop after the direct exchanger took its share.
        hp_source = source_inlet - direct / (mass_flow * CP_WATER) if mass_flow > 0 else source_inlet
        hours = dt_s / 3600.0
        charge_room = self._charge_room(hours)
        room = (self.dh_demand_kw + charge_room - direct) / (1.0 - self.cfg.pipe_loss_fraction)
        evaporated = self._step_heat_pumps(dt_s, heat_kw - direct, mass_flow, hp_source, dh_return,
                                           max(room, 0.0))
        condensed = sum(hp.heat_output_kw for hp in self.heat_pumps.values())
        work = sum(hp.electric_power_kw for hp in self.heat_pumps.values())
        # IT cooling has priority: whatever recovery does not take goes to dry coolers, up to their capacity.
        rejected = max(heat_kw - direct - evaporated, 0.0)
        cap = self.dry_cooler_available_kw = dry_cooler_capacity(self.cfg, mixed_return, self.outdoor_temperature)
        self.dry_cooler_kw = rejected if cap is None else min(rejected, cap)
        self.unremoved_kw = rejected - self.dry_cooler_kw
        self.direct_exchange_kw = direct
        self.losses_kw = (direct + condensed) * self.cfg.pipe_loss_fraction
        self.delivered_kw = self._step_store(direct + condensed - self.losses_kw, hours)
        led = self.ledger
        led.it_heat += heat_kw * hours
        led.direct_exchange += direct * hours
        led.condenser_heat += condensed * hours
        led.compressor_work += work * hours
        led.dry_cooler += self.dry_cooler_kw * hours
        led.losses += self.losses_kw * hours
        led.unremoved += self.unremoved_kw * hours
        led.delivered += self.delivered_kw * hours
        if self.store is not None:
            led.store_charged += self.store.charge_kw * hours
            led.store_discharged += self.store.discharge_kw * hours
            led.store_losses += self.store.loss_kw * hours
        self._step_meters(dt_s, dh_return, direct, direct_outlet)

    def _charge_room(self, hours: float) -> float:
        """What the tank can take now, kW: only while a heat pump is SG-Ready encouraged or forced to run."""
        st, cfg = self.store, self.cfg.heat_store
        if st is None or cfg is None:
            return 0.0
        if not any(hp.sg_ready >= SgReady.ENCOURAGED and not hp.fault for hp in self.heat_pumps.values()):
            return 0.0
        limit = cfg.max_charge_kw if cfg.max_charge_kw is not None else math.inf
        space = st.capacity_kwh - st.content_kwh
        return min(limit, space / hours) if hours > 0 else (0.0 if math.isinf(limit) else limit)

    def _step_store(self, made_kw: float, hours: float) -> float:
        """Split what the plant makes between the network and the tank; returns the heat delivered, kW."""
        st, cfg = self.store, self.cfg.heat_store
        if st is None or cfg is None:
            return made_kw
        demand = self.dh_demand_kw
        charge = min(max(made_kw - demand, 0.0), self._charge_room(hours)) if math.isfinite(demand) else 0.0
        limit = cfg.max_discharge_kw if cfg.max_discharge_kw is not None else math.inf
        shortfall = demand - (made_kw - charge)
        discharge = min(shortfall, limit, st.content_kwh / hours) if hours > 0 and shortfall > 0 else 0.0
        # Standing loss of the fully mixed tank to its surroundings, never more than it holds.
        loss = max(cfg.loss_w_per_k * (st.temperature - cfg.ambient_temperature) / 1000.0, 0.0)
        if hours > 0:
            loss = min(loss, st.content_kwh / hours + charge - discharge)
            st.content_kwh = min(max(st.content_kwh + (charge - discharge - loss) * hours, 0.0), st.capacity_kwh)
        st.charge_kw, st.discharge_kw, st.loss_kw = charge, discharge, loss
        return made_kw - charge + discharge

    def _add_surplus_source(self, heat_kw: float, mass_flow: float, mixed_return: float
                            ) -> tuple[float, float, float]:
        """An industrial surplus source (kiln cooling, flue gas) joins the source loop at its temperature."""
        q = self.cfg.surplus_heat_kw
        if q <= 0:
            return heat_kw, mass_flow, mixed_return
        m = q / (CP_WATER * CDU_DESIGN_DELTA_K)
        total_m = mass_flow + m
        mixed = (mass_flow * mixed_return + m * self.cfg.surplus_heat_temperature) / total_m
        return heat_kw + q, total_m, mixed

    def _direct_exchange(self, heat_kw: float, source_inlet: float, dh_return: float) -> tuple[float, float]:
        """Heat passed straight to DH when the source is hot enough; returns (kW, DH outlet °C)."""
        cap = self.cfg.direct_exchange_kw
        outlet = source_inlet - self.cfg.direct_exchange_approach_k
        if cap <= 0 or outlet <= dh_return + METER_MIN_DELTA_K or heat_kw <= 0:
            return 0.0, dh_return
        demand_room = self.dh_demand_kw / (1.0 - self.cfg.pipe_loss_fraction)
        return min(heat_kw, cap, demand_room), outlet

    def _step_cdus(self, dt_s: float) -> tuple[float, float, float]:
        """Returns total heat (kW), total secondary mass flow (kg/s) and the mixed return (°C)."""
        total_q = total_m = weighted_return = 0.0
        swing = 1.0 + CDU_LOAD_SWING * math.sin(2 * math.pi * self.elapsed_s / CDU_LOAD_PERIOD_S)
        for cdu_id, cdu in self.cdus.items():
            cfg = self._cdu_cfg[cdu_id]
            load = max(cfg.it_load_kw * self.it_load_scale * swing * (1.0 + self._rng.gauss(0.0, CDU_LOAD_NOISE)), 0.0)
            cdu.it_load_kw = load
            cdu.heat_removed_kw = load  # direct liquid cooling: the IT heat leaves through the loop
            nominal_flow = cfg.it_load_kw / (CP_WATER * CDU_DESIGN_DELTA_K)  # kg/s
            full_speed_flow = nominal_flow / (CDU_NOMINAL_PUMP_PERCENT / 100)
            needed = load / (CP_WATER * CDU_DESIGN_DELTA_K)
            pump = min(max(100.0 * needed / full_speed_flow, CDU_MIN_PUMP_PERCENT), 100.0)
            m = full_speed_flow * pump / 100.0
            # Heat the primary side could not take (previous step, shared by load) warms the supply:
            # the CDU's valve is wide open and its supply rises by the untaken heat over the loop's m·cp.
            share = load / heat_total if (heat_total := self._last_heat_kw) > 0 else 0.0
            rise = self.unremoved_kw * share / (m * CP_WATER) if m > 0 else 0.0
            cdu.supply_temperature = first_order(cdu.supply_temperature, cdu.supply_temperature_setpoint + rise,
                                                 dt_s, cfg.time_constant_s)
            cdu.pump_speed_percent = pump
            cdu.flow_liters_per_minute = m / CDU_LOOP_DENSITY * 1000.0 * 60.0
            cdu.return_temperature = cdu.supply_temperature + load / (m * CP_WATER)
            # A fresh sensor reading every step: a settled loop still reports a live value.
            self._cdu_noise[cdu_id] = (self._sensor_rng.gauss(0.0, CDU_TEMPERATURE_NOISE_K),
                                       self._sensor_rng.gauss(0.0, CDU_TEMPERATURE_NOISE_K))
            # Primary valve opens with load; 70 % at nominal leaves control range both ways.
            cdu.valve_position_percent = min(100.0 * 0.7 * load / cfg.it_load_kw, 100.0)
            total_q += load
            total_m += m
            weighted_return += m * cdu.return_temperature
        mixed_return = weighted_return / total_m if total_m > 0 else 0.0
        self._last_heat_kw = total_q
        return total_q, total_m, mixed_return

    def _step_heat_pumps(self, dt_s: float, heat_kw: float, mass_flow: float, source_inlet: float,
                         dh_return: float, demand_room_kw: float) -> float:
        """Returns the heat taken from the source loop by all heat pumps (kW)."""
        # Source heat and network demand are shared among the pumps that can run: a tripped or
        # blocked pump's share goes to the others (the source loop's valves route it there).
        able = {i for i, hp in self.heat_pumps.items() if not hp.fault and hp.sg_ready != SgReady.BLOCKED}
        total_capacity = sum(c.capacity_kw for i, c in self._hp_cfg.items() if i in able)
        evaporated = 0.0
        for hp_id, hp in self.heat_pumps.items():
            cfg = self._hp_cfg[hp_id]
            share = cfg.capacity_kw / total_capacity if hp_id in able else 0.0
            last = self._last_heartbeat_s.get(hp_id)
            if hp.watchdog_armed and last is not None and self.elapsed_s - last > cfg.watchdog_timeout_s:
                hp.watchdog_fallback = True
            target = self._delayed_target(hp_id, cfg.dead_time_s)
            # Modulation: the pump follows the network's demand down to its floor, then stops.
            limit = min(cfg.capacity_kw, demand_room_kw * share)
            wanted = not hp.fault and hp.sg_ready != SgReady.BLOCKED and heat_kw > 0
            hp.running = wanted and limit > 0 and limit >= cfg.min_load_fraction * cfg.capacity_kw
            ratio = self._capped.get(hp_id)
            if hp.running and ratio is not None and target > dh_return:
                # The capacity limit holds the heat below what the network's flow takes at the target: that
                # flow leaves the condenser cooler, by the share of the heat withheld (same flow, less heat).
                target = dh_return + (target - dh_return) * ratio
            # Idle, the condenser water drifts to the DH return temperature.
            hp.supply_temperature = first_order(hp.supply_temperature, target if hp.running else dh_return,
                                                dt_s, cfg.time_constant_s)
            hp.return_temperature = dh_return
            hp.source_inlet_temperature = source_inlet
            if hp.running and hp.supply_temperature > cfg.trip_temperature:
                # The high-pressure switch: latches until reset (a fault clear), like the real one.
                hp.fault = hp.tripped_on_temperature = True
                hp.running = False
                log.warning("heat pump %s tripped: condenser %.1f °C above %.1f °C", hp_id,
                            hp.supply_temperature, cfg.trip_temperature)
            if not hp.running or mass_flow <= 0:
                self._capped.pop(hp_id, None)
                hp.cop = hp.heat_output_kw = hp.electric_power_kw = hp.evaporator_heat_kw = 0.0
                hp.source_outlet_temperature = source_inlet
                continue
            m_src = mass_flow * share
            available = heat_kw * share
            # The DH pump can only carry so much heat at the present spread (matters at start-up).
            dh_limit = cfg.capacity_kw / DH_DESIGN_SPREAD_K * max(hp.supply_temperature - dh_return, 0.0)
            compressor = cfg.compressor_power_kw if cfg.compressor_power_kw is not None else math.inf
            # The capacity limit (holding register 3) caps the heat output; never below the modulation floor,
            # where the machine runs at least (a lower limit would stop it: that is SG-Ready's job).
            cap = max(hp.capacity_limit_percent / 100.0, cfg.min_load_fraction) * cfg.capacity_kw
            q_evap, cop, q_cond, uncapped = available, 1.0, 0.0, 0.0
            for _ in range(3):  # the source outlet depends on q_evap, COP on the outlet: converges fast
                t_cold = source_inlet - q_evap / (m_src * CP_WATER)
                cop = carnot_cop(hp.supply_temperature, t_cold, cfg.carnot_efficiency)
                uncapped = min(available * cop / (cop - 1.0), limit, compressor * cop)
                q_cond = min(uncapped, dh_limit, cap)
                q_evap = q_cond * (cop - 1.0) / cop
            if cap < uncapped:
                self._capped[hp_id] = cap / uncapped
            else:
                self._capped.pop(hp_id, None)
            hp.cop = cop
            hp.heat_output_kw = q_cond
            hp.electric_power_kw = q_cond / cop
            hp.evaporator_heat_kw = q_evap
            hp.source_outlet_temperature = source_inlet - q_evap / (m_src * CP_WATER)
            hp.electric_energy_kwh += hp.electric_power_kw * dt_s / 3600.0
            evaporated += q_evap
        return evaporated

    def _delayed_target(self, hp_id: str, dead_time_s: float) -> float:
        """The supply target commanded dead_time_s ago (the one acting now)."""
        commanded = self.effective_setpoint(hp_id)
        queue = self._targets.setdefault(hp_id, deque())
        if not queue or queue[-1][1] != commanded:
            queue.append((self.elapsed_s, commanded))
        acting = self._acting.get(hp_id, commanded)
        while queue and queue[0][0] <= self.elapsed_s - dead_time_s:
            acting = queue.popleft()[1]
        self._acting[hp_id] = acting
        return acting

    def _step_meters(self, dt_s: float, dh_return: float, direct_kw: float, direct_outlet: float) -> None:
        if not self.heat_meters:
            return
        total = self.delivered_kw
        # Mixed supply of the branches that deliver: the heat pumps' condensers and the direct exchanger.
        weights = [(hp.heat_output_kw, hp.supply_temperature) for hp in self.heat_pumps.values()]
        weights.append((direct_kw, direct_outlet))
        if self.store is not None and self.store.discharge_kw > 0:
            weights.append((self.store.discharge_kw, self.store.temperature))  # the tank's water joins the supply
        carried = sum(w for w, _ in weights)
        if carried > 0:
            supply = sum(w * t for w, t in weights) / carried
        elif self.heat_pumps:
            supply = sum(hp.supply_temperature for hp in self.heat_pumps.values()) / len(self.heat_pumps)
        else:
            supply = dh_return
        per_meter = total / len(self.heat_meters)  # parallel branches share the output evenly
        for meter_id, meter in self.heat_meters.items():
            # The true flow that carries this heat, then what the meter's sensors make of it.
            q_true = 0.0
            if per_meter > 0 and supply - dh_return > METER_MIN_DELTA_K:
                q_true = per_meter / (heat_coefficient(supply, dh_return) * (supply - dh_return))
            q = max(q_true * (1.0 + self._rng.gauss(0.0, METER_FLOW_NOISE)), 0.0)
            t_f = supply + self._rng.gauss(0.0, METER_TEMPERATURE_NOISE_K)
            t_r = dh_return + self._rng.gauss(0.0, METER_TEMPERATURE_NOISE_K)
            delta = t_f - t_r
            # EN 1434: P = q · k(θf, θr) · Δθ; a heating meter counts nothing for Δθ ≤ 0.
            power = q * heat_coefficient(t_f, t_r) * delta if q > 0 and delta > METER_MIN_DELTA_K else 0.0
            meter.flow_m3h = q
            meter.flow_temperature_c = t_f
            meter.return_temperature_c = t_r
            meter.power_kw = power
            wrap = self._meter_cfg[meter_id].register_wrap_gj
            # A finite register rolls over, as a real meter's does; billing must handle that.
            meter.energy_gj = (meter.energy_gj + power * dt_s / 1e6) % wrap  # kW·s = kJ
            meter.volume_m3 += q * dt_s / 3600.0

    # --- commands from the protocol faces ----------------------------------------------------

    def effective_setpoint(self, hp_id: str) -> float:
        """The supply setpoint the heat pump is holding now: remote or fallback, plus SG-Ready raise."""
        hp, cfg = self.heat_pumps[hp_id], self._hp_cfg[hp_id]
        base = hp.local_setpoint if hp.watchdog_fallback else hp.remote_setpoint
        return min(base + SG_READY_SHIFT_K[hp.sg_ready], cfg.setpoint_max)

    def set_cdu_setpoint(self, cdu_id: str, value: float) -> None:
        """Accept a CDU supply setpoint; ValueError outside the CDU's accepted range."""
        cfg = self._cdu_cfg[cdu_id]
        _check_range(value, cfg.setpoint_min, cfg.setpoint_max, f"{cdu_id} supply temperature setpoint")
        self.cdus[cdu_id].supply_temperature_setpoint = value

    def set_cdu_allowable_max(self, cdu_id: str, value: float) -> None:
        """The CDU's allowable maximum changed on its own panel; ValueError outside 0..100 °C or non-finite."""
        cdu = self.cdus[cdu_id]
        _check_range(value, *CDU_ALLOWABLE_MAX_RANGE, f"{cdu_id} supply temperature allowable maximum")
        cdu.supply_temperature_allowable_max = float(value)

    def reported_cdu(self, cdu_id: str) -> CduState:
        """What the CDU's controller reports: its state with sensor noise on secondary supply and return."""
        cdu = self.cdus[cdu_id]
        supply_noise, return_noise = self._cdu_noise.get(cdu_id, (0.0, 0.0))
        return replace(cdu, supply_temperature=cdu.supply_temperature + supply_noise,
                       return_temperature=cdu.return_temperature + return_noise)

    def set_heat_pump_setpoint(self, hp_id: str, value: float) -> None:
        """Accept a remote supply setpoint; ValueError outside the heat pump's accepted range."""
        cfg = self._hp_cfg[hp_id]
        _check_range(value, cfg.setpoint_min, cfg.setpoint_max, f"{hp_id} supply setpoint")
        self.heat_pumps[hp_id].remote_setpoint = value

    def set_capacity_limit(self, hp_id: str, percent: float) -> None:
        """Accept a capacity limit, 0..100 % of the pump's capacity_kw; ValueError otherwise."""
        _check_range(percent, 0.0, 100.0, f"{hp_id} capacity limit (%)")
        self.heat_pumps[hp_id].capacity_limit_percent = float(percent)

    def set_sg_ready(self, hp_id: str, state: int) -> None:
        """Accept an SG-Ready state 0..3; ValueError otherwise."""
        try:
            self.heat_pumps[hp_id].sg_ready = SgReady(state)
        except ValueError:
            raise ValueError(f"{hp_id} SG-Ready state must be 0..3 (got {state})") from None

    def heartbeat(self, hp_id: str, value: int) -> None:
        """A heartbeat write: arms the watchdog, restarts its timer, leaves any fallback."""
        hp = self.heat_pumps[hp_id]
        hp.heartbeat = value & 0xFFFF
        hp.watchdog_armed = True
        hp.watchdog_fallback = False
        self._last_heartbeat_s[hp_id] = self.elapsed_s

    def set_fault(self, hp_id: str, fault: bool) -> None:
        """Trip (True) or reset (False) a heat pump, for fault injection and after a temperature trip."""
        hp = self.heat_pumps[hp_id]
        hp.fault = fault
        if not fault:
            hp.tripped_on_temperature = False

    def preset_meter_register(self, meter_id: str, energy_gj: float) -> None:
        """Set a meter's energy register (fault injection: bring it near its roll-over)."""
        wrap = self._meter_cfg[meter_id].register_wrap_gj
        if not 0 <= energy_gj < wrap:
            raise ValueError(f"{meter_id} energy register must be in 0..{wrap} GJ (got {energy_gj})")
        self.heat_meters[meter_id].energy_gj = energy_gj

    def replace_meter(self, meter_id: str, serial: str) -> None:
        """A meter exchanged in the field: new serial number, registers start again at zero."""
        meter = self.heat_meters[meter_id]
        meter.serial = serial
        meter.energy_gj = 0.0
        meter.volume_m3 = 0.0


def _check_range(value: float, low: float, high: float, what: str) -> None:
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{what} {value} is outside {low}..{high}")
