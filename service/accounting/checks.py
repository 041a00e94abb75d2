"""What `check-config` and `run` verify of [accounting] beyond the schema: rule sets and contract prices."""

from __future__ import annotations

from datetime import UTC, date, datetime

from service.accounting.rules import PRICE_FIELDS, RuleError, RuleSet, load_rules, required_prices
from service.config import ConfigError, HeatrecConfig, SupplyContract


def contract_problems(contract: SupplyContract, rules: RuleSet, today: date) -> list[tuple[str, str]]:
    """(field, why) for every price the rule periods of the contract's term need and it does not give."""
    first = contract.valid_from or today
    last = contract.valid_to or date.max
    out: dict[str, str] = {}
    for p in rules.periods:
        if p.valid_to <= first or p.valid_from >= last:
            continue  # this entry never governs the contract
        for name in required_prices(p, contract.capacity_mw, contract.heat_pump_lifted):
            field = PRICE_FIELDS[name]
            if getattr(contract, field) is None and field not in out:
                out[field] = (f"needed under rule period '{p.id}' ({p.valid_from}..{p.valid_to}) of "
                              f"'{rules.name}', which the contract's term reaches")
    return list(out.items())


def check_accounting(cfg: HeatrecConfig, source: str, today: date | None = None) -> None:
    """Raise ConfigError naming file and field for a missing rule set or a price a contract's rules need."""
    acc = cfg.accounting
    if acc is None:
        return
    today = today or datetime.now(UTC).date()
    lines: list[str] = []
    loaded: dict[str, RuleSet] = {}
    for i, c in enumerate(acc.contracts):
        where = f"{source}: accounting.contracts[{i}]"
        if c.rule_set not in loaded:
            try:
                loaded[c.rule_set] = load_rules(acc.rules_dir, c.rule_set)
            except RuleError as err:
                lines.append(f"{where}.rule_set: {err}")
                continue
        for name, why in contract_problems(c, loaded[c.rule_set], today):
            lines.append(f"{where}.{name}: {why}; set it (DKK/GJ) or narrow valid_from/valid_to")
    if lines:
        raise ConfigError("\n".join(lines))
