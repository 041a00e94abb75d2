"""Settlement arithmetic: charge, who pays it, allowed price and amount, per rule segment of a period."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.accounting.rules import RuleSet, Segment
from service.config import SupplyContract

GJ_PER_KWH = 0.0036


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
    charge_rate_dkk_per_gj: float | None
    charge_dkk: float
    charge_payer: str  # supplier, utility or none
    charge_reason: str
    price_limit_dkk_per_gj: float | None
    price_limit_reason: str
    allowed_price_dkk_per_gj: float
    amount_dkk: float
    provisional: bool
    sources: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "rule_period": self.rule_period,
                "year": self.year, "delivered_gj": round(self.delivered_gj, 6),
                "estimated_gj": round(self.estimated_gj, 6),
                "heat_pump_electricity_gj": round(self.heat_pump_electricity_gj, 6),
                "taxable_gj": round(self.taxable_gj, 6), "charge_rate_dkk_per_gj": self.charge_rate_dkk_per_gj,
                "charge_dkk": round(self.charge_dkk, 2), "charge_payer": self.charge_payer,
                "charge_reason": self.charge_reason, "price_limit_dkk_per_gj": self.price_limit_dkk_per_gj,
                "price_limit_reason": self.price_limit_reason,
                "allowed_price_dkk_per_gj": round(self.allowed_price_dkk_per_gj, 4),
                "amount_dkk": round(self.amount_dkk, 2), "provisional": self.provisional,
                "sources": list(self.sources)}


def _price_limit(contract: SupplyContract, rules: RuleSet, seg: Segment, charge_per_gj_on_utility: float,
                 sources: list[str]) -> tuple[float | None, str, bool]:
    """(limit in DKK/GJ or None, why, provisional)."""
    p = seg.period
    sub, cost = contract.substitution_price_dkk_per_gj, contract.cost_based_price_dkk_per_gj
    if p.price_limit == "min_cost_substitution":
        known = [x for x in (cost, sub) if x is not None]
        if not known:
            return None, "min(cost-based, substitution) but neither price is configured", False
        return min(known), "min(cost-based, substitution price)", False
    if p.price_limit == "substitution":
        return sub, "substitution price" if sub is not None else "substitution price not configured", False
    if p.price_limit == "none":
        return None, "no price limit in force (agreed price stands)", False
    if p.cap_exempt_below_mw is not None and contract.capacity_mw < p.cap_exempt_below_mw.value:
        sources.append(p.cap_exempt_below_mw.source)
        return sub, f"under {p.cap_exempt_below_mw.value} MW: exempt from the cap, bounded by the substitution " \
                    "price", False
    if p.heat_pump_profit and contract.heat_pump_lifted and sub is not None:
        return sub, "heat lifted by electric heat pumps: up to the substitution price", False
    cap = rules.cap(seg.year)
    sources.append(cap.source)
    limit = cap.value - contract.utility_cost_dkk_per_gj - charge_per_gj_on_utility
    return limit, (f"price cap {cap.value} DKK/GJ less the utility's own cost {contract.utility_cost_dkk_per_gj} "
                   f"and the charge it bears {charge_per_gj_on_utility:.4f}"), cap.derived


def settle_segment(contract: SupplyContract, rules: RuleSet, seg: Segment, delivered_gj: float,
                   estimated_gj: float, hp_electricity_gj: float) -> SegmentResult:
    """Charge, payer, allowed price and amount of one segment."""
    p = seg.period
    sources = [p.source]
    provisional = False
    factor = rules.heat_pump_deduction_factor
    taxable = delivered_gj
    if contract.heat_pumps:
        taxable = max(0.0, delivered_gj - factor.value * hp_electricity_gj)
        sources.append(factor.source)
    rate: float | None = None
    utility_pays = contract.free_supply and p.free_supply_utility_pays is not None \
        and p.free_supply_utility_pays.value > 0
    if utility_pays and p.free_supply_utility_pays is not None:
        sources.append(p.free_supply_utility_pays.source)
    payer = "utility" if utility_pays else "supplier"
    charge = 0.0
    if contract.efo_member and p.efo_exempt is not None and p.efo_exempt.value > 0:
        reason = "exempt: supplier is in the energy-efficiency scheme (EFO)"
        sources.append(p.efo_exempt.source)
    elif contract.electricity_based_process and p.electricity_based_exempt.value:
        reason = "exempt: electricity-based process"
        sources.append(p.electricity_based_exempt.source)
    elif p.charge_method == "indexed":
        fig = rules.rate(seg.year)
        rate, charge, provisional = fig.value, taxable * fig.value, fig.derived
        sources.append(fig.source)
        reason = f"{taxable:.6f} GJ taxable x {fig.value} DKK/GJ ({seg.year})"
    else:
        # The old charge takes a share of the remuneration: the price actually allowed (old-rule periods
        # have limits that do not depend on the charge).
        old_limit, _, _ = _price_limit(contract, rules, seg, 0.0, [])
        agreed = contract.agreed_price_dkk_per_gj
        remuneration = delivered_gj * (agreed if old_limit is None else min(agreed, max(old_limit, 0.0)))
        by_rate = taxable * rules.old_rate.value
        by_share = remuneration * rules.old_share_of_remuneration.value
        charge = min(by_rate, by_share)
        rate = charge / taxable if taxable > 0 else rules.old_rate.value
        sources += [rules.old_rate.source, rules.old_share_of_remuneration.source]
        reason = f"old rules: min({rules.old_rate.value} DKK/GJ x taxable, " \
                 f"{rules.old_share_of_remuneration.value} x remuneration)"
    if charge <= 0:
        payer = "none"
    on_utility = charge / delivered_gj if payer == "utility" and delivered_gj > 0 else 0.0
    limit, why, cap_provisional = _price_limit(contract, rules, seg, on_utility, sources)
    agreed = contract.agreed_price_dkk_per_gj
    allowed = agreed if limit is None else min(agreed, max(limit, 0.0))
    return SegmentResult(
        start=seg.start, end=seg.end, rule_period=p.id, year=seg.year, delivered_gj=delivered_gj,
        estimated_gj=estimated_gj, heat_pump_electricity_gj=hp_electricity_gj, taxable_gj=taxable,
        charge_rate_dkk_per_gj=rate, charge_dkk=charge, charge_payer=payer, charge_reason=reason,
        price_limit_dkk_per_gj=limit, price_limit_reason=why, allowed_price_dkk_per_gj=allowed,
        amount_dkk=delivered_gj * allowed, provisional=provisional or cap_provisional,
        sources=tuple(dict.fromkeys(sources)))


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
    def charge_dkk(self) -> float:
        """Surplus-heat charge over the period."""
        return sum(s.charge_dkk for s in self.segments)

    @property
    def charge_payer(self) -> str:
        """supplier, utility, none, or mixed when segments differ."""
        payers = {s.charge_payer for s in self.segments if s.charge_payer != "none"}
        return payers.pop() if len(payers) == 1 else ("none" if not payers else "mixed")

    @property
    def amount_dkk(self) -> float:
        """What the utility pays the supplier for the heat."""
        return sum(s.amount_dkk for s in self.segments)

    @property
    def allowed_price_dkk_per_gj(self) -> float | None:
        """Energy-weighted allowed price (None when nothing was delivered)."""
        d = self.delivered_gj
        return self.amount_dkk / d if d > 0 else None

    @property
    def provisional(self) -> bool:
        """True when a derived (not published) figure was used."""
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
                "estimated_share": round(self.estimated_share, 6), "charge_dkk": round(self.charge_dkk, 2),
                "charge_payer": self.charge_payer,
                "allowed_price_dkk_per_gj": None if price is None else round(price, 4),
                "amount_dkk": round(self.amount_dkk, 2), "provisional": self.provisional,
                "flags": list(self.flags), "segments": [s.as_dict() for s in self.segments], **self.meta}
