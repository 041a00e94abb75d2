"""The billing corrections: the substitution bound under the cap, unchecked bounds, no energy from the future,
the rounding rule, and closing only finished months; arithmetic written out beside each assertion."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.accounting.checks import check_accounting
from service.accounting.engine import MeterData, meter_spec, meter_tally, settle
from service.accounting.kpis import kpis
from service.accounting.metering import PowerSample, k_factor
from service.accounting.registers import Reading, register_steps
from service.accounting.rules import RuleError, load_rules, split_period
from service.accounting.settlement import UNCHECKED, Settlement, settle_segment
from service.api.app import create_app
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import PACKAGED_RULES_DIR, ConfigError, DatabaseConfig, SupplyContract, parse_config
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.accounting.acc_support import MARCH_START, TZ, config, config_dict, constant_meter, write

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(PACKAGED_RULES_DIR, "dk_surplus_heat")


def contract(**kw: Any) -> SupplyContract:
    base: dict[str, Any] = {"id": "c1", "meters": ["m1"], "supplier": "DC", "utility": "DH", "capacity_mw": 5.0,
                            "agreed_price_dkk_per_gj": 100.0}
    return SupplyContract.model_validate(base | kw)


def segment(y: int, m: int) -> Any:
    start = datetime(y, m, 1, tzinfo=TZ)
    [seg] = split_period(RULES, start, datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=TZ), TZ)
    return seg


# --- 1. the substitution price bounds every sale under the cap -----------------------------------------


def test_the_substitution_price_bounds_an_ordinary_sale_under_the_cap() -> None:
    # The case: 2024, agreed 100, substitution 85, cap 110. Limit = min(110 - 0 - 0, 85) = 85.
    r = settle_segment(contract(substitution_price_dkk_per_gj=85.0), RULES, segment(2024, 4), 1000.0, 0.0, 0.0)
    assert r.price_limit_dkk_per_gj == 85 and r.allowed_price_dkk_per_gj == 85
    assert r.amount_dkk == Decimal("85000.00")  # 1000 GJ x 85 DKK/GJ
    assert "substitution price 85" in r.price_limit_reason and r.price_bound_checked and not r.provisional


def test_heat_pump_lifted_and_small_suppliers_are_bounded_by_the_substitution_price_only() -> None:
    # Heat-pump lifted, substitution 130 above the cap 110: the cap does not apply, 130 bounds -> agreed 125.
    hp = settle_segment(contract(heat_pump_lifted=True, agreed_price_dkk_per_gj=125.0,
                                 substitution_price_dkk_per_gj=130.0), RULES, segment(2024, 4), 10.0, 0.0, 0.0)
    assert hp.price_limit_dkk_per_gj == 130 and hp.amount_dkk == Decimal("1250.00")  # 10 x 125
    small = settle_segment(contract(capacity_mw=0.1, agreed_price_dkk_per_gj=125.0,
                                    substitution_price_dkk_per_gj=115.0), RULES, segment(2024, 4), 10.0, 0.0, 0.0)
    assert small.price_limit_dkk_per_gj == 115 and small.amount_dkk == Decimal("1150.00")  # 10 x 115


# --- 2. a bound that cannot be checked is never skipped silently -----------------------------------------


def test_an_ordinary_contract_without_substitution_price_is_provisional_and_says_so() -> None:
    r = settle_segment(contract(), RULES, segment(2024, 4), 1000.0, 0.0, 0.0)
    # Only the cap is known: 110 -> agreed 100 stands, but the substitution bound was not checked.
    assert r.price_limit_dkk_per_gj == 110 and r.amount_dkk == Decimal("100000.00")
    assert not r.price_bound_checked and r.provisional and "NOT checked" in r.price_limit_reason
    doc = Settlement("c1", "2024-04", r.start, r.end, {"m1": 1000.0}, (r,), flags=(UNCHECKED,)).as_dict()
    assert doc["provisional"] and UNCHECKED in doc["flags"] and doc["segments"][0]["price_bound_checked"] is False


@pytest.mark.parametrize(("terms", "year", "field"), [
    ({"capacity_mw": 0.1, "agreed_price_dkk_per_gj": 125.0}, 2024, "substitution_price_dkk_per_gj"),
    ({"heat_pump_lifted": True}, 2024, "substitution_price_dkk_per_gj"),
    ({"substitution_price_dkk_per_gj": 70.0}, 2021, "cost_based_price_dkk_per_gj"),
    ({"cost_based_price_dkk_per_gj": 55.0}, 2020, "substitution_price_dkk_per_gj"),
])
def test_a_regime_that_needs_a_missing_price_is_refused(terms: dict[str, Any], year: int, field: str) -> None:
    # No price the rule needs: no settlement at all (the 0.1 MW supplier was settled at 125 over a 110 cap).
    with pytest.raises(RuleError, match=field):
        settle_segment(contract(**terms), RULES, segment(year, 4), 10.0, 0.0, 0.0)


def _plant(tmp_path: Path, contract_lines: str) -> Path:
    path = tmp_path / "plant.toml"
    path.write_text(f"""
