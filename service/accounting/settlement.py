"""Settlement arithmetic: charge, who pays it, allowed price and amount, per rule segment of a period.

Money is Decimal, by one rounding rule (docs/ACCOUNTING.md, "Rounding"): figures of the rule file and
the contract are taken at their decimal text, energy at the register's 1 kJ resolution (6 decimals of
a GJ); each line (a segment's charge, a segment's amount) is rounded half-up to 0.01 DKK; a price
limit is rounded down to 0.0001 DKK/GJ (never above what the law allows); a settlement's totals are
the sums of its rounded lines, so its parts add up to the øre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from service.accounting.rules import PRICE_FIELDS, RuleError, RuleSet, Segment, cap_applies, required_prices
from service.config import SupplyContract

GJ_PER_KWH = 0.0036
CENT = Decimal("0.01")
PRICE_STEP = Decimal("0.0001")
ENERGY_STEP = Decimal("0.000001")  # 1 kJ, the registers' resolution
UNCHECKED = "price_bound_unchecked"  # a bound of the rule could not be checked: the settlement is provisional


def dec(x: float) -> Decimal:
    """A configured figure as the decimal its text says (28.2 is 28.2, not 28.199999...)."""
    return Decimal(repr(float(x)))


def energy_dec(gj: float) -> Decimal:
    """Energy in GJ at the registers' 1 kJ resolution."""
    return dec(gj).quantize(ENERGY_STEP, rounding=ROUND_HALF_UP)


def money(x: Decimal) -> Decimal:
    """One line of money, rounded half-up to the øre."""
    return x.quantize(CENT, rounding=ROUND_HALF_UP)


def _out(x: Decimal | None) -> float | None:
    # JSON has no decimal type: a number whose text is the exact decimal (12848.63).
    return None if x is None else float(x)


@dataclass(frozen=True)
class SegmentResult:
    """One rule segment of a settlement with the arithmetic's inputs and outputs."""

    start: datetime
    end: datetime
    rule_period: str
    year: int
    delivered_gj: float
    estimated_gj: float
    heat_pump_electricity_gj: float
    taxable_gj: float
    charge_rate_dkk_per_gj: Decimal | None
    charge_dkk: Decimal
    charge_payer: str  # supplier, utility or none
    charge_reason: str
    price_limit_dkk_per_gj: Decimal | None
    price_limit_reason: str
    allowed_price_dkk_per_gj: Decimal
    amount_dkk: Decimal
    provisional: bool
    sources: tuple[str, ...]
    price_bound_checked: bool = True

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "rule_period": self.rule_period,
                "year": self.year, "delivered_gj": round(self.delivered_gj, 6),
                "estimated_gj": round(self.estimated_gj, 6),
                "heat_pump_electricity_gj": round(self.heat_pump_electricity_gj, 6),
                "taxable_gj": round(self.taxable_gj, 6), "charge_rate_dkk_per_gj": _out(self.charge_rate_dkk_per_gj),
                "charge_dkk": _out(self.charge_dkk), "charge_payer": self.charge_payer,
                "charge_reason": self.charge_reason, "price_limit_dkk_per_gj": _out(self.price_limit_dkk_per_gj),
                "price_limit_reason": self.price_limit_reason, "price_bound_checked": self.price_bound_checked,
                "allowed_price_dkk_per_gj": _out(self.allowed_price_dkk_per_gj),
                "amount_dkk": _out(self.amount_dkk), "provisional": self.provisional,
                "sources": list(self.sources)}


@dataclass(frozen=True)
class _Limit:
    value: Decimal | None
    why: str
    provisional: bool = False
    checked: bool = True


def _floor_price(x: Decimal) -> Decimal:
    return x.quantize(PRICE_STEP, rounding=ROUND_FLOOR)


def _require_prices(contract: SupplyContract, seg: Segment) -> None:
    """Refuse a segment whose rule needs a price the contract does not give (check-config says so too)."""
    for name in required_prices(seg.period, contract.capacity_mw, contract.heat_pump_lifted):
        if getattr(contract, PRICE_FIELDS[name]) is None:
            raise RuleError(f"contract '{contract.id}': {PRICE_FIELDS[name]} is needed to settle "
                            f"{seg.start.date()}..{seg.end.date()} under rule period '{seg.period.id}': "
                            "set it in [[accounting.contracts]]")


