"""Models of a `[dispatch]` section: prices, tariffs, heat price, heat store and the units the plan dispatches.

Plain data on the strict base. service/config.py extends it into the plant file's `[dispatch]` (with the
points it reads and the replanning period); the bench builds it in code. docs/DISPATCH.md says what each
field means.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from service.schema import ID_PATTERN, StrictModel

__all__ = ["DispatchConfig", "DispatchHeatPump", "DispatchStore", "Money"]


def _money(value: Any) -> Any:
    # A TOML float is binary: money comes as a string ("350.00") or an integer so it stays exact.
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("money is written as a string (\"350.00\") or an integer, never a float")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            raise ValueError(f"not a decimal number: {value!r}") from None
    return value


Money = Annotated[Decimal, BeforeValidator(_money)]


class DispatchStore(StrictModel):
    """An accumulator tank on the network side, charged by the heat pumps."""

    volume_m3: float = Field(gt=0, description="water volume, m³")
    min_temperature: float = Field(description="temperature of an empty tank (network return), °C")
    max_temperature: float = Field(description="temperature of a full tank (network supply), °C")
    loss_w_per_k: float = Field(default=0.0, ge=0, description="UA of the tank's shell, W/K")
    ambient_temperature: float = Field(default=10.0, description="temperature around the tank, °C")
    max_charge_kw: float | None = Field(default=None, gt=0, description="charging limit; none = no limit")
    max_discharge_kw: float | None = Field(default=None, gt=0, description="discharging limit; none = no limit")

    @model_validator(mode="after")
    def _temperatures(self) -> DispatchStore:
        if self.max_temperature <= self.min_temperature:
            raise ValueError("max_temperature must be above min_temperature")
        return self


class DispatchHeatPump(StrictModel):
    """One heat pump as the plan sees it."""

    id: str = Field(pattern=ID_PATTERN, description="the [control] heat pump's id")
    capacity_kw: float = Field(gt=0, description="maximum heat output, kW")
    min_load_fraction: float = Field(default=0.0, ge=0, lt=1, description="least output when on, share of capacity")
    min_run_min: int = Field(default=15, ge=0, description="a started pump runs at least this long, minutes")
    min_stop_min: int = Field(default=15, ge=0, description="a stopped pump stays off at least this long, minutes")
    start_cost_dkk: Money = Field(default=Decimal("0"), description="wear of one start, DKK")
    carnot_efficiency: float = Field(default=0.5, gt=0, le=1, description="COP as a share of the Carnot COP")


class DispatchConfig(StrictModel):
    """The `[dispatch]` section."""

    enabled: bool = Field(default=False, description="whether the plan drives the heat pumps")
    price_area: Literal["DK1", "DK2"] = Field(default="DK1", description="bidding zone of the day-ahead prices")
    price_url: str | None = Field(default=None, pattern=r"^https?://",
                                  description="DayAheadPrices endpoint (Energi Data Service API or a mirror)")
    price_file: str | None = Field(default=None, description="DayAheadPrices JSON or CSV file instead of the URL")
    fetch_timeout_s: float = Field(default=10.0, gt=0, description="HTTP timeout of one price fetch")
    tariffs: str = Field(description="tariff file: a name in service/dispatch/tariffs/ or a path")
    heat_price_dkk_per_mwh: Money = Field(description="price the network pays for heat, DKK/MWh")
    horizon_h: float = Field(default=36.0, ge=4, le=48, description="length of the rolling plan, hours")
    solver_time_limit_s: float = Field(default=4.0, gt=0, description="MILP time limit; over it the last plan stays")
    rejection_cost_dkk_per_mwh: Money = Field(default=Decimal("1"),
                                              description="small cost of heat sent to the dry coolers")
    dry_cooler_capacity_kw: float = Field(ge=0, description="dry coolers' capacity at the design outdoor temperature")
    dry_cooler_design_outdoor_temperature: float = Field(default=20.0, description="°C")
    dry_cooler_derating_per_k: float = Field(default=0.03, ge=0, lt=1,
                                             description="share of capacity lost per K above the design temperature")
    direct_exchange_kw: float = Field(default=0.0, ge=0, description="direct exchanger to the network; 0 = none")
    source_temperature: float = Field(description="IT cooling water the heat pumps lift from, °C")
    sink_temperature: float = Field(description="network supply the heat pumps lift to, °C")
    heat_pumps: list[DispatchHeatPump] = Field(default_factory=list, description="the dispatchable heat pumps")
    store: DispatchStore | None = Field(default=None, description="the heat store, if the plant has one")

    @model_validator(mode="after")
    def _source(self) -> DispatchConfig:
        if (self.price_url is None) == (self.price_file is None):
            raise ValueError("set exactly one of price_url and price_file")
        ids = [p.id for p in self.heat_pumps]
        if len(set(ids)) != len(ids):
            raise ValueError("heat pump ids must be unique")
        return self
