"""[accounting]: billing meters, heat pumps, supply contracts, KPI factors, and where the rule sets are."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from service.schema import ID_PATTERN, POINT_REF_PATTERN, StrictModel

# The dated rule sets heatrec ships (Danish surplus-heat rules); a plant may point rules_dir elsewhere.
PACKAGED_RULES_DIR = Path(__file__).resolve().parent / "rulesets"

_POINT_REF = POINT_REF_PATTERN


class AccountingMeter(StrictModel):
    """A billing heat meter: its register point, the points that cross-check it, and its class data."""

    id: str = Field(pattern=ID_PATTERN, description="meter id used in settlements and the API")
    energy_point: str = Field(pattern=_POINT_REF, description="the meter's energy register (GJ, kind counter)")
    flow_point: str | None = Field(default=None, pattern=_POINT_REF, description="volume flow, m3/h")
    flow_temperature_point: str | None = Field(default=None, pattern=_POINT_REF, description="degC")
    return_temperature_point: str | None = Field(default=None, pattern=_POINT_REF, description="degC")
    serial: str = Field(default="", description="serial number of the meter installed at commissioning")
    mid_class: Literal[1, 2, 3] = Field(default=2, description="MID / EN 1434 accuracy class")
    qp_m3h: float = Field(gt=0, description="permanent flow rate qp of the flow sensor")
    qi_m3h: float = Field(gt=0, description="lowest flow rate qi; flows below it are flagged")
    delta_theta_min_k: Literal[3, 5, 10] = Field(default=3, description="smallest temperature difference Δθmin")
    register_wrap_gj: float | None = Field(default=None, gt=0,
                                           description="the register rolls over to 0 here; none = never")
    max_power_kw: float = Field(gt=0, description="no real step is faster than this; larger steps are faults")
    gap_s: float = Field(default=900.0, gt=0, description="readings further apart than this make a gap")

    @model_validator(mode="after")
    def _flows(self) -> AccountingMeter:
        if self.qi_m3h >= self.qp_m3h:
            raise ValueError(f"qi_m3h ({self.qi_m3h}) must be below qp_m3h ({self.qp_m3h})")
        return self


class AccountingHeatPump(StrictModel):
    """A heat pump's electricity register, for the 3 x electricity deduction, COP and PUE."""

    id: str = Field(pattern=ID_PATTERN)
    electricity_point: str = Field(pattern=_POINT_REF, description="electricity register, kWh, kind counter")
    register_wrap_kwh: float | None = Field(default=None, gt=0, description="roll-over of the register")
    max_power_kw: float = Field(gt=0, description="largest plausible electric power; larger steps are faults")
    gap_s: float = Field(default=900.0, gt=0, description="readings further apart than this make a gap")


class SupplyContract(StrictModel):
    """A surplus-heat supply contract: who sells to whom through which meters, and its price terms."""

    id: str = Field(pattern=ID_PATTERN)
    meters: list[str] = Field(min_length=1, description="accounting meter ids summed for this contract")
    supplier: str = Field(min_length=1, description="the surplus-heat supplier (the data centre)")
    utility: str = Field(min_length=1, description="the district-heating utility that buys")
    rule_set: str = Field(default="dk_surplus_heat", pattern=ID_PATTERN,
                          description="file stem of the rule set in rules_dir")
    capacity_mw: float = Field(gt=0, description="supply capacity (suppliers under 0.25 MW are cap-exempt)")
    agreed_price_dkk_per_gj: float = Field(ge=0, description="price agreed in the contract; 0 for free supply")
    substitution_price_dkk_per_gj: float | None = Field(default=None, ge=0,
                                                        description="the utility's own alternative heat price")
    cost_based_price_dkk_per_gj: float | None = Field(default=None, ge=0,
                                                      description="the supplier's cost-based price")
    utility_cost_dkk_per_gj: float = Field(default=0.0, ge=0,
                                           description="the utility's own cost of using the heat, per GJ "
                                                       "(counts against the price cap)")
    efo_member: bool = Field(default=False, description="supplier is in the energy-efficiency scheme (EFO)")
    free_supply: bool = Field(default=False, description="heat given away free: the utility pays the charge")
    electricity_based_process: bool = Field(default=False,
                                            description="the surplus heat comes from an electricity-based "
                                                        "process (a data centre)")
    heat_pump_lifted: bool = Field(default=False, description="the heat is lifted by electric heat pumps")
    heat_pumps: list[str] = Field(default_factory=list, description="accounting heat pump ids to deduct")
    valid_from: date | None = Field(default=None, description="first day of the contract (default: today); "
                                                              "check-config checks the rules from then on")
    valid_to: date | None = Field(default=None, description="day after the contract's last (default: open)")

    @model_validator(mode="after")
    def _term(self) -> SupplyContract:
        if self.valid_from is not None and self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError(f"valid_to ({self.valid_to}) must be after valid_from ({self.valid_from})")
        return self


