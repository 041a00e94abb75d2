"""Dated electricity tariffs and taxes (service/dispatch/tariffs/*.toml): the add-on per kWh at a moment.

Like the accounting rule sets: entries valid from a date follow each other without gap or overlap; each
has flat charges (net and system tariffs, taxes) and time-of-day bands by local hour and month. Every
local hour of every month must fall in exactly one band, so a price is never silently missing.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.errors import Conflict

TARIFF_DIR = Path(__file__).parent / "tariffs"
_FAR_FUTURE = date(9999, 1, 1)


class TariffError(Conflict):
    """A tariff file is missing, malformed, or covers no period for a date; the message says which."""


@dataclass(frozen=True)
class Band:
    """A time-of-day tariff: local hours [start_hour, end_hour) in the listed months."""

    months: frozenset[int]
    start_hour: int
    end_hour: int
    dkk_per_kwh: Decimal


@dataclass(frozen=True)
class TariffPeriod:
    """One dated entry."""

    id: str
    valid_from: date
    valid_to: date
    charges: tuple[tuple[str, Decimal], ...]
    bands: tuple[Band, ...]
    source: str

    def band_at(self, local: datetime) -> Band:
        """The band of a local time (exactly one, checked when the file was read)."""
        for b in self.bands:
            if local.month in b.months and b.start_hour <= local.hour < b.end_hour:
                return b
        raise TariffError(f"tariff period '{self.id}' has no band for {local:%m-%d %H:%M}")

    def flat_dkk_per_kwh(self) -> Decimal:
        """The sum of the flat charges."""
        return sum((c for _, c in self.charges), Decimal(0))


@dataclass(frozen=True)
class TariffSet:
    """A whole tariff file."""

    name: str
    zone: ZoneInfo
    periods: tuple[TariffPeriod, ...]

    def period_on(self, day: date) -> TariffPeriod:
        """The entry in force on a local date."""
        for p in self.periods:
            if p.valid_from <= day < p.valid_to:
                return p
        raise TariffError(f"tariff set '{self.name}' has no period covering {day}")

    def addon_dkk_per_kwh(self, moment: datetime) -> Decimal:
        """Tariffs and taxes on one kWh of electricity bought at `moment` (aware)."""
        local = moment.astimezone(self.zone)
        period = self.period_on(local.date())
        return period.flat_dkk_per_kwh() + period.band_at(local).dkk_per_kwh

    def electricity_dkk_per_kwh(self, moment: datetime, spot_dkk_per_mwh: Decimal) -> Decimal:
        """What one kWh costs: the spot price (per MWh in the price data) plus the add-ons."""
        return spot_dkk_per_mwh / 1000 + self.addon_dkk_per_kwh(moment)


def _money(raw: Any, where: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise TariffError(f"{where}: write money as a string (\"0.140\"), not {raw!r}")
    try:
        return Decimal(str(raw))
    except InvalidOperation:
        raise TariffError(f"{where}: {raw!r} is not a number") from None


def _band(raw: Any, where: str) -> Band:
    if not isinstance(raw, dict):
        raise TariffError(f"{where}: expected {{ start_hour, end_hour, dkk_per_kwh, months }}")
    months = raw.get("months", list(range(1, 13)))
    if not isinstance(months, list) or not all(isinstance(m, int) and 1 <= m <= 12 for m in months):
        raise TariffError(f"{where}.months: a list of month numbers 1-12")
    start, end = raw.get("start_hour"), raw.get("end_hour")
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end <= 24:
        raise TariffError(f"{where}: needs integer hours with 0 <= start_hour < end_hour <= 24")
    return Band(frozenset(months), start, end, _money(raw.get("dkk_per_kwh"), f"{where}.dkk_per_kwh"))


def parse_tariffs(data: dict[str, Any], source: str) -> TariffSet:
    """Validate a parsed tariff file."""
    try:
        zone = ZoneInfo(str(data.get("timezone", "Europe/Copenhagen")))
    except (ZoneInfoNotFoundError, ValueError):
        raise TariffError(f"{source}: unknown timezone {data.get('timezone')!r}") from None
    periods: list[TariffPeriod] = []
    try:
        for i, p in enumerate(data["periods"]):
            where = f"{source}: periods[{i}]"
            valid_from, valid_to = p["valid_from"], p.get("valid_to", _FAR_FUTURE)
            if not isinstance(valid_from, date) or not isinstance(valid_to, date) or valid_from >= valid_to:
                raise TariffError(f"{where}: needs dates with valid_from < valid_to")
            charges = tuple((str(c["name"]), _money(c["dkk_per_kwh"], f"{where}.charges[{j}].dkk_per_kwh"))
                            for j, c in enumerate(p.get("charges", [])))
            bands = tuple(_band(b, f"{where}.bands[{j}]") for j, b in enumerate(p.get("bands", [])))
            for month, hour in itertools.product(range(1, 13), range(24)):
                hits = [b for b in bands if month in b.months and b.start_hour <= hour < b.end_hour]
                if len(hits) != 1:
                    raise TariffError(f"{where}: month {month} hour {hour} falls in {len(hits)} bands "
                                      "(each local hour of each month must be in exactly one)")
            periods.append(TariffPeriod(str(p["id"]), valid_from, valid_to, charges, bands, str(p["source"])))
    except KeyError as err:
        raise TariffError(f"{source}: missing key {err}") from None
    except TypeError as err:
        raise TariffError(f"{source}: malformed ({err})") from None
    if not periods:
        raise TariffError(f"{source}: no [[periods]]")
    periods.sort(key=lambda p: p.valid_from)
    for a, b in itertools.pairwise(periods):
        if a.valid_to != b.valid_from:
            raise TariffError(f"{source}: period '{a.id}' ends {a.valid_to} but '{b.id}' starts {b.valid_from}: "
                              "periods must follow each other without gap or overlap")
    return TariffSet(str(data.get("name", source)), zone, tuple(periods))


def load_tariffs(name_or_path: str) -> TariffSet:
    """A shipped tariff file by name (service/dispatch/tariffs/NAME.toml) or a file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TARIFF_DIR / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise TariffError(f"{path}: cannot read tariff file ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise TariffError(f"{path}: not TOML ({err})") from None
    return parse_tariffs(data, str(path))

