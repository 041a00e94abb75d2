"""Day-ahead prices in Energinet's Energi Data Service `DayAheadPrices` format: parse, validate, fetch, read.

A record is `{"TimeUTC": "2025-10-01T00:00:00", "TimeDK": ..., "PriceArea": "DK1", "DayAheadPriceDKK": ...,
"DayAheadPriceEUR": ...}`; the price is per MWh of electricity, may be negative, and comes every 15 minutes
(the hourly `Elspotprices` dataset ended 2025-09-30). Money is Decimal from the text on: a JSON number is
never read as a float.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from service.errors import Conflict

STEP = timedelta(minutes=15)
FIELDS = ("TimeUTC", "TimeDK", "PriceArea", "DayAheadPriceDKK", "DayAheadPriceEUR")
AREAS = ("DK1", "DK2")


class PriceError(Conflict):
    """Price data that cannot be used (a field, the area, a gap, a duplicate); the message says where."""


class PriceUnavailable(PriceError):
    """The price source could not be reached or answered with an error."""

    http_status = 503


@dataclass(frozen=True)
class PriceSeries:
    """Consecutive 15-minute spot prices of one area, DKK per MWh of electricity, from `start` (UTC)."""

    area: str
    start: datetime
    dkk_per_mwh: tuple[Decimal, ...]

    @property
    def end(self) -> datetime:
        """The end of the last interval."""
        return self.start + STEP * len(self.dkk_per_mwh)

    def window(self, start: datetime, steps: int) -> tuple[Decimal, ...] | None:
        """The prices of `steps` intervals from `start`, or None unless the series covers them all."""
        offset = (start - self.start) / STEP
        if offset != int(offset) or offset < 0 or int(offset) + steps > len(self.dkk_per_mwh):
            return None
        first = int(offset)
        return self.dkk_per_mwh[first:first + steps]


def _time(raw: Any, where: str) -> datetime:
    if not isinstance(raw, str):
        raise PriceError(f"{where}: TimeUTC must be a text like 2025-10-01T00:00:00, not {raw!r}")
    try:
        t = datetime.fromisoformat(raw)
    except ValueError:
        raise PriceError(f"{where}: TimeUTC {raw!r} is not an ISO date and time") from None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    if t.minute % 15 or t.second or t.microsecond:
        raise PriceError(f"{where}: TimeUTC {raw!r} is not on a quarter hour")
    return t


def _price(raw: Any, where: str, decimal_comma: bool = False) -> Decimal:
    if isinstance(raw, bool) or raw is None:
        raise PriceError(f"{where}: DayAheadPriceDKK is missing a value")
    if isinstance(raw, float):  # records built in code: the float's shortest text is what was meant
        raw = repr(raw)
    text = str(raw).strip()
    if decimal_comma:
        text = text.replace(",", ".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise PriceError(f"{where}: DayAheadPriceDKK {raw!r} is not a number") from None
    if not value.is_finite():
        raise PriceError(f"{where}: DayAheadPriceDKK {raw!r} is not a finite number")
    return value


def parse_records(records: Iterable[Mapping[str, Any]], area: str, source: str = "prices",
                  decimal_comma: bool = False) -> PriceSeries:
    """Validate DayAheadPrices records of one area into a gap-free series (any order in, sorted out)."""
    if area not in AREAS:
        raise PriceError(f"{source}: unknown price area {area!r} (expected one of {', '.join(AREAS)})")
    rows: list[tuple[datetime, Decimal]] = []
    for i, record in enumerate(records):
        where = f"{source}: record {i}"
        if not isinstance(record, Mapping):
            raise PriceError(f"{where}: not an object")
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise PriceError(f"{where}: missing field {', '.join(missing)}")
        if record["PriceArea"] != area:
            raise PriceError(f"{where}: PriceArea is {record['PriceArea']!r}, expected {area!r}")
        rows.append((_time(record["TimeUTC"], where), _price(record["DayAheadPriceDKK"], where, decimal_comma)))
    if not rows:
        raise PriceError(f"{source}: no price records for {area}")
    rows.sort(key=lambda r: r[0])
    for (a, _), (b, _) in itertools.pairwise(rows):
        if a == b:
            raise PriceError(f"{source}: two prices for {a.isoformat()}")
        if b - a != STEP:
            raise PriceError(f"{source}: no price from {(a + STEP).isoformat()} to {b.isoformat()} "
                             "(15-minute prices must follow each other without a gap)")
    return PriceSeries(area, rows[0][0], tuple(p for _, p in rows))


def parse_json(text: str | bytes, area: str, source: str = "prices") -> PriceSeries:
    """A DayAheadPrices API answer (`{"records": [...]}`) or a bare list of records."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except ValueError as err:
        raise PriceError(f"{source}: not JSON ({err})") from None
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise PriceError(f"{source}: expected {{\"records\": [...]}}")
    return parse_records(records, area, source)


def parse_csv(text: str, area: str, source: str = "prices") -> PriceSeries:
    """A CSV file with the DayAheadPrices fields as header; `;`-separated files may use a decimal comma."""
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    missing = [f for f in FIELDS if f not in (reader.fieldnames or ())]
    if missing:
        raise PriceError(f"{source}: CSV header lacks {', '.join(missing)}")
    records: list[dict[str, Any]] = []
    for row in reader:
        records.append({k: (v if v not in ("", None) else None) for k, v in row.items()})
    return parse_records(records, area, source, decimal_comma=delimiter == ";")


def read_file(path: Path, area: str) -> PriceSeries:
    """Read a `.json` or `.csv` price file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise PriceUnavailable(f"{path}: cannot read price file ({err.strerror})") from None
    if path.suffix.lower() == ".csv":
        return parse_csv(text, area, str(path))
    return parse_json(text, area, str(path))


def fetch(url: str, area: str, start: datetime, end: datetime, timeout_s: float,
          transport: httpx.BaseTransport | None = None) -> PriceSeries:
    """GET `url` with Energi Data Service's query (start, end, filter on the area), within a timeout."""
    params = {"start": start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M"),
              "end": end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M"),
              "filter": json.dumps({"PriceArea": [area]}), "sort": "TimeUTC asc", "timezone": "UTC"}
    try:
        with httpx.Client(timeout=timeout_s, transport=transport) as client:
            response = client.get(url, params=params)
    except httpx.HTTPError as err:
        raise PriceUnavailable(f"{url}: price fetch failed ({type(err).__name__}: {err})") from None
    if response.status_code != 200:
        raise PriceUnavailable(f"{url}: price fetch answered HTTP {response.status_code}")
    return parse_json(response.content, area, url)


def to_records(series: PriceSeries, eur_per_dkk: Decimal = Decimal("0.134")) -> list[dict[str, Any]]:
    """The series as DayAheadPrices records (as the API writes them; TimeDK in Danish time)."""
    dk = ZoneInfo("Europe/Copenhagen")
    out = []
    for i, price in enumerate(series.dkk_per_mwh):
        t = series.start + STEP * i
        out.append({"TimeUTC": t.strftime("%Y-%m-%dT%H:%M:%S"),
                    "TimeDK": t.astimezone(dk).strftime("%Y-%m-%dT%H:%M:%S"),
                    "PriceArea": series.area, "DayAheadPriceDKK": price,
                    "DayAheadPriceEUR": (price * eur_per_dkk).quantize(Decimal("0.01"))})
    return out