def _price_limit(contract: SupplyContract, rules: RuleSet, seg: Segment, charge_per_gj_on_utility: Decimal,
                 sources: list[str]) -> _Limit:
    p = seg.period
    sub = None if contract.substitution_price_dkk_per_gj is None else dec(contract.substitution_price_dkk_per_gj)
    cost = None if contract.cost_based_price_dkk_per_gj is None else dec(contract.cost_based_price_dkk_per_gj)
    if p.price_limit == "min_cost_substitution":
        assert sub is not None and cost is not None  # _require_prices made sure
        return _Limit(min(cost, sub), f"min(cost-based {cost}, substitution price {sub})")
    if p.price_limit == "substitution":
        assert sub is not None
        return _Limit(sub, f"substitution price {sub}")
    if p.price_limit == "none":
        return _Limit(None, "no price limit in force (agreed price stands)")
    if not cap_applies(p, contract.capacity_mw, contract.heat_pump_lifted):
        assert sub is not None
        if p.cap_exempt_below_mw is not None and contract.capacity_mw < p.cap_exempt_below_mw.value:
            sources.append(p.cap_exempt_below_mw.source)
            return _Limit(sub, f"under {p.cap_exempt_below_mw.value} MW: exempt from the cap, bounded by the "
                               f"substitution price {sub}")
        return _Limit(sub, f"heat lifted by electric heat pumps: up to the substitution price {sub} (the cap "
                           "does not apply)")
    cap = rules.cap(seg.year)
    sources.append(cap.source)
    by_cap = _floor_price(dec(cap.value) - dec(contract.utility_cost_dkk_per_gj) - charge_per_gj_on_utility)
    why = (f"price cap {cap.value} DKK/GJ less the utility's own cost {contract.utility_cost_dkk_per_gj} "
           f"and the charge it bears {charge_per_gj_on_utility.quantize(PRICE_STEP)} = {by_cap}")
    if sub is None:
        return _Limit(by_cap, why + "; the substitution price is not configured: that bound was NOT checked",
                      cap.derived, checked=False)
    if sub < by_cap:
        return _Limit(sub, f"substitution price {sub} (below the cap's {by_cap}: " + why + ")", cap.derived)
    return _Limit(by_cap, why + f" (the substitution price {sub} is higher)", cap.derived)


def settle_segment(contract: SupplyContract, rules: RuleSet, seg: Segment, delivered_gj: float,
                   estimated_gj: float, hp_electricity_gj: float) -> SegmentResult:
    """Charge, payer, allowed price and amount of one segment."""
    _require_prices(contract, seg)
    p = seg.period
    sources = [p.source]
    provisional = False
    factor = rules.heat_pump_deduction_factor
    taxable = delivered_gj
    if contract.heat_pumps:
        taxable = max(0.0, delivered_gj - factor.value * hp_electricity_gj)
        sources.append(factor.source)
    delivered, taxable_d = energy_dec(delivered_gj), energy_dec(taxable)
    rate: Decimal | None = None
    utility_pays = contract.free_supply and p.free_supply_utility_pays is not None \
        and p.free_supply_utility_pays.value > 0
    if utility_pays and p.free_supply_utility_pays is not None:
        sources.append(p.free_supply_utility_pays.source)
    payer = "utility" if utility_pays else "supplier"
    charge = Decimal(0)
    agreed = dec(contract.agreed_price_dkk_per_gj)
    if contract.efo_member and p.efo_exempt is not None and p.efo_exempt.value > 0:
        reason = "exempt: supplier is in the energy-efficiency scheme (EFO)"
        sources.append(p.efo_exempt.source)
    elif contract.electricity_based_process and p.electricity_based_exempt.value:
        reason = "exempt: electricity-based process"
        sources.append(p.electricity_based_exempt.source)
    elif p.charge_method == "indexed":
        fig = rules.rate(seg.year)
        rate, provisional = dec(fig.value), fig.derived
        charge = money(taxable_d * rate)
        sources.append(fig.source)
        reason = f"{taxable_d} GJ taxable x {rate} DKK/GJ ({seg.year})"
    else:
        # The old charge takes a share of the remuneration: the price actually allowed (old-rule periods
        # have limits that do not depend on the charge).
        old = _price_limit(contract, rules, seg, Decimal(0), [])
        price = agreed if old.value is None else min(agreed, max(old.value, Decimal(0)))
        remuneration = money(delivered * price)
        by_rate = money(taxable_d * dec(rules.old_rate.value))
        by_share = money(remuneration * dec(rules.old_share_of_remuneration.value))
        charge = min(by_rate, by_share)
        rate = (charge / taxable_d).quantize(PRICE_STEP, rounding=ROUND_HALF_UP) if taxable_d > 0 \
            else dec(rules.old_rate.value)
        sources += [rules.old_rate.source, rules.old_share_of_remuneration.source]
        reason = f"old rules: min({rules.old_rate.value} DKK/GJ x taxable = {by_rate}, " \
                 f"{rules.old_share_of_remuneration.value} x remuneration {remuneration} = {by_share})"
    if charge <= 0:
        payer = "none"
    on_utility = charge / delivered if payer == "utility" and delivered > 0 else Decimal(0)
    limit = _price_limit(contract, rules, seg, on_utility, sources)
    allowed = agreed if limit.value is None else min(agreed, max(limit.value, Decimal(0)))
    return SegmentResult(
        start=seg.start, end=seg.end, rule_period=p.id, year=seg.year, delivered_gj=delivered_gj,
        estimated_gj=estimated_gj, heat_pump_electricity_gj=hp_electricity_gj, taxable_gj=taxable,
        charge_rate_dkk_per_gj=rate, charge_dkk=charge, charge_payer=payer, charge_reason=reason,
        price_limit_dkk_per_gj=limit.value, price_limit_reason=limit.why, allowed_price_dkk_per_gj=allowed,
        amount_dkk=money(delivered * allowed),
        provisional=provisional or limit.provisional or not limit.checked,
        sources=tuple(dict.fromkeys(sources)), price_bound_checked=limit.checked)