[[devices]]
id = "m1"
protocol = "mqtt"
endpoint = "mqtt://127.0.0.1:1883"
points = [{{ id = "energy", kind = "counter", topic = "mbus/m1", json_path = "$.e" }}]

[accounting]
rules_dir = "{PACKAGED_RULES_DIR}"
meters = [{{ id = "m1", energy_point = "m1.energy", qp_m3h = 10.0, qi_m3h = 0.1, max_power_kw = 500.0 }}]

[[accounting.contracts]]
id = "c1"
meters = ["m1"]
supplier = "DC"
utility = "DH"
agreed_price_dkk_per_gj = 125.0
{contract_lines}
""")
    return path


@pytest.mark.integration  # heatrec check-config as a child process
def test_check_config_names_the_missing_price_field(tmp_path: Path) -> None:
    bad = _plant(tmp_path, "capacity_mw = 0.1\nvalid_from = 2024-01-01")
    r = subprocess.run([sys.executable, "-m", "service.cli", "check-config", str(bad)], capture_output=True,
                       text=True, cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{bad}: accounting.contracts[0].substitution_price_dkk_per_gj: needed under rule period " \
           "'price_cap'" in r.stderr
    # The same contract whose term starts after the cap was repealed needs no substitution price.
    ok = _plant(tmp_path, "capacity_mw = 0.1\nvalid_from = 2025-07-01")
    r = subprocess.run([sys.executable, "-m", "service.cli", "check-config", str(ok)], capture_output=True,
                       text=True, cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 0, r.stderr


def test_check_accounting_covers_the_contract_term_only() -> None:
    from datetime import date

    old = config(substitution_price_dkk_per_gj=70.0, valid_from=date(2020, 6, 1), valid_to=date(2022, 1, 1))
    with pytest.raises(ConfigError, match=r"contracts\[0\]\.cost_based_price_dkk_per_gj: needed under rule "
                                          r"period 'old_charge'"):
        check_accounting(old, "plant.toml")
    # Without a term the contract is checked from today on (2026: no price limit in force): nothing to say.
    check_accounting(config(substitution_price_dkk_per_gj=None, capacity_mw=0.1), "plant.toml",
                     today=date(2026, 12, 1))
    with pytest.raises(ConfigError, match="rule set not found"):
        check_accounting(parse_config(config_dict(rule_set="nothing_here")), "plant.toml")


# --- 4. money is Decimal, rounded half-up to the øre per line ---------------------------------------------


def test_half_an_ore_is_rounded_up_and_parts_sum_to_totals() -> None:
    c = contract(substitution_price_dkk_per_gj=120.0)
    a, b = (settle_segment(c, RULES, s, 455.625, 0.0, 0.0)
            for s in split_period(RULES, datetime(2024, 12, 16, tzinfo=TZ), datetime(2025, 1, 16, tzinfo=TZ), TZ))
    # 455.625 GJ x 28.2 DKK/GJ = 12,848.625 DKK exactly: half an øre, rounded up (a binary float rounds it down).
    assert round(455.625 * 28.2, 2) == 12848.62  # what the old float arithmetic gave
    assert a.charge_dkk == Decimal("12848.63") and b.charge_dkk == Decimal("12848.63")
    s = Settlement("c1", "custom", a.start, b.end, {"m1": 911.25}, (a, b))
    assert s.charge_dkk == a.charge_dkk + b.charge_dkk == Decimal("25697.26")
    # Amounts: 455.625 x 100 = 45,562.50 each; the total is the sum of the lines, to the øre.
    assert s.amount_dkk == Decimal("91125.00") == a.amount_dkk + b.amount_dkk
    doc = s.as_dict()
    assert doc["charge_dkk"] == 25697.26 and [g["charge_dkk"] for g in doc["segments"]] == [12848.63, 12848.63]


# --- 3. no energy from the future -------------------------------------------------------------------------


M = config().accounting.meters[0]  # type: ignore[union-attr]
Q = 100.0 / (k_factor(70.0, 40.0) * 30.0)  # m3/h for 100 kW at 70/40


def _meter_data(start: datetime, increments: list[float], every_s: int) -> MeterData:
    readings, value = [Reading(start, 10.0)], 10.0
    for i, inc in enumerate(increments, 1):
        value += inc
        readings.append(Reading(start + timedelta(seconds=every_s * i), value))
    power = [PowerSample(start + timedelta(seconds=60 * i), Q, 70.0, 40.0)
             for i in range(len(increments) * every_s // 60 + 1)]
    return MeterData(register_steps(readings, meter_spec(M)), power)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=2, max_size=30),
       st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_a_settlement_at_t_holds_nothing_after_t_and_cuts_add_up(increments: list[float], tf: float,
                                                                  bf: float) -> None:
    start, every = MARCH_START, 600
    data = _meter_data(start, increments, every)
    last = start + timedelta(seconds=every * len(increments))
    end = last + timedelta(hours=2)  # the period runs on past the data, as an open month does
    t = start + (end - start) * tf
    at_t = meter_tally(M, data, start, t, open_end=t < end)
    # Never more than was registered by t: the readings up to t, plus the interpolated part of the step
    # that t cuts; the sensors' hold after the last reading (up to gap_s = 900 s) is not counted past t.
    registered = sum(inc * max(0.0, min(1.0, ((t - start).total_seconds() - every * i) / every))
                     for i, inc in enumerate(increments))
    assert at_t.energy <= registered + 100.0 * max(0.0, (t - last).total_seconds()) / 1e6 + 1e-9
    if t <= last + timedelta(seconds=900):
        assert at_t.estimated == 0.0  # the seconds since the last reading wait for the next reading
    # Additivity over any cut b of [start, c]: energy of [a, c] = [a, b] + [b, c].
    c = last
    b = start + (c - start) * bf
    whole = meter_tally(M, data, start, c).energy
    parts = meter_tally(M, data, start, b).energy + meter_tally(M, data, b, c).energy
    assert parts == pytest.approx(whole, rel=1e-9, abs=1e-9)


async def test_an_open_month_counts_up_to_its_as_of_and_estimates_nothing_beyond(conn: asyncpg.Connection) -> None:
    cfg = config()
    # Ten days and five minutes of a 100 kW meter with readings every 10 minutes (a demo meter's month so far);
    # the sensors publish alongside. The settlement is computed 30 s after the last reading.
    last = MARCH_START + timedelta(days=10)
    await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), last, 100.0))
    as_of = last + timedelta(seconds=30)
    s = await settle(conn, cfg, "c1", MARCH_START, MARCH_START + timedelta(days=31), "2024-03", as_of=as_of)
    # 100 kW x 240 h = 24,000 kWh = 86.4 GJ through the last reading; nothing estimated past it (before the fix,
    # the last sensor sample was held for gap_s = 15 min: 100 kW x 900 s = 0.09 GJ estimated, past now).
    assert s.delivered_gj == pytest.approx(86.4, abs=1e-6) and s.estimated_gj == 0.0
    assert s.flags == () and s.counted_until == as_of
    doc = s.as_dict()
    assert doc["as_of"] == as_of.isoformat() and doc["counted_until"] == as_of.isoformat()
    # Half an hour later with no new reading the register is overdue (> gap_s): the sensors fill the gap up
    # to as_of only: 100 kW x 1,800 s = 0.18 GJ estimated, none of it after as_of.
    later = last + timedelta(minutes=30)
    s2 = await settle(conn, cfg, "c1", MARCH_START, MARCH_START + timedelta(days=31), "2024-03", as_of=later)
    assert s2.estimated_gj == pytest.approx(0.09, abs=1e-6)  # the sensors' last sample holds 900 s at most
    assert s2.delivered_gj <= 86.4 + 100.0 * 1800 / 1e6 + 1e-9
    # KPIs of the open month follow the same rule: the same energy, and homes scaled to the elapsed part.
    k = await kpis(conn, cfg, MARCH_START, MARCH_START + timedelta(days=31), as_of=as_of)
    assert k["delivered_gj"] == pytest.approx(86.4, abs=1e-6) and k["as_of"] == as_of.isoformat()
    assert k["end"] == as_of.isoformat()


async def test_an_unfinished_month_cannot_be_closed(database: DatabaseConfig) -> None:
    pool = await connect_pool(database)
    cfg = config(substitution_price_dkk_per_gj=120.0)
    now = datetime.now(UTC)
    period = now.astimezone(TZ).strftime("%Y-%m")
    async with pool.acquire() as c:
        await migrate(c)
        token = await create_token(c, "operator", "op")
        await write(c, cfg, constant_meter(now - timedelta(hours=2), now - timedelta(minutes=1), 100.0))
    app = create_app(ServiceState(cfg, SampleBus(), pool))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            hdr = {"Authorization": f"Bearer {token}"}
            r = await client.post(f"/api/v1/settlements/c1/{period}/close", json={}, headers=hdr)
            assert r.status_code == 409 and "before its period has ended" in r.json()["error"]
            draft = await client.get("/api/v1/settlements", params={"period": period}, headers=hdr)
            [doc] = draft.json()["settlements"]
            assert doc["status"] == "open" and doc["as_of"] is not None
            # A past month with no data at all is incomplete: refused unless the operator says why.
            r = await client.post("/api/v1/settlements/c1/2024-02/close", json={}, headers=hdr)
            assert r.status_code == 409 and "incomplete_reason" in r.json()["error"]
            r = await client.post("/api/v1/settlements/c1/2024-02/close",
                                  json={"incomplete_reason": "plant not yet commissioned"}, headers=hdr)
            assert r.status_code == 200 and r.json()["incomplete_reason"] == "plant not yet commissioned"
    finally:
        await pool.close()
