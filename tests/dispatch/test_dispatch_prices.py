"""DayAheadPrices parsing (JSON as the API answers, CSV), strict validation, the HTTP fetch and the file read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from service.dispatch.prices import (
    PriceError,
    PriceSeries,
    PriceUnavailable,
    fetch,
    parse_csv,
    parse_json,
    parse_records,
    read_file,
    to_records,
)

T0 = datetime(2025, 10, 1, tzinfo=UTC)


def _record(i: int, price: str = "512.34", area: str = "DK1") -> dict[str, object]:
    t = T0 + timedelta(minutes=15 * i)
    return {"TimeUTC": t.strftime("%Y-%m-%dT%H:%M:%S"), "TimeDK": (t + timedelta(hours=2)).strftime(
        "%Y-%m-%dT%H:%M:%S"), "PriceArea": area, "DayAheadPriceDKK": price, "DayAheadPriceEUR": "68.65"}


def _api(records: list[dict[str, object]]) -> str:
    # As the API writes them: numbers, newest first.
    out = [{**r, "DayAheadPriceDKK": float(str(r["DayAheadPriceDKK"])) if r["DayAheadPriceDKK"] is not None
            else None} for r in records]
    body = json.dumps({"total": len(out), "dataset": "DayAheadPrices", "records": out[::-1]})
    # json.dumps writes 512.34 as 512.34; a price of -0.07 stays -0.07: the parser reads the text as Decimal.
    return body


def test_api_json_is_parsed_sorted_and_exact() -> None:
    """Newest-first records become a series from the first quarter hour; prices are exact Decimals."""
    series = parse_json(_api([_record(0, "512.34"), _record(1, "-0.07"), _record(2, "1999.99")]), "DK1")
    assert series.start == T0
    assert series.dkk_per_mwh == (Decimal("512.34"), Decimal("-0.07"), Decimal("1999.99"))
    assert series.end == T0 + timedelta(minutes=45)


def test_window_covers_or_says_none() -> None:
    """A window inside the series, one off the quarter-hour grid, one running past the end."""
    series = PriceSeries("DK1", T0, (Decimal(1), Decimal(2), Decimal(3)))
    assert series.window(T0 + timedelta(minutes=15), 2) == (Decimal(2), Decimal(3))
    assert series.window(T0 + timedelta(minutes=15), 3) is None
    assert series.window(T0 + timedelta(minutes=5), 1) is None
    assert series.window(T0 - timedelta(minutes=15), 1) is None


@pytest.mark.parametrize(("records", "message"), [
    ([{k: v for k, v in _record(0).items() if k != "DayAheadPriceDKK"}],
     "prices: record 0: missing field DayAheadPriceDKK"),
    ([_record(0), _record(1, area="DK2")], "prices: record 1: PriceArea is 'DK2', expected 'DK1'"),
    ([_record(0), _record(2)], "prices: no price from 2025-10-01T00:15:00+00:00 to 2025-10-01T00:30:00+00:00"),
    ([_record(0), _record(0)], "prices: two prices for 2025-10-01T00:00:00+00:00"),
    ([_record(0, "abc")], "prices: record 0: DayAheadPriceDKK 'abc' is not a number"),
    ([_record(0, "NaN")], "prices: record 0: DayAheadPriceDKK 'NaN' is not a finite number"),
    ([{**_record(0), "DayAheadPriceDKK": None}], "prices: record 0: DayAheadPriceDKK is missing a value"),
    ([{**_record(0), "TimeUTC": "2025-10-01T00:10:00"}], "is not on a quarter hour"),
    ([{**_record(0), "TimeUTC": "yesterday"}], "is not an ISO date and time"),
    ([], "prices: no price records for DK1"),
])
def test_bad_records_are_refused_with_a_clear_message(records: list[dict[str, object]], message: str) -> None:
    """Missing field, wrong area, gap, duplicate, bad number, off-grid time, no records."""
    with pytest.raises(PriceError) as err:
        parse_records(records, "DK1")
    assert message in str(err.value)


def test_unknown_area_and_bad_json() -> None:
    """An area that is not a Danish bidding zone; text that is not JSON; JSON without records."""
    with pytest.raises(PriceError, match="unknown price area 'SE3'"):
        parse_records([_record(0)], "SE3")
    with pytest.raises(PriceError, match="not JSON"):
        parse_json("{", "DK1")
    with pytest.raises(PriceError, match="expected"):
        parse_json('{"total": 0}', "DK1")


def test_csv_with_comma_and_with_semicolon_and_decimal_comma() -> None:
    """The same prices from a plain CSV and from a Danish `;` CSV with decimal commas."""
    header = "TimeUTC,TimeDK,PriceArea,DayAheadPriceDKK,DayAheadPriceEUR\n"
    plain = header + "2025-10-01T00:00:00,2025-10-01T02:00:00,DK1,512.34,68.65\n" \
                     "2025-10-01T00:15:00,2025-10-01T02:15:00,DK1,-3.5,-0.47\n"
    danish = header.replace(",", ";") + "2025-10-01T00:00:00;2025-10-01T02:00:00;DK1;512,34;68,65\n" \
                                        "2025-10-01T00:15:00;2025-10-01T02:15:00;DK1;-3,5;-0,47\n"
    assert parse_csv(plain, "DK1").dkk_per_mwh == parse_csv(danish, "DK1").dkk_per_mwh \
        == (Decimal("512.34"), Decimal("-3.5"))
    with pytest.raises(PriceError, match="CSV header lacks DayAheadPriceEUR"):
        parse_csv("TimeUTC,TimeDK,PriceArea,DayAheadPriceDKK\n", "DK1")
    with pytest.raises(PriceError, match="record 0: DayAheadPriceDKK is missing a value"):
        parse_csv(header + "2025-10-01T00:00:00,2025-10-01T02:00:00,DK1,,\n", "DK1")


def test_files_json_and_csv_round_trip(tmp_path: Path) -> None:
    """to_records writes what read_file reads back; a missing file is 'unavailable'."""
    series = PriceSeries("DK2", T0, (Decimal("100.5"), Decimal("-20.25")))
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"records": to_records(series)}, default=str))
    assert read_file(path, "DK2") == series
    rows = to_records(series)
    csv_path = tmp_path / "prices.csv"
    csv_path.write_text("TimeUTC,TimeDK,PriceArea,DayAheadPriceDKK,DayAheadPriceEUR\n" + "".join(
        f"{r['TimeUTC']},{r['TimeDK']},{r['PriceArea']},{r['DayAheadPriceDKK']},{r['DayAheadPriceEUR']}\n"
        for r in rows))
    assert read_file(csv_path, "DK2") == series
    with pytest.raises(PriceUnavailable, match="cannot read price file"):
        read_file(tmp_path / "none.json", "DK2")


def test_fetch_sends_the_query_and_parses_the_answer() -> None:
    """The endpoint gets start, end and the area filter; its answer becomes the series."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=_api([_record(0), _record(1)]))

    series = fetch("http://prices.test/dataset/DayAheadPrices", "DK1", T0, T0 + timedelta(minutes=30), 5.0,
                   transport=httpx.MockTransport(handler))
    assert series.dkk_per_mwh == (Decimal("512.34"), Decimal("512.34"))
    params = seen[0].url.params
    assert (params["start"], params["end"]) == ("2025-10-01T00:00", "2025-10-01T00:30")
    assert json.loads(params["filter"]) == {"PriceArea": ["DK1"]}


def test_fetch_errors_are_unavailable() -> None:
    """An HTTP error status and a transport failure (a timeout) both say the source is unavailable."""
    with pytest.raises(PriceUnavailable, match="answered HTTP 503"):
        fetch("http://prices.test/x", "DK1", T0, T0, 1.0,
              transport=httpx.MockTransport(lambda r: httpx.Response(503)))

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(PriceUnavailable, match="price fetch failed \\(ReadTimeout"):
        fetch("http://prices.test/x", "DK1", T0, T0, 1.0, transport=httpx.MockTransport(timeout))
