"""Dated rule sets (shipped in service/accounting/rulesets/): pick the one in force on a date, split periods."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from service.errors import Conflict

ChargeMethod = Literal["old", "indexed"]
PriceLimit = Literal["min_cost_substitution", "cap", "none", "substitution"]
_FAR_FUTURE = date(9999, 1, 1)


class RuleError(Conflict):
    """A rule file is missing, malformed, or has no figure for a date; the message says which."""


@dataclass(frozen=True)
class Figure:
    """A number with where it comes from; derived figures make a settlement provisional."""

    value: float
    source: str
    derived: bool = False


@dataclass(frozen=True)
class RulePeriod:
    """One dated entry: how the charge and the price limit work from valid_from until valid_to."""

    id: str
    valid_from: date
    valid_to: date
    charge_method: ChargeMethod
    price_limit: PriceLimit
    electricity_based_exempt: Figure
    source: str
    cap_exempt_below_mw: Figure | None = None
    heat_pump_profit: bool = False
    efo_exempt: Figure | None = None  # members of the energy-efficiency scheme pay no charge
    free_supply_utility_pays: Figure | None = None  # heat given away free: the utility pays the charge


@dataclass(frozen=True)
class RuleSet:
    """A whole rule file."""

    name: str
    base_rate: Figure
    heat_pump_deduction_factor: Figure
    old_rate: Figure
    old_share_of_remuneration: Figure
    rates: dict[int, Figure]
    caps: dict[int, Figure]
    periods: tuple[RulePeriod, ...]
    assumptions: dict[str, str]

    def period_on(self, day: date) -> RulePeriod:
        """The entry in force on a local date."""
        for p in self.periods:
            if p.valid_from <= day < p.valid_to:
                return p
        raise RuleError(f"rule set '{self.name}' has no period covering {day}")

    def rate(self, year: int) -> Figure:
        """Charge rate (DKK/GJ) of a year."""
        if year not in self.rates:
            raise RuleError(f"rule set '{self.name}' has no charge rate for {year}: add a [[charge.rates]] entry")
        return self.rates[year]

    def cap(self, year: int) -> Figure:
        """Price cap (DKK/GJ) of a year."""
        if year not in self.caps:
            raise RuleError(f"rule set '{self.name}' has no price cap for {year}: add a [[caps]] entry")
        return self.caps[year]


@dataclass(frozen=True)
class Segment:
    """A part of a period under one rule entry and within one calendar year."""

    start: datetime
    end: datetime
    period: RulePeriod
    year: int


# The contract field holding each price a rule can bound by.
PRICE_FIELDS = {"substitution": "substitution_price_dkk_per_gj", "cost_based": "cost_based_price_dkk_per_gj"}


def price_bounds(period: RulePeriod) -> tuple[str, ...]:
    """Which contract prices bound the price under this entry: 'substitution', 'cost_based' or both.

    Under the cap the substitution price bounds every sale (the 2021 bill keeps the substitution
    principle); for suppliers under the exemption threshold and heat lifted by electric heat pumps
    it is the only bound (the cap does not apply to them).
    """
    if period.price_limit == "min_cost_substitution":
        return ("cost_based", "substitution")
    if period.price_limit == "substitution":
        return ("substitution",)
    if period.price_limit == "cap":
        return ("substitution",)
    return ()


def cap_applies(period: RulePeriod, capacity_mw: float, heat_pump_lifted: bool) -> bool:
    """True when the VE price cap bounds this contract's price under this entry."""
    if period.price_limit != "cap":
        return False
    if period.cap_exempt_below_mw is not None and capacity_mw < period.cap_exempt_below_mw.value:
        return False
    return not (period.heat_pump_profit and heat_pump_lifted)


def required_prices(period: RulePeriod, capacity_mw: float, heat_pump_lifted: bool) -> tuple[str, ...]:
    """Prices without which no limit can be computed at all: a settlement under this entry is refused.

    An ordinary contract under the cap has the cap as a bound even without a substitution price (the
    settlement then says the substitution bound was not checked); everywhere else the bound is the
    price(s) themselves.
    """
    if cap_applies(period, capacity_mw, heat_pump_lifted):
        return ()
    return price_bounds(period)


def _figure(raw: Any, where: str) -> Figure:
    if not isinstance(raw, dict) or "value" not in raw or not str(raw.get("source", "")).strip():
        raise RuleError(f"{where}: expected {{ value = ..., source = \"...\" }}")
    value = raw["value"]
    if isinstance(value, bool):
        value = 1.0 if value else 0.0
    if not isinstance(value, int | float):
        raise RuleError(f"{where}.value: not a number")
    return Figure(float(value), str(raw["source"]), raw.get("status") == "derived")


