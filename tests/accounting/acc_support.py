"""Shared builders for the accounting tests: a plant config and register data written to the database."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from service.config import PACKAGED_RULES_DIR, DatabaseConfig, HeatrecConfig, parse_config
from service.storage.points import sync_points

TZ = ZoneInfo("Europe/Copenhagen")
# In UTC: arithmetic on datetimes sharing a ZoneInfo is wall-clock arithmetic.
MARCH_START = datetime(2024, 3, 1, tzinfo=TZ).astimezone(UTC)
MARCH_END = datetime(2024, 4, 1, tzinfo=TZ).astimezone(UTC)  # 743 hours: the clocks go forward on 31 March


def config_dict(db: DatabaseConfig | None = None, **contract: Any) -> dict[str, Any]:
    """A plant with one MQTT heat meter, one Modbus heat pump and one contract (2024 terms)."""
    mq = {"topic": "mbus/m1", "unit": ""}
    data: dict[str, Any] = {
        "devices": [
            {"id": "m1", "protocol": "mqtt", "endpoint": "mqtt://127.0.0.1:1883", "points": [
                {"id": "energy", "kind": "counter", **mq, "json_path": "$.e"},
                {"id": "flow", **mq, "json_path": "$.q"},
                {"id": "flow_temperature", **mq, "json_path": "$.tf"},
                {"id": "return_temperature", **mq, "json_path": "$.tr"}]},
            {"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
                {"id": "electric_energy", "kind": "counter", "unit": "kWh", "address": 14, "function": "input",
                 "type": "uint32", "scale": 0.1}]}],
        "accounting": {
            "rules_dir": str(PACKAGED_RULES_DIR),
            "meters": [{"id": "m1", "energy_point": "m1.energy", "flow_point": "m1.flow",
                        "flow_temperature_point": "m1.flow_temperature",
                        "return_temperature_point": "m1.return_temperature", "qp_m3h": 10.0, "qi_m3h": 0.1,
                        "max_power_kw": 500.0, "register_wrap_gj": 1000.0, "gap_s": 900}],
            "heat_pumps": [{"id": "hp1", "electricity_point": "hp1.electric_energy", "max_power_kw": 100.0}],
            "contracts": [{"id": "c1", "meters": ["m1"], "supplier": "DC", "utility": "DH", "capacity_mw": 1.0,
                           "agreed_price_dkk_per_gj": 100.0, "substitution_price_dkk_per_gj": 120.0,
                           **contract}]}}
    if db is not None:
        data["database"] = db.model_dump()
    return data


def config(db: DatabaseConfig | None = None, **contract: Any) -> HeatrecConfig:
    """The parsed plant config."""
    return parse_config(config_dict(db, **contract))


def constant_meter(start: datetime, end: datetime, kw: float, every_s: int = 600, register0: float = 10.0,
                   wrap: float = 1000.0) -> list[tuple[str, datetime, float]]:
    """Register, flow and temperatures of a meter delivering kw steadily (flow chosen to match at 70/40)."""
    from service.accounting.metering import k_factor

    q = kw / (k_factor(70.0, 40.0) * 30.0)
    rows: list[tuple[str, datetime, float]] = []
    t, n = start.astimezone(UTC), 0
    while t <= end:
        rows += [("m1.energy", t, (register0 + kw * every_s * n / 1e6) % wrap), ("m1.flow", t, q),
                 ("m1.flow_temperature", t, 70.0), ("m1.return_temperature", t, 40.0)]
        t += timedelta(seconds=every_s)
        n += 1
    return rows


def counter(point: str, start: datetime, end: datetime, per_s: float, every_s: int = 600,
            value0: float = 0.0) -> list[tuple[str, datetime, float]]:
    """A register rising steadily by per_s units a second."""
    rows, t, n = [], start.astimezone(UTC), 0
    while t <= end:
        rows.append((point, t, value0 + per_s * every_s * n))
        t += timedelta(seconds=every_s)
        n += 1
    return rows


async def write(conn: asyncpg.Connection, cfg: HeatrecConfig, rows: Iterable[tuple[str, datetime, float]],
                quality: int = 0) -> None:
    """Store samples (point id, time, value) through COPY."""
    keys = await sync_points(conn, cfg)
    await conn.copy_records_to_table("samples", columns=["time", "point_key", "value", "quality"],
                                     records=[(t, keys[p], v, quality) for p, t, v in rows])
