"""Exports: settlements as CSV, and the annual reports for the EU data-centre database and the EnEfG."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import date
from typing import Any

from service.accounting.kpis import enefg_erf_target

SETTLEMENT_COLUMNS = ("contract", "period", "version", "start", "end", "supplier", "utility", "rule_set",
                      "delivered_gj", "estimated_gj", "estimated_share", "charge_dkk", "charge_payer",
                      "allowed_price_dkk_per_gj", "amount_dkk", "provisional", "status", "reason", "flags")


# A text cell a spreadsheet would run as a formula (or that starts with a tab or carriage return, which some
# read past to the formula): it is written with a leading apostrophe, so it shows as the text it is.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: None empty, text that could start a formula neutralised, numbers as they are.

    A carriage return inside text becomes a line feed, which the writer quotes (it quotes only the
    characters of its line terminator, "\n"): an unquoted CR would end the row early for many readers.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        if value.startswith(_FORMULA_START):
            value = "'" + value
        return value.replace("\r\n", "\n").replace("\r", "\n")
    return value


def settlements_csv(docs: Iterable[dict[str, Any]]) -> str:
    """One row per settlement (document form as from Settlement.as_dict or the database).

    Text cells that a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, tab, carriage return at
    the start: a contract's reason or a supplier's name typed by a person) get a leading apostrophe.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SETTLEMENT_COLUMNS)
    for d in docs:
        row = []
        for col in SETTLEMENT_COLUMNS:
            v = d.get(col, "")
            if col == "flags":
                v = ";".join(str(f) for f in v or [])
            row.append(csv_cell(v))
        w.writerow(row)
    return buf.getvalue()


def annual_report(year: int, plant: str, k: dict[str, Any], commissioned: date | None = None) -> dict[str, Any]:
    """The yearly figures for the EU data-centre database (EED Art. 12, Reg. 2024/1364) and the EnEfG report.

    Only what heatrec measures is filled in; the rest of each form is null, never guessed.
    """
    target = enefg_erf_target(commissioned) if commissioned else None
    return {
        "year": year, "plant": plant, "due": f"{year + 1}-05-15",
        "eu_data_centre_database": {
            "regulation": "Directive (EU) 2023/1791 Art. 12; Delegated Regulation (EU) 2024/1364",
            "total_energy_consumption_kwh": _kwh(k.get("facility_energy_mwh")),
            "it_energy_consumption_kwh": _kwh(k.get("it_energy_mwh")),
            "waste_heat_reused_kwh": _kwh(k.get("delivered_mwh")),
            "energy_reuse_factor": k.get("erf"),
            "power_usage_effectiveness": k.get("pue"),
            "renewable_energy_factor": None, "water_usage_effectiveness": None,
        },
        "enefg": {
            "law": "Energieeffizienzgesetz (EnEfG) § 11",
            "energy_reuse_factor": k.get("erf"),
            "erf_target": target,
            "erf_target_met": None if target is None or k.get("erf") is None else k["erf"] >= target,
            "pue_excluding_heat_pumps": k.get("pue_enefg"),
            "heat_pump_electricity_kwh": _kwh(k.get("heat_pump_electricity_mwh")),
        },
        "kpis": k,
    }


def _kwh(mwh: float | None) -> float | None:
    return None if mwh is None else round(mwh * 1000, 3)