def _yearly(items: Any, where: str) -> dict[int, Figure]:
    out: dict[int, Figure] = {}
    for i, item in enumerate(items or []):
        if not isinstance(item, dict) or not isinstance(item.get("year"), int):
            raise RuleError(f"{where}[{i}]: needs an integer year")
        out[item["year"]] = _figure(item, f"{where}[{i}]")
    return out


def parse_rules(data: dict[str, Any], source: str) -> RuleSet:
    """Validate a parsed rule file."""
    try:
        charge = data["charge"]
        periods = []
        for i, p in enumerate(data["periods"]):
            where = f"{source}: periods[{i}]"
            if p["charge_method"] not in ("old", "indexed"):
                raise RuleError(f"{where}.charge_method: 'old' or 'indexed'")
            if p["price_limit"] not in ("min_cost_substitution", "cap", "none", "substitution"):
                raise RuleError(f"{where}.price_limit: 'min_cost_substitution', 'cap', 'none' or 'substitution'")
            cap_exempt = _figure(p["cap_exempt_below_mw"], f"{where}.cap_exempt_below_mw") \
                if "cap_exempt_below_mw" in p else None
            hp = _figure(p["heat_pump_profit"], f"{where}.heat_pump_profit").value > 0 \
                if "heat_pump_profit" in p else False
            periods.append(RulePeriod(
                id=str(p["id"]), valid_from=p["valid_from"], valid_to=p.get("valid_to", _FAR_FUTURE),
                charge_method=p["charge_method"], price_limit=p["price_limit"],
                electricity_based_exempt=_figure(p["electricity_based_exempt"], f"{where}.electricity_based_exempt"),
                source=str(p["source"]), cap_exempt_below_mw=cap_exempt, heat_pump_profit=hp,
                efo_exempt=_figure(p["efo_exempt"], f"{where}.efo_exempt") if "efo_exempt" in p else None,
                free_supply_utility_pays=_figure(p["free_supply_utility_pays"], f"{where}.free_supply_utility_pays")
                if "free_supply_utility_pays" in p else None))
        periods.sort(key=lambda p: p.valid_from)
        for a, b in itertools.pairwise(periods):
            if a.valid_to != b.valid_from:
                raise RuleError(f"{source}: period '{a.id}' ends {a.valid_to} but '{b.id}' starts {b.valid_from}: "
                                "periods must follow each other without gap or overlap")
        for p in periods:
            if not isinstance(p.valid_from, date) or not isinstance(p.valid_to, date) or p.valid_from >= p.valid_to:
                raise RuleError(f"{source}: period '{p.id}' needs dates with valid_from < valid_to")
        return RuleSet(
            name=str(data["name"]),
            base_rate=_figure(charge["base_rate"], f"{source}: charge.base_rate"),
            heat_pump_deduction_factor=_figure(charge["heat_pump_deduction_factor"],
                                               f"{source}: charge.heat_pump_deduction_factor"),
            old_rate=_figure(charge["old_rate"], f"{source}: charge.old_rate"),
            old_share_of_remuneration=_figure(charge["old_share_of_remuneration"],
                                              f"{source}: charge.old_share_of_remuneration"),
            rates=_yearly(charge.get("rates"), f"{source}: charge.rates"),
            caps=_yearly(data.get("caps"), f"{source}: caps"),
            periods=tuple(periods),
            assumptions={str(k): str(v) for k, v in data.get("assumptions", {}).items()})
    except KeyError as err:
        raise RuleError(f"{source}: missing key {err}") from None
    except TypeError as err:
        raise RuleError(f"{source}: malformed rule file ({err})") from None


def load_rules(rules_dir: str | Path, name: str) -> RuleSet:
    """Read <rules_dir>/<name>.toml."""
    path = Path(rules_dir) / f"{name}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuleError(f"{path}: rule set not found (accounting.rules_dir, contract rule_set)") from None
    except tomllib.TOMLDecodeError as err:
        raise RuleError(f"{path}: TOML syntax error: {err}") from None
    return parse_rules(data, str(path))


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def split_period(rules: RuleSet, start: datetime, end: datetime, tz: ZoneInfo) -> list[Segment]:
    """Cut [start, end) at every rule change and new year (local time) into segments."""
    # Work in UTC: differences of datetimes sharing a ZoneInfo are wall-clock differences.
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        return []
    cuts = {start, end}
    first, last = start.astimezone(tz).date(), end.astimezone(tz).date()
    for p in rules.periods:
        for d in (p.valid_from, p.valid_to):
            if first <= d <= last and d != _FAR_FUTURE:
                cuts.add(_local_midnight(d, tz))
    for year in range(first.year + 1, last.year + 1):
        cuts.add(_local_midnight(date(year, 1, 1), tz))
    points = sorted(c for c in cuts if start <= c <= end)
    out = []
    for a, b in itertools.pairwise(points):
        day = a.astimezone(tz).date()
        out.append(Segment(a, b, rules.period_on(day), day.year))
    return out
