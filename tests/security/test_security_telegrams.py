"""Spoofed telegrams through a real Mosquitto with the demo's identities: back-dated or from another meter, refused.

The attack of the review: two `mosquitto_pub` telegrams with a back-dated `time` and a fake `energy_gj` made an
empty October an 80.9 GJ draft settlement, stored GOOD. Here the attacker even holds the gateway's own identity
(the broker's ACL lets it publish the meter topic): heatrec itself must refuse what is implausible.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.mqtt import MqttDriver
from drivers.mqtt_serials import SerialFile
from service.auth import create_token
from service.config import MqttDevice
from service.model import Sample
from service.storage.database import connect_pool
from tests.security.conftest import METER_TOPIC, SERIAL, Attacker, Plant
from tests.support import running_service, wait_until


class Sink:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def publish(self, sample: Sample) -> None:
        self.samples.append(sample)

    def of(self, point: str) -> list[Sample]:
        return [s for s in self.samples if s.point == point]


def telegram(at: datetime | None = None, serial: str | None = SERIAL, energy_gj: float = 10.0) -> dict[str, Any]:
    doc: dict[str, Any] = {"time": (at or datetime.now(UTC)).isoformat(), "energy_gj": energy_gj, "volume_m3": 1.0,
                           "power_kw": 100.0, "flow_m3h": 2.0, "flow_temperature_c": 70.0,
                           "return_temperature_c": 40.0}
    if serial is not None:
        doc["serial"] = serial
    return doc


def meter_device(plant: Plant, **changes: Any) -> MqttDevice:
    [dev] = [d for d in plant.config().devices if isinstance(d, MqttDevice)]
    return dev.model_copy(update=changes)


async def start(drv: MqttDriver) -> asyncio.Task[None]:
    task = asyncio.create_task(drv.run())
    await wait_until(lambda: drv.state.value == "connected", 10, f"{drv.device_id} subscribed")
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_source_times_far_from_arrival_are_refused_counted_and_logged_once_per_episode(
        acl_plant: Plant, attacker: Attacker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers.mqtt")
    sink, gateway = Sink(), acl_plant.user("mbus-gateway")
    drv = MqttDriver(meter_device(acl_plant), sink)
    task = await start(drv)
    try:
        now = datetime.now(UTC)
        for at in (now - timedelta(days=40), now - timedelta(seconds=301), now + timedelta(hours=2)):
            await attacker(acl_plant.broker, gateway, METER_TOPIC, telegram(at, energy_gj=80.9))
        await wait_until(lambda: drv.refused_telegrams["clock_skew"] == 3, 10, "three refusals")
        assert sink.samples == [], "no sample of a back-dated (or future) telegram"
        await attacker(acl_plant.broker, gateway, METER_TOPIC, telegram(now - timedelta(seconds=30)))
        await wait_until(lambda: bool(sink.of("meter1.energy")), 10, "a plausible telegram")
        assert [s.value for s in sink.of("meter1.energy")] == [10.0]
        await attacker(acl_plant.broker, gateway, METER_TOPIC, telegram(now - timedelta(days=3)))
        await wait_until(lambda: drv.refused_telegrams["clock_skew"] == 4, 10, "a new episode")
        skew_warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "max_clock_skew_s" in
                         r.getMessage()]
        assert len(skew_warnings) == 2, "one warning per episode, not per telegram"
        assert any("plausible again" in r.getMessage() for r in caplog.records)
        assert drv.state.value == "connected" and drv.stats.failures == 0
    finally:
        await stop(task)


async def test_a_telegram_of_another_meter_is_refused_and_raises_the_serial_problem(
        acl_plant: Plant, attacker: Attacker) -> None:
    sink, gateway = Sink(), acl_plant.user("mbus-gateway")
    drv = MqttDriver(meter_device(acl_plant), sink)  # the demo's: serial = "71234567"
    task = await start(drv)
    try:
        await attacker(acl_plant.broker, gateway, METER_TOPIC, telegram(serial="99999999", energy_gj=500.0))
        await attacker(acl_plant.broker, gateway, METER_TOPIC, telegram(serial=None, energy_gj=500.0))
        await attacker(acl_plant.broker, gateway, METER_TOPIC, {**telegram(), "serial": int(SERIAL)})
        await wait_until(lambda: bool(sink.of("meter1.energy")), 10, "the meter's own telegram")
        assert drv.refused_telegrams["serial_mismatch"] == 2
        assert [s.value for s in sink.of("meter1.energy")] == [10.0], "an integer serial is the same serial"
        assert drv.serial_problem is not None and "expected 71234567" in drv.serial_problem
    finally:
        await stop(task)


async def test_without_a_configured_serial_the_first_one_is_tracked_across_a_restart(
        acl_plant: Plant, attacker: Attacker, tmp_path: Path) -> None:
    gateway, memory = acl_plant.user("mbus-gateway"), tmp_path / "mqtt-serials.json"
    sink = Sink()
    drv = MqttDriver(meter_device(acl_plant, serial=None), sink, serials=SerialFile(memory))
    task = await start(drv)
    try:
        await attacker(acl_plant.broker, gateway, METER_TOPIC, telegram(serial="71234567"))
        await wait_until(lambda: drv.serial == "71234567" and bool(sink.of("meter1.energy")), 10, "tracked")
    finally:
        await stop(task)
    assert '"71234567"' in memory.read_text()
    sink = Sink()
    restarted = MqttDriver(meter_device(acl_plant, serial=None), sink, serials=SerialFile(memory))
    assert restarted.serial == "71234567", "the tracked serial outlives the process"
    task = await start(restarted)
    try:
        await attacker(acl_plant.broker, gateway, METER_TOPIC, telegram(serial="80000001", energy_gj=999.0))
        await attacker(acl_plant.broker, gateway, METER_TOPIC, telegram(serial="71234567", energy_gj=11.0))
        await wait_until(lambda: bool(sink.of("meter1.energy")), 10, "the tracked meter's telegram")
        assert [s.value for s in sink.of("meter1.energy")] == [11.0]
        assert restarted.refused_telegrams["serial_mismatch"] == 1
    finally:
        await stop(task)


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_the_reviews_attack_leaves_october_empty_and_a_foreign_meter_alarms(
        service_plant: Plant, attacker: Attacker) -> None:
    cfg = service_plant.config()
    gateway = service_plant.user("mbus-gateway")
    october = datetime(datetime.now(UTC).year - 1, 10, 15, 12, tzinfo=UTC)
    period = f"{october.year}-10"
    async with running_service(cfg) as svc:
        [meter] = [d for d in svc.drivers if isinstance(d, MqttDriver)]
        await wait_until(lambda: meter.state.value == "connected", 20, "meter1 subscribed")
        pool = await connect_pool(cfg.database)
        try:
            async with pool.acquire() as conn:
                token = await create_token(conn, "viewer", "attack-test")
            # The review's two telegrams: back-dated into October, 80.9 GJ apart, serial and topic right.
            await attacker(service_plant.broker, gateway, METER_TOPIC, telegram(october, energy_gj=1000.0))
            await attacker(service_plant.broker, gateway, METER_TOPIC,
                           telegram(october + timedelta(days=10), energy_gj=1080.9))
            # And a telegram dated now from another meter on the same topic.
            await attacker(service_plant.broker, gateway, METER_TOPIC, telegram(serial="12345678", energy_gj=7.0))
            await wait_until(lambda: meter.refused_telegrams == {"clock_skew": 2, "serial_mismatch": 1}, 10,
                             "three refusals")
            # The meter's own telegram arrives and is stored: the path to the database is live.
            await attacker(service_plant.broker, gateway, METER_TOPIC, telegram(energy_gj=1.5))

            async def stored_now() -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM readings WHERE point = 'meter1.energy'"))

            await wait_until(stored_now, 20, "the meter's own reading stored")
            rows = await pool.fetch("SELECT time, value FROM readings WHERE point LIKE 'meter1.%'")
            assert all(r["time"] > datetime.now(UTC) - timedelta(hours=1) for r in rows), "nothing back-dated"
            assert 1.5 in {r["value"] for r in rows} and 7.0 not in {r["value"] for r in rows}
        finally:
            await pool.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            async def authorised() -> bool:
                return (await client.get("/api/v1/points")).status_code == 200

            await wait_until(authorised, 20, "the token admitted")
            [draft] = (await client.get("/api/v1/settlements", params={"period": period})).json()["settlements"]
            assert draft["status"] == "open" and draft["delivered_gj"] == 0 and draft["amount_dkk"] == 0

            async def serial_alarm() -> dict[str, Any] | None:
                alarms = (await client.get("/api/v1/alarms")).json()["alarms"]
                return next((a for a in alarms if a["id"] == "device:meter1:meter_serial" and a["active"]), None)

            async def alarmed() -> bool:
                return await serial_alarm() is not None

            await wait_until(alarmed, 15, "the meter_serial alarm")
            alarm = await serial_alarm()
            assert alarm is not None and alarm["state"] == "unack_active" and alarm["kind"] == "meter_serial"
            assert "12345678" in (alarm["detail"] or "")
            metrics = _metrics((await client.get("/metrics")).text)
        refused = "heatrec_driver_refused_telegrams_total"
        assert metrics[(refused, (("device", "meter1"), ("reason", "clock_skew")))] == 2
        assert metrics[(refused, (("device", "meter1"), ("reason", "serial_mismatch")))] == 1
