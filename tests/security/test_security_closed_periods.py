"""No reading lands in a closed settlement period: a back-dated telegram for a closed month is refused at ingest.

The driver's clock-skew check is switched off here (`max_clock_skew_s = 0`, as for a gateway that replays a
buffer of weeks), so the back-dated telegrams reach the service: the closed-period guard must stop them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from prometheus_client.parser import text_string_to_metric_families

from drivers.mqtt import MqttDriver
from service.accounting.engine import month_bounds, settle_month
from service.auth import create_token
from service.storage.database import connect_pool
from service.storage.points import sync_points
from tests.security.conftest import METER_TOPIC, SERIAL, Attacker, Plant
from tests.support import running_service, wait_until


def month_of_readings(start: datetime, end: datetime, kw: float = 500.0) -> list[tuple[str, datetime, float]]:
    """The demo meter and heat pump registers over [start, end], every 10 minutes."""
    rows: list[tuple[str, datetime, float]] = []
    t, n = start, 0
    while t <= end:
        rows += [("meter1.energy", t, 100.0 + kw * 600 * n / 1e6), ("meter1.flow", t, kw / (1.16 * 30)),
                 ("meter1.flow_temperature", t, 70.0), ("meter1.return_temperature", t, 40.0),
                 ("hp1.electric_energy", t, 5000.0 + kw / 4 * n / 6)]
        t += timedelta(minutes=10)
        n += 1
    return rows


def telegram(at: datetime, energy_gj: float) -> dict[str, Any]:
    return {"serial": SERIAL, "time": at.isoformat(), "energy_gj": energy_gj, "volume_m3": 1.0, "power_kw": 1e3,
            "flow_m3h": 30.0, "flow_temperature_c": 70.0, "return_temperature_c": 40.0}


async def test_a_back_dated_telegram_for_a_closed_month_changes_neither_its_settlement_nor_its_recomputation(
        service_plant: Plant, attacker: Attacker) -> None:
    service_plant.edit("max_clock_skew_s = 300 ", "max_clock_skew_s = 0 ")
    cfg = service_plant.config()
    tz = ZoneInfo(cfg.plant.timezone)
    year = datetime.now(UTC).year - 1
    period, later = f"{year}-03", f"{year}-04"
    start, end = month_bounds(period, tz)
    gateway = service_plant.user("mbus-gateway")
    async with running_service(cfg) as svc:
        guard = svc.closed_periods
        assert guard is not None and "meter1.energy" in guard.points
        [meter] = [d for d in svc.drivers if isinstance(d, MqttDriver)]
        await wait_until(lambda: meter.state.value == "connected", 20, "meter1 subscribed")
        pool = await connect_pool(cfg.database)
        try:
            async with pool.acquire() as conn:
                keys = await sync_points(conn, cfg)
                rows = month_of_readings(start - timedelta(days=1), end + timedelta(days=1))
                await conn.copy_records_to_table("samples", columns=["time", "point_key", "value", "quality"],
                                                 records=[(t, keys[p], v, 0) for p, t, v in rows])
                operator = await create_token(conn, "operator", "closer")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=60,
                                         headers={"Authorization": f"Bearer {operator}"}) as client:
                async def admitted() -> bool:
                    return (await client.get("/api/v1/points")).status_code == 200

                await wait_until(admitted, 20, "the token admitted")
                closed = await client.post(f"/api/v1/settlements/demo_supply/{period}/close", json={"note": "March"})
                assert closed.status_code == 200, closed.text
                before = closed.json()
                assert before["delivered_gj"] > 1000
                async with pool.acquire() as conn:
                    [recomputed_before] = await settle_month(conn, cfg, period, ["demo_supply"])
                mid = start + timedelta(days=12, minutes=5)
                # The close route tells the guard before it answers: no window for a reading to slip in.
                assert guard.is_closed("meter1.energy", mid)

                # The attack: telegrams dated inside the closed month, the meter's serial, a large register.
                for k, at in enumerate((mid, mid + timedelta(hours=3), start + timedelta(seconds=1))):
                    await attacker(service_plant.broker, gateway, METER_TOPIC, telegram(at, 5000.0 + k))
                # A late reading for a month not closed is still taken (the guard is not a skew check), and one
                # dated now shows the path to the database is live: both after the attack.
                april = month_bounds(later, tz)[0] + timedelta(days=2, minutes=7)
                await attacker(service_plant.broker, gateway, METER_TOPIC, telegram(april, 1500.0))
                await attacker(service_plant.broker, gateway, METER_TOPIC,
                               telegram(datetime.now(UTC), 2000.0))

                async def stored(t: datetime) -> bool:
                    return bool(await pool.fetchval("SELECT count(*) FROM readings WHERE point = 'meter1.energy' "
                                                    "AND time = $1", t))

                await wait_until(lambda: stored(april), 20, "the open month's late reading stored")
                assert guard.refused.get("meter1.energy") == 3 and guard.refused.get("meter1.flow") == 3
                for at in (mid, mid + timedelta(hours=3), start + timedelta(seconds=1)):
                    assert not await stored(at), f"a reading dated {at} landed in the closed month"
                assert await pool.fetchval("SELECT count(*) FROM readings WHERE point = 'meter1.energy' "
                                           "AND time >= $1 AND time < $2 AND value >= 5000", start, end) == 0

                # The closed settlement is what it was; so is the month recomputed (what a correction would take).
                [after] = (await client.get("/api/v1/settlements", params={"period": period})).json()["settlements"]
                assert (after["status"], after["version"], after["delivered_gj"], after["amount_dkk"]) == \
                       ("closed", 1, before["delivered_gj"], before["amount_dkk"])
                async with pool.acquire() as conn:
                    [recomputed] = await settle_month(conn, cfg, period, ["demo_supply"])
                assert (recomputed.delivered_gj, recomputed.amount_dkk) == \
                       (recomputed_before.delivered_gj, recomputed_before.amount_dkk)
                metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in
                           text_string_to_metric_families((await client.get("/metrics")).text) for s in fam.samples}
                assert metrics[("heatrec_accounting_refused_samples_total", (("point", "meter1.energy"),))] == 3
        finally:
            await pool.close()
