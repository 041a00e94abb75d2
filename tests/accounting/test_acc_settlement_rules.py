"""Golden settlements under each rule regime, with the arithmetic written out, and straddling periods."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.accounting.rules import RuleError, RuleSet, load_rules, parse_rules, split_period
from service.accounting.settlement import SegmentResult, Settlement, settle_segment
from service.config import PACKAGED_RULES_DIR, SupplyContract

TZ = ZoneInfo("Europe/Copenhagen")
RULES = load_rules(PACKAGED_RULES_DIR, "dk_surplus_heat")


def contract(**kw: Any) -> SupplyContract:
    base: dict[str, Any] = {"id": "c1", "meters": ["m1"], "supplier": "DC", "utility": "DH", "capacity_mw": 5.0,
                            "agreed_price_dkk_per_gj": 60.0, "cost_based_price_dkk_per_gj": 55.0,
                            "substitution_price_dkk_per_gj": 70.0}
    return SupplyContract.model_validate(base | kw)


def month(c: SupplyContract, y: int, m: int, delivered: float, hp_gj: float = 0.0,
          rules: RuleSet = RULES) -> SegmentResult:
    start = datetime(y, m, 1, tzinfo=TZ)
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=TZ)
    segs = split_period(rules, start, end, TZ)
    assert len(segs) == 1, "a calendar month never straddles these rule changes"
    return settle_segment(c, rules, segs[0], delivered, 0.0, hp_gj)


def test_every_figure_in_the_rule_file_has_a_source() -> None:
    figures = [RULES.base_rate, RULES.heat_pump_deduction_factor, RULES.old_rate, RULES.old_share_of_remuneration,
               *RULES.rates.values(), *RULES.caps.values()]
    figures += [p.electricity_based_exempt for p in RULES.periods]
    figures += [f for p in RULES.periods for f in (p.efo_exempt, p.free_supply_utility_pays, p.cap_exempt_below_mw)
                if f is not None]
    assert all(f.source.strip() for f in figures)
    assert "electricity_based_process" in RULES.assumptions
    assert RULES.base_rate.value == 24.50 and RULES.rates[2022].value == 25.80 and RULES.rates[2024].value == 28.2
    assert (RULES.caps[2022].value, RULES.caps[2023].value, RULES.caps[2024].value) == (77, 93, 110)


def test_month_under_the_old_rules_2020() -> None:
    r = month(contract(), 2020, 3, 1000.0)
    # Price limit before 2022: min(cost-based 55, substitution 70) = 55; agreed 60 -> allowed 55.
    assert r.rule_period == "old_charge"
    assert r.price_limit_dkk_per_gj == 55 and r.allowed_price_dkk_per_gj == 55
    assert r.amount_dkk == Decimal("55000.00")  # 1000 x 55
    # Old charge: min(50 DKK/GJ x 1000 GJ = 50,000; 33 % x remuneration 55,000 = 18,150) = 18,150 DKK.
    assert r.charge_dkk == Decimal("18150.00")
    assert r.charge_payer == "supplier"


def test_month_under_the_2021_bill_before_the_cap() -> None:
    r = month(contract(), 2021, 6, 1000.0)
    # Charge: 1000 GJ x 25.61 DKK/GJ (2021, derived from the index) = 25,610 DKK; provisional.
    assert r.charge_dkk == Decimal("25610.00")
    assert r.provisional
    # Price: still min(55, 70) = 55 -> 55,000 DKK.
    assert r.amount_dkk == Decimal("55000.00")


def test_month_under_the_price_cap_2023() -> None:
    c = contract(agreed_price_dkk_per_gj=100.0, utility_cost_dkk_per_gj=10.0)
    r = month(c, 2023, 2, 1000.0)
    # Charge: 1000 x 27.00 (2023, derived) = 27,000 DKK, paid by the supplier.
    assert r.charge_dkk == Decimal("27000.00") and r.charge_payer == "supplier"
    # Cap 93 covers payment + the utility's own 10 DKK/GJ: 93 - 10 - 0 = 83; the substitution principle stays
    # under the cap, and the substitution price 70 is lower: limit min(83, 70) = 70; agreed 100 -> 70.
    # (Before the billing corrections this was 83 and 83,000 DKK: the substitution price was ignored.)
    assert r.price_limit_dkk_per_gj == 70 and r.price_bound_checked
    assert r.amount_dkk == Decimal("70000.00")
    # With a substitution price above the cap's limit, the cap binds: min(83, 95) = 83 -> 83,000 DKK.
    high = month(contract(agreed_price_dkk_per_gj=100.0, utility_cost_dkk_per_gj=10.0,
                          substitution_price_dkk_per_gj=95.0), 2023, 2, 1000.0)
    assert high.price_limit_dkk_per_gj == 83 and high.amount_dkk == Decimal("83000.00")


def test_heat_pump_deduction_2024() -> None:
    c = contract(agreed_price_dkk_per_gj=100.0, heat_pumps=["hp1"])
    r = month(c, 2024, 5, 1000.0, hp_gj=200.0)
    # Taxable: 1000 GJ - 3 x 200 GJ electricity = 400 GJ; charge 400 x 28.2 = 11,280 DKK (published rate).
    assert r.taxable_gj == pytest.approx(400.0)
    assert r.charge_dkk == Decimal("11280.00")
    assert not r.provisional
    # The law's own example: 4,000 kWh heat - 3 x 1,000 kWh = 1,000 kWh taxable.
    kwh = month(c, 2024, 5, 4000 * 0.0036, hp_gj=1000 * 0.0036)
    assert kwh.taxable_gj / 0.0036 == pytest.approx(1000.0)


def test_small_supplier_and_heat_pump_profit_rules_under_the_cap() -> None:
    # Under 0.25 MW: no cap, bounded by the substitution price 70.
    small = month(contract(capacity_mw=0.2, agreed_price_dkk_per_gj=100.0), 2023, 3, 100.0)
    assert small.price_limit_dkk_per_gj == 70 and small.amount_dkk == Decimal("7000.00")
    # Heat lifted by electric heat pumps: up to the substitution price 120 (above the 93 cap).
    hp = month(contract(heat_pump_lifted=True, agreed_price_dkk_per_gj=115.0,
                        substitution_price_dkk_per_gj=120.0), 2023, 3, 100.0)
    assert hp.price_limit_dkk_per_gj == 120 and hp.amount_dkk == Decimal("11500.00")


def test_free_supply_passes_the_charge_to_the_utility() -> None:
    c = contract(agreed_price_dkk_per_gj=0.0, free_supply=True, utility_cost_dkk_per_gj=10.0)
    r = month(c, 2024, 1, 1000.0)
    # Charge 1000 x 28.2 = 28,200 DKK, borne by the utility; under the cap it counts: 110 - 10 - 28.2 = 71.8,
    # and the substitution price 70 is lower still: limit 70 (was 71.8 before the substitution bound).
    assert r.charge_payer == "utility" and r.charge_dkk == Decimal("28200.00")
    assert r.price_limit_dkk_per_gj == 70
    assert "71.8" in r.price_limit_reason
    assert r.amount_dkk == 0


def test_exemptions() -> None:
    efo = month(contract(efo_member=True), 2024, 1, 1000.0)
    assert efo.charge_dkk == 0 and efo.charge_payer == "none" and "EFO" in efo.charge_reason
    dc = month(contract(electricity_based_process=True), 2024, 1, 1000.0)
    assert dc.charge_dkk == 0 and "electricity-based" in dc.charge_reason
    # Before 2021 the default rule set applies none of these exemptions (they came with the 2021 bill):
    # min(50 x 1000, 0.33 x 55,000) = 18,150 DKK, paid by the supplier even for free supply.
    assert month(contract(electricity_based_process=True), 2020, 1, 1000.0).charge_dkk == Decimal("18150.00")
    assert month(contract(efo_member=True), 2020, 1, 1000.0).charge_dkk == Decimal("18150.00")


def test_month_after_the_cap_was_repealed() -> None:
    r = month(contract(agreed_price_dkk_per_gj=150.0), 2025, 8, 1000.0)
    # No limit from 2025-07-01: agreed 150 stands -> 150,000 DKK; charge 1000 x 28.2 (carried forward).
    assert r.rule_period == "no_cap" and r.price_limit_dkk_per_gj is None
    assert r.amount_dkk == Decimal("150000.00")
    assert r.charge_dkk == Decimal("28200.00") and r.provisional


def test_period_straddling_the_repeal_is_split() -> None:
    start, end = datetime(2025, 6, 16, tzinfo=TZ), datetime(2025, 7, 16, tzinfo=TZ)
    segs = split_period(RULES, start, end, TZ)
    assert [s.period.id for s in segs] == ["price_cap", "no_cap"]
    assert segs[0].end == datetime(2025, 6, 30, 22, tzinfo=UTC)  # local midnight 1 July, CEST
    c = contract(agreed_price_dkk_per_gj=150.0, utility_cost_dkk_per_gj=10.0)
    june = settle_segment(c, RULES, segs[0], 500.0, 0.0, 0.0)
    july = settle_segment(c, RULES, segs[1], 600.0, 0.0, 0.0)
    # June: cap 110 (2025, carried forward) - 10 = 100, above the substitution price 70: limit 70 ->
    # 500 x 70 = 35,000 (50,000 before the substitution bound). July, no cap: 600 x 150 = 90,000.
    assert june.amount_dkk == Decimal("35000.00") and july.amount_dkk == Decimal("90000.00")
    s = Settlement("c1", "custom", start, end, {"m1": 1100.0}, (june, july))
    assert s.amount_dkk == Decimal("125000.00")
    # Charge: (500 + 600) x 28.2 = 31,020 DKK; allowed price is energy-weighted: 125,000 / 1100 = 113.6364.
    assert s.charge_dkk == Decimal("31020.00")
    assert s.allowed_price_dkk_per_gj == Decimal("113.6364")
    doc = s.as_dict()
    assert doc["energy_gj"] == {"m1": 1100.0, "total": 1100.0} and len(doc["segments"]) == 2


def test_period_straddling_a_new_year_uses_each_years_figures() -> None:
    segs = split_period(RULES, datetime(2021, 12, 15, tzinfo=TZ), datetime(2022, 1, 15, tzinfo=TZ), TZ)
    assert [(s.period.id, s.year) for s in segs] == [("indexed_charge", 2021), ("price_cap", 2022)]
    c = contract(agreed_price_dkk_per_gj=100.0)
    a, b = (settle_segment(c, RULES, s, 100.0, 0.0, 0.0) for s in segs)
    # 2021: 100 x 25.61 = 2,561; price min(55, 70) = 55. 2022: 100 x 25.80 = 2,580; min(cap 77, substitution
    # 70) = 70 (77 before the substitution bound).
    assert (a.charge_dkk, b.charge_dkk) == (Decimal("2561.00"), Decimal("2580.00"))
    assert (a.allowed_price_dkk_per_gj, b.allowed_price_dkk_per_gj) == (55, 70)


def test_rule_change_inside_a_month_from_a_custom_rule_file(tmp_path: Path) -> None:
    text = (PACKAGED_RULES_DIR / "dk_surplus_heat.toml").read_text()
    text = text.replace("valid_to = 2025-07-01", "valid_to = 2025-07-10").replace(
        "valid_from = 2025-07-01", "valid_from = 2025-07-10")
    (tmp_path / "custom.toml").write_text(text)
    rules = load_rules(tmp_path, "custom")
    segs = split_period(rules, datetime(2025, 7, 1, tzinfo=TZ), datetime(2025, 8, 1, tzinfo=TZ), TZ)
    assert [s.period.id for s in segs] == ["price_cap", "no_cap"]
    assert segs[0].end == datetime(2025, 7, 10, tzinfo=TZ)


def test_bad_rule_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="not found"):
        load_rules(tmp_path, "nothing")
    with pytest.raises(RuleError, match="missing key"):
        parse_rules({"name": "x"}, "x.toml")
    with pytest.raises(RuleError, match="no charge rate for 2031"):
        RULES.rate(2031)
    text = (PACKAGED_RULES_DIR / "dk_surplus_heat.toml").read_text()
    (tmp_path / "gap.toml").write_text(text.replace("valid_from = 2025-07-01", "valid_from = 2025-08-01"))
    with pytest.raises(RuleError, match="without gap or overlap"):
        load_rules(tmp_path, "gap")


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2027, 1, 1)),
       st.integers(min_value=1, max_value=800 * 24), st.floats(min_value=0, max_value=5000))
def test_segments_tile_the_period_and_totals_do_not_depend_on_the_split(
        start_naive: datetime, hours: int, per_hour_gj: float) -> None:
    start = start_naive.replace(tzinfo=UTC)
    end = start + timedelta(hours=hours)
    segs = split_period(RULES, start, end, TZ)
    # Contiguous, in order, covering [start, end) exactly, each under the entry in force on its first day.
    assert segs[0].start == start and segs[-1].end == end
    assert all(a.end == b.start for a, b in itertools.pairwise(segs))
    assert all(s.period == RULES.period_on(s.start.astimezone(TZ).date()) for s in segs)
    # Steady delivery: each segment's energy by its duration; the segments' energy adds up to the whole.
    c = contract(agreed_price_dkk_per_gj=50.0)
    results = [settle_segment(c, RULES, s, per_hour_gj * (s.end - s.start).total_seconds() / 3600, 0.0, 0.0)
               for s in segs if s.year <= 2026]
    if len(results) == len(segs):
        assert sum(r.delivered_gj for r in results) == pytest.approx(per_hour_gj * hours, rel=1e-9, abs=1e-9)
        # The price is 50 DKK/GJ or below every limit here, so the amount is additive too: 50 x total.
        # Each segment's amount is rounded to the øre (and its energy to 1 kJ): at most half an øre a line.
        total = float(sum(r.amount_dkk for r in results))
        assert total == pytest.approx(50.0 * per_hour_gj * hours, rel=1e-9, abs=0.006 * len(results))
