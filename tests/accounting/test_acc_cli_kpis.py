"""`heatrec settle` against a real database, and the KPI and export arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from service.accounting.export import annual_report, settlements_csv
from service.accounting.kpis import KpiInputs, co2_factor, compute_kpis, enefg_erf_target
from service.config import AccountingConfig, DatabaseConfig, load_config
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from service.storage.points import sync_points
from tests.accounting.acc_support import MARCH_END, MARCH_START
from tests.support import demo_config_text

ROOT = Path(__file__).resolve().parents[2]


async def test_settle_command_prints_json_and_a_table(database: DatabaseConfig, tmp_path: Path) -> None:
    text = demo_config_text({"55432": database.port}).replace('name = "heatrec"', f'name = "{database.name}"', 1)
    path = tmp_path / "plant.toml"
    path.write_text(text)
    cfg = load_config(path)
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        keys = await sync_points(conn, cfg)
        t, rows, n = MARCH_START - timedelta(hours=1), [], 0
        while t <= MARCH_END + timedelta(hours=1):  # 100 kW steady: 0.06 GJ per 10 minutes
            rows.append((t, keys["meter1.energy"], 1000.0 + 0.06 * n, 0))
            t, n = t + timedelta(minutes=10), n + 1
        await conn.copy_records_to_table("samples", columns=["time", "point_key", "value", "quality"], records=rows)
    await pool.close()
    env = {**os.environ, "HEATREC_DB_PASSWORD": database.password or ""}

    def settle(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", "settle", "-c", str(path), *extra],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)

    r = settle("--period", "2024-03", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    # 100 kW x 743 h (March 2024, summer time from the 31st) = 267.48 GJ.
    assert doc["energy_gj"] == {"meter1": pytest.approx(267.48), "total": pytest.approx(267.48)}
    [s] = doc["settlements"]
    # A data centre (electricity-based process): no charge from 2021 under the default rule set. Heat lifted
    # by heat pumps under the cap: bounded by the substitution price 120, so the agreed 90 stands:
    # 267.48 x 90 = 24,073.20 DKK.
    assert s["charge_dkk"] == 0 and s["charge_payer"] == "none"
    assert s["amount_dkk"] == 24_073.20
    # The same status the API shows: not closed, computed as of now (after the month: counted to its end).
    assert s["status"] == "open" and s["version"] is None and s["as_of"] and s["counted_until"] == s["end"]
    table = settle("--period", "2024-03")
    assert table.returncode == 0 and "demo_supply" in table.stdout and "267.480" in table.stdout
    assert "open as of" in table.stdout
    bad = settle("--period", "2024-3")
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr and "Traceback" not in bad.stderr


def acc() -> AccountingConfig:
    return AccountingConfig()


def test_co2_factor_is_interpolated_between_table_years() -> None:
    table = acc().co2_factors
    # BR18: 0.105 (2023), 0.0878 (2025), 0.0713 (2030). 2024: (0.105 + 0.0878) / 2 = 0.0964.
    assert co2_factor(table, 2024) == pytest.approx(0.0964)
    # 2027.5: 0.0878 + (0.0713 - 0.0878) x 2.5 / 5 = 0.07955; flat outside the table.
    assert co2_factor(table, 2027.5) == pytest.approx(0.07955)
    assert co2_factor(table, 2019) == 0.105 and co2_factor(table, 2040) == 0.0713


def test_kpis_arithmetic() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=365.25)
    # 360 GJ = 100 MWh delivered; heat pumps 120 GJ; IT 1000 GJ; whole site 1400 GJ.
    k = compute_kpis(KpiInputs(start, end, 360.0, 120.0, 1000.0, 1400.0), acc(), ZoneInfo("Europe/Copenhagen"))
    assert k["delivered_mwh"] == pytest.approx(100.0)
    assert k["homes_heated"] == pytest.approx(7.1)  # 100 MWh / 14 MWh per home over one year
    # CO2 at the period's midpoint, 1 July 2024 (182 days into the year), between 2023 and 2025:
    # 0.105 + (0.0878 - 0.105) x (1 + 182 / 365.25) / 2.
    factor = 0.105 + (0.0878 - 0.105) * (1 + 182 / 365.25) / 2
    assert k["co2_factor_kg_per_kwh"] == pytest.approx(factor, abs=1e-6)
    assert k["co2_avoided_t"] == pytest.approx(100 * factor, abs=1e-4)  # MWh x kg/kWh = t
    assert k["seasonal_cop"] == pytest.approx(3.0)  # 360 / 120
    assert k["it_heat_recovered_share"] == pytest.approx(0.24)  # (360 - 120) / 1000
    assert k["erf"] == pytest.approx(360 / 1400)
    assert k["pue"] == pytest.approx(1.4)  # 1400 / 1000
    assert k["pue_enefg"] == pytest.approx(1.28)  # (1400 - 120) / 1000: heat pumps left out


def test_enefg_targets_and_annual_report() -> None:
    assert enefg_erf_target(date(2026, 6, 30)) is None
    assert enefg_erf_target(date(2026, 7, 1)) == 0.10
    assert enefg_erf_target(date(2027, 8, 1)) == 0.15
    assert enefg_erf_target(date(2029, 1, 1)) == 0.20
    rep = annual_report(2027, "p", {"erf": 0.257, "delivered_mwh": 100.0, "pue_enefg": 1.28},
                        commissioned=date(2027, 8, 1))
    assert rep["enefg"]["erf_target_met"] is True and rep["due"] == "2028-05-15"
    assert rep["eu_data_centre_database"]["waste_heat_reused_kwh"] == 100_000.0
    assert rep["eu_data_centre_database"]["renewable_energy_factor"] is None


def test_settlements_csv() -> None:
    text = settlements_csv([{"contract": "c1", "period": "2024-03", "version": 1, "flags": ["gap", "manual"],
                             "allowed_price_dkk_per_gj": None}])
    header, row = text.strip().splitlines()
    assert header.split(",")[:3] == ["contract", "period", "version"]
    assert row.startswith("c1,2024-03,1,") and row.endswith("gap;manual")
