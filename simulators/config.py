"""Models of the simulated plant: the `[simulation]` section that `heatrec simulate` and `heatrec demo` serve.

The simulators own these models; service/config.py puts SimulationConfig into the whole file's model
(HeatrecConfig) and re-exports them, so `from service.config import SimCdu` still works.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from service.schema import ID_PATTERN, StrictModel

__all__ = ["SimCdu", "SimHeatMeter", "SimHeatPump", "SimHeatStore", "SimulationConfig"]


class SimCdu(StrictModel):
    """A simulated CDU served over OPC UA."""

    id: str = Field(pattern=ID_PATTERN)
    endpoint: str = "opc.tcp://127.0.0.1:4841"
    it_load_kw: float = Field(default=800.0, gt=0)
    supply_temperature_setpoint: float = 30.0
    supply_temperature_allowable_max: float = 35.0
    setpoint_min: float = Field(default=15.0, description="lowest supply setpoint the CDU accepts over OPC UA")
    setpoint_max: float = Field(default=45.0, description="highest supply setpoint the CDU accepts over OPC UA")
    time_constant_s: float = Field(default=30.0, gt=0,
                                   description="first-order lag of the supply temperature (the CDU's control loop)")


class SimHeatPump(StrictModel):
    """A simulated heat pump served over Modbus TCP."""

    id: str = Field(pattern=ID_PATTERN)
    endpoint: str = "127.0.0.1:5020"
    unit_id: int = Field(default=1, ge=0, le=255)
    capacity_kw: float = Field(default=1000.0, gt=0, description="largest condenser heat output, kW")
    compressor_power_kw: float | None = Field(
        default=None, gt=0, description="largest electrical input of the compressor; none = no such bound. With "
                                        "it the heat output is also at most compressor_power_kw * COP, so at a "
                                        "lower supply (lower lift, higher COP) the pump moves more heat")
    carnot_efficiency: float = Field(default=0.5, gt=0, le=1)
    supply_setpoint: float = Field(default=70.0, description="local setpoint, also the watchdog fallback")
    setpoint_min: float = Field(default=40.0, description="lowest remote setpoint accepted over Modbus")
    setpoint_max: float = Field(default=85.0, description="highest remote setpoint accepted over Modbus")
    time_constant_s: float = Field(default=60.0, gt=0, description="first-order lag of the supply temperature")
    dead_time_s: float = Field(default=0.0, ge=0, le=3600,
                               description="delay before a new supply target starts to act (transport, staging)")
    min_load_fraction: float = Field(default=0.0, ge=0, lt=1,
                                     description="modulation floor: below this share of capacity the pump stops")
    trip_temperature: float = Field(default=90.0, description="condenser (supply) temperature that trips the pump")
    initial_electric_energy_kwh: float = Field(default=0.0, ge=0,
                                               description="electricity meter register at simulation start")
    watchdog_timeout_s: float = Field(default=60.0, gt=0,
                                      description="fall back to the local setpoint this long after the "
                                                  "last heartbeat write (armed by the first one)")


class SimHeatMeter(StrictModel):
    """A simulated EN 1434 heat meter published by an M-Bus-to-MQTT gateway."""

    id: str = Field(pattern=ID_PATTERN)
    protocol: Literal["mqtt", "modbus", "mbus"] = Field(
        default="mqtt", description="M-Bus-to-MQTT gateway, Modbus TCP, or wired M-Bus behind a TCP gateway")
    endpoint: str = Field(default="127.0.0.1:5030", description="host:port of a Modbus meter or M-Bus gateway "
                                                                "(M-Bus meters with one endpoint share its bus)")
    unit_id: int = Field(default=1, ge=0, le=255, description="unit id of a Modbus meter")
    primary_address: int = Field(default=1, ge=0, le=250, description="primary address of an M-Bus meter")
    serial: str = "71234567"
    topic: str = "mbus/heatmeter/71234567"
    publish_interval_s: float = Field(default=1.0, gt=0)
    initial_energy_gj: float = Field(default=0.0, ge=0, description="energy register at simulation start")
    initial_volume_m3: float = Field(default=0.0, ge=0, description="volume register at simulation start")
    register_wrap_gj: float = Field(default=4294967.296, gt=0,
                                    description="the energy register rolls over to 0 here (uint32 MJ by default)")


class SimHeatStore(StrictModel):
    """A simulated accumulator tank on the network side, served over Modbus TCP (read-only registers).

    Charged by heat-pump output beyond the network's demand while a heat pump is SG-Ready encouraged or forced,
    discharged to the network when the plant makes less than it takes, with a standing loss through its shell.
    """

    id: str = Field(default="tank1", pattern=ID_PATTERN)
    endpoint: str = "127.0.0.1:5040"
    unit_id: int = Field(default=1, ge=0, le=255)
    volume_m3: float = Field(gt=0, description="water volume, m³")
    min_temperature: float = Field(default=40.0, description="mean temperature of an empty tank, °C")
    max_temperature: float = Field(default=70.0, description="mean temperature of a full tank, °C")
    loss_w_per_k: float = Field(default=0.0, ge=0, description="UA of the shell, W/K")
    ambient_temperature: float = Field(default=10.0, description="temperature around the tank, °C")
    max_charge_kw: float | None = Field(default=None, gt=0, description="charging limit; none = no limit")
    max_discharge_kw: float | None = Field(default=None, gt=0, description="discharging limit; none = no limit")
    initial_state_of_charge: float = Field(default=0.0, ge=0, le=1, description="content at start, share of full")

    @model_validator(mode="after")
    def _temperatures(self) -> SimHeatStore:
        if self.max_temperature <= self.min_temperature:
            raise ValueError("max_temperature must be above min_temperature")
        return self


class SimulationConfig(StrictModel):
    """The simulated plant that `heatrec simulate` and `heatrec demo` serve."""

    seed: int = 1
    outdoor_temperature: float = 5.0
    dh_design_demand_kw: float | None = Field(
        default=None, gt=0, description="network heat demand at the design outdoor temperature; none = unlimited")
    dh_design_outdoor_temperature: float = Field(default=-12.0, description="outdoor temperature of full demand")
    dh_heating_limit_temperature: float = Field(default=17.0, description="above this only hot-water demand is left")
    dh_base_demand_fraction: float = Field(default=0.15, ge=0, le=1,
                                           description="hot-water share of the design demand, all year")
    direct_exchange_kw: float = Field(default=0.0, ge=0,
                                      description="capacity of the direct heat exchanger (source to DH); 0 = none")
    direct_exchange_approach_k: float = Field(default=3.0, ge=0,
                                              description="DH water leaves the exchanger this far below the source")
    pipe_loss_fraction: float = Field(default=0.005, ge=0, lt=0.5,
                                      description="share of the recovered heat lost before the meters")
    surplus_heat_kw: float = Field(default=0.0, ge=0, description="an industrial surplus-heat source (no CDU)")
    dry_cooler_capacity_kw: float | None = Field(
        default=None, ge=0, description="heat the dry coolers can reject; none = unlimited. Heat that neither "
                                        "recovery nor dry coolers take raises the CDU supply temperature")
    dry_cooler_design_outdoor_temperature: float | None = Field(
        default=None, description="outdoor temperature at which dry_cooler_capacity_kw is rated; none = the "
                                  "capacity holds in any weather. With it, the capacity falls in proportion to "
                                  "the loop-to-air difference on hotter days (never above the rating)")
    dry_cooler_design_loop_temperature: float = Field(
        default=40.0, description="CDU return (loop water into the dry coolers) at the rating, °C")
    surplus_heat_temperature: float = Field(default=90.0, gt=0, lt=150, description="its temperature, °C")
    control_port: int | None = Field(default=None, ge=0, lt=65536,
                                     description="HTTP fault-injection endpoint on 127.0.0.1; none = off")
    mqtt_broker: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    cdus: list[SimCdu] = Field(default_factory=list)
    heat_pumps: list[SimHeatPump] = Field(default_factory=list)
    heat_meters: list[SimHeatMeter] = Field(default_factory=list)
    heat_store: SimHeatStore | None = Field(default=None, description="an accumulator tank; none = no tank")

    @model_validator(mode="after")
    def _mbus_addresses(self) -> SimulationConfig:
        seen: dict[tuple[str, int], str] = {}
        for m in self.heat_meters:
            if m.protocol != "mbus":
                continue
            key = (m.endpoint, m.primary_address)
            if key in seen:
                raise ValueError(f"M-Bus meters {seen[key]} and {m.id} share primary address "
                                 f"{m.primary_address} on {m.endpoint}")
            seen[key] = m.id
        return self

    @model_validator(mode="after")
    def _dry_cooler_rating(self) -> SimulationConfig:
        design = self.dry_cooler_design_outdoor_temperature
        if design is not None and self.dry_cooler_design_loop_temperature <= design:
            raise ValueError(f"dry_cooler_design_loop_temperature ({self.dry_cooler_design_loop_temperature}) "
                             f"must be above dry_cooler_design_outdoor_temperature ({design})")
        return self