@dataclass(frozen=True)
class Settlement:
    """A contract's settlement of one period: per-meter energy and the segments under each rule entry."""

    contract_id: str
    period: str
    start: datetime
    end: datetime
    energy_gj: dict[str, float]
    segments: tuple[SegmentResult, ...]
    flags: tuple[str, ...] = ()
    supplier: str = ""
    utility: str = ""
    rule_set: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    as_of: datetime | None = None  # when it was computed; energy after this moment is never counted

    @property
    def counted_until(self) -> datetime:
        """The end of what is counted: the period's end, or as_of for a period not over yet."""
        return self.end if self.as_of is None else min(self.end, self.as_of)

    @property
    def delivered_gj(self) -> float:
        """Total delivered energy."""
        return sum(s.delivered_gj for s in self.segments)

    @property
    def estimated_gj(self) -> float:
        """Part of the delivered energy that is estimated."""
        return sum(s.estimated_gj for s in self.segments)

    @property
    def estimated_share(self) -> float:
        """Estimated / delivered (0 when nothing was delivered)."""
        d = self.delivered_gj
        return self.estimated_gj / d if d > 0 else 0.0

    @property
    def charge_dkk(self) -> Decimal:
        """Surplus-heat charge over the period: the sum of the segments' rounded charges."""
        return sum((s.charge_dkk for s in self.segments), Decimal(0))

    @property
    def charge_payer(self) -> str:
        """supplier, utility, none, or mixed when segments differ."""
        payers = {s.charge_payer for s in self.segments if s.charge_payer != "none"}
        return payers.pop() if len(payers) == 1 else ("none" if not payers else "mixed")

    @property
    def amount_dkk(self) -> Decimal:
        """What the utility pays the supplier for the heat: the sum of the segments' rounded amounts."""
        return sum((s.amount_dkk for s in self.segments), Decimal(0))

    @property
    def allowed_price_dkk_per_gj(self) -> Decimal | None:
        """Energy-weighted allowed price, 0.0001 DKK/GJ (None when nothing was delivered)."""
        d = sum((energy_dec(s.delivered_gj) for s in self.segments), Decimal(0))
        return (self.amount_dkk / d).quantize(PRICE_STEP, rounding=ROUND_HALF_UP) if d > 0 else None

    @property
    def provisional(self) -> bool:
        """True when a derived (not published) figure was used, or a bound of the rule was not checked."""
        return any(s.provisional for s in self.segments)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the CLI's and the API's settlement document)."""
        price = self.allowed_price_dkk_per_gj
        return {"contract": self.contract_id, "period": self.period, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "supplier": self.supplier, "utility": self.utility,
                "rule_set": self.rule_set,
                "energy_gj": {**{k: round(v, 6) for k, v in self.energy_gj.items()},
                              "total": round(self.delivered_gj, 6)},
                "delivered_gj": round(self.delivered_gj, 6), "estimated_gj": round(self.estimated_gj, 6),
                "estimated_share": round(self.estimated_share, 6), "charge_dkk": _out(self.charge_dkk),
                "charge_payer": self.charge_payer, "allowed_price_dkk_per_gj": _out(price),
                "amount_dkk": _out(self.amount_dkk), "provisional": self.provisional,
                "as_of": None if self.as_of is None else self.as_of.isoformat(),
                "counted_until": self.counted_until.isoformat(),
                "flags": list(self.flags), "segments": [s.as_dict() for s in self.segments], **self.meta}