class Co2Factor(StrictModel):
    """Avoided CO2 per kWh of heat in a year; years between are interpolated linearly."""

    year: int = Field(ge=1990, le=2100)
    kg_per_kwh: float = Field(ge=0)
    source: str = Field(min_length=1)


_BR18_DH = [Co2Factor(year=2023, kg_per_kwh=0.105, source="BR18 annex 2 table 8, district heating 2023"),
            Co2Factor(year=2025, kg_per_kwh=0.0878, source="BR18 annex 2 table 8, district heating 2025"),
            Co2Factor(year=2030, kg_per_kwh=0.0713, source="BR18 annex 2 table 8, district heating 2030")]


class AccountingConfig(StrictModel):
    """Billing-grade heat accounting: meters, heat pumps, contracts, KPI factors."""

    rules_dir: str = Field(default=str(PACKAGED_RULES_DIR),
                           description="directory of the dated rule sets (TOML); default: the rule sets shipped "
                                       "with heatrec")
    interval_s: int = Field(default=3600, ge=60, le=86400, description="default interval of /api/v1/energy")
    homes_mwh_per_home: float = Field(default=14.0, gt=0, description="heat use of one home per year (MWh)")
    co2_factors: list[Co2Factor] = Field(default_factory=lambda: list(_BR18_DH), min_length=1)
    it_energy_point: str | None = Field(default=None, pattern=_POINT_REF,
                                        description="IT electricity register (kWh) for ERF, PUE, heat share")
    facility_energy_point: str | None = Field(default=None, pattern=_POINT_REF,
                                              description="whole data-centre electricity register (kWh)")
    meters: list[AccountingMeter] = Field(default_factory=list)
    heat_pumps: list[AccountingHeatPump] = Field(default_factory=list)
    contracts: list[SupplyContract] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> AccountingConfig:
        for what, items in (("meters", self.meters), ("heat_pumps", self.heat_pumps),
                            ("contracts", self.contracts)):
            ids = [i.id for i in items]
            dup = {i for i in ids if ids.count(i) > 1}
            if dup:
                raise ValueError(f"accounting.{what}: id '{sorted(dup)[0]}' appears twice")
        meters, pumps = {m.id for m in self.meters}, {h.id for h in self.heat_pumps}
        for c in self.contracts:
            for m in c.meters:
                if m not in meters:
                    raise ValueError(f"contract '{c.id}': no accounting meter '{m}'")
            for h in c.heat_pumps:
                if h not in pumps:
                    raise ValueError(f"contract '{c.id}': no accounting heat pump '{h}'")
        return self

    def point_refs(self) -> list[tuple[str, str]]:
        """(where, point id) of every point the section names, for checking against the devices."""
        out: list[tuple[str, str]] = []
        for m in self.meters:
            for key in ("energy_point", "flow_point", "flow_temperature_point", "return_temperature_point"):
                if getattr(m, key):
                    out.append((f"accounting.meters.{m.id}.{key}", getattr(m, key)))
        out += [(f"accounting.heat_pumps.{h.id}.electricity_point", h.electricity_point) for h in self.heat_pumps]
        for key in ("it_energy_point", "facility_energy_point"):
            if getattr(self, key):
                out.append((f"accounting.{key}", getattr(self, key)))
        return out
