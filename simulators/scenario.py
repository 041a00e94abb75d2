"""Scenario files: IT load steps, outdoor temperature over days and seasons, demand, CDU limits and faults,
on plant time."""

from __future__ import annotations

import math
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.schema import ID_PATTERN
from simulators.errors import SimulatorError
from simulators.faults import FaultKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DeviceId = Annotated[str, Field(pattern=ID_PATTERN)]
AllowableMax = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, strict=True)]  # °C, a CDU panel's range


class OutdoorProfile(_Strict):
    """Outdoor temperature from the plant's date and hour: a yearly and a daily cosine."""

    annual_mean: float = Field(default=8.0, description="yearly mean, °C (Denmark: about 8)")
    annual_amplitude: float = Field(default=8.0, ge=0, description="half the summer-winter swing, K")
    coldest_day: int = Field(default=20, ge=1, le=366, description="day of the year of the coldest mean")
    daily_amplitude: float = Field(default=3.0, ge=0, description="half the day-night swing, K")
    coldest_hour: float = Field(default=5.0, ge=0, lt=24, description="UTC hour of the daily minimum")

    def at(self, when: datetime) -> float:
        """Outdoor temperature at this moment, °C."""
        day = when.timetuple().tm_yday + when.hour / 24.0
        hour = when.hour + when.minute / 60.0 + when.second / 3600.0
        seasonal = self.annual_amplitude * math.cos(2 * math.pi * (day - self.coldest_day) / 365.25)
        daily = self.daily_amplitude * math.cos(2 * math.pi * (hour - self.coldest_hour) / 24.0)
        return self.annual_mean - seasonal - daily


class FaultSpec(_Strict):
    """A fault as a scenario (or the control endpoint) names it."""

    device: str = Field(pattern=ID_PATTERN)
    kind: FaultKind
    point: str | None = None
    value: float | None = None
    code: int = Field(default=4, ge=1, le=255)
    delay_s: float = Field(default=2.0, gt=0, le=600)
    serial: str | None = None
    energy_gj: float | None = Field(default=None, ge=0, description="wrap: preset the register here")


class ScenarioEvent(_Strict):
    """Something that happens `at_s` seconds of plant time after the start."""

    at_s: float = Field(ge=0)
    it_load_scale: float | None = Field(default=None, ge=0, le=2, description="every CDU's IT load times this")
    outdoor_temperature: float | None = Field(default=None, description="fixed outdoor °C (ends any profile)")
    dh_demand_scale: float | None = Field(default=None, ge=0, le=2,
                                          description="the network's heat demand times this (0.2: demand collapse)")
    fault: FaultSpec | None = None
    clear_faults: str | None = Field(default=None, description="device id, or '*' for every device")
    cdu_allowable_max: dict[DeviceId, AllowableMax] | None = Field(
        default=None, min_length=1,
        description="CDU id -> new supply temperature allowable maximum, °C, as set on the CDU's own panel")


class Scenario(_Strict):
    """A scenario file."""

    name: str = "scenario"
    description: str = ""
    outdoor: OutdoorProfile | None = None
    events: list[ScenarioEvent] = Field(default_factory=list)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file; SimulatorError names the offending key."""
    p = Path(path)
    try:
        data: dict[str, Any] = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimulatorError(f"{p}: scenario file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SimulatorError(f"{p}: cannot read the scenario: {err}") from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        lines = [f"{p}: {'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise SimulatorError("\n".join(lines)) from None


class ScenarioPlayer:
    """Applies a scenario's due events in time order; `due(elapsed_s)` hands them out once each."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._events = sorted(scenario.events, key=lambda e: e.at_s)  # stable: file order at equal times
        self._next = 0
        self.fixed_outdoor = False

    def due(self, elapsed_s: float) -> list[ScenarioEvent]:
        """Events whose time has come since the last call."""
        out = []
        while self._next < len(self._events) and self._events[self._next].at_s <= elapsed_s:
            out.append(self._events[self._next])
            self._next += 1
        return out

    def outdoor_at(self, when: datetime) -> float | None:
        """The profile's outdoor temperature, unless none is set or an event fixed it."""
        if self.scenario.outdoor is None or self.fixed_outdoor:
            return None
        return self.scenario.outdoor.at(when)
