"""The first end-to-end path: simulators → OPC UA / Modbus / MQTT drivers → bus → TimescaleDB and the API.

Everything is real: PostgreSQL + TimescaleDB and Mosquitto from the session fixtures, the
simulators' asyncua, pymodbus and MQTT faces on loopback, and the API served by uvicorn.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import httpx
from asyncua import Client
from prometheus_client.parser import text_string_to_metric_families

from service.auth import create_token
from service.config import load_config
from service.storage.database import connect_pool
from simulators.runner import Simulation
from tests.support import running_service, wait_until


def _queue_getters() -> int:
    """Live tasks waiting in an asyncio.Queue.get of their own (the SSE stream makes them)."""
    return sum(1 for t in asyncio.all_tasks() if not t.done() and "Queue.get" in repr(t.get_coro()))


async def test_all_three_protocols_reach_database_and_api(plant_config_file: Path) -> None:
    cfg = load_config(plant_config_file)
    assert cfg.simulation is not None
    protocols = {d.id: d.protocol for d in cfg.devices}
    async with Simulation(cfg.simulation, tick_s=0.2):
        async with running_service(cfg) as svc:
            pool = await connect_pool(cfg.database)
            try:
                async with pool.acquire() as conn:
                    token = await create_token(conn, "viewer", "e2e")

                async def stored_from_every_device() -> bool:
                    rows = await pool.fetch(
                        "SELECT DISTINCT split_part(point, '.', 1) AS device FROM readings "
                        "WHERE quality = 'GOOD' AND value IS NOT NULL")
                    return {r["device"] for r in rows} == set(protocols)

                await wait_until(stored_from_every_device, 45, "GOOD samples from cdu1, hp1 and meter1 in the database")
                # Values are physical, not placeholders.
                hp_supply = await pool.fetchval("SELECT value FROM readings WHERE point = 'hp1.supply_temperature' "
                                                "ORDER BY time DESC LIMIT 1")
                cdu_supply = await pool.fetchval(
                    "SELECT value FROM readings WHERE point = 'cdu1.secondary_supply_temperature' "
                    "ORDER BY time DESC LIMIT 1")
                energy = await pool.fetch("SELECT value FROM readings WHERE point = 'meter1.energy' ORDER BY time")
                assert 30 < hp_supply < 95
                assert 15 < cdu_supply < 60
                assert all(b["value"] >= a["value"] for a, b in itertools.pairwise(energy))
            finally:
                await pool.close()

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=10) as client:
                assert list((await client.get("/api/v1/health")).json()) == ["status"]  # for load balancers
                health = (await client.get("/api/v1/health", headers={"Authorization": f"Bearer {token}"})).json()
                assert health["components"]["database"]["status"] == "ok"
                r = await client.get("/api/v1/points", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200
                points = {p["id"]: p for p in r.json()["points"]}
                assert set(points) == set(cfg.point_ids())
                for device in protocols:
                    good = [p for p in points.values() if p["device"] == device and p["quality"] == "GOOD"]
                    assert good, f"no GOOD point from {device} ({protocols[device]}) in the API"
                    assert all(p["source_time"] and p["receive_time"] for p in good)

                assert (await client.get("/api/v1/stream")).status_code == 401
                seen: list[dict[str, object]] = []
                subscribers = len(svc.bus.subscriptions)
                getters_before = _queue_getters()
                async with client.stream("GET", "/api/v1/stream", params={"points": "hp1."},
                                         headers={"Authorization": f"Bearer {token}"}) as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    event = None
                    async for line in stream.aiter_lines():
                        if line.startswith("event: "):
                            event = line.removeprefix("event: ")
                        elif line.startswith("data: ") and event == "sample":
                            seen.append(json.loads(line.removeprefix("data: ")))
                            if len(seen) >= 3:
                                break
                assert all(str(e["point"]).startswith("hp1.") and e["quality"] == "GOOD" for e in seen)
                await wait_until(lambda: len(svc.bus.subscriptions) == subscribers, 10, "stream subscription released")
                # The stream's queue getters end with it: none left pending once the client has gone.
                await wait_until(lambda: _queue_getters() <= getters_before, 10, "stream's getter tasks ended")

                # SCADA reads the same live values over OPC UA.
                assert svc.scada is not None
                async with Client(svc.scada.endpoint, timeout=10) as ua_client:
                    dv = await ua_client.get_node(svc.scada.node_id("hp1.supply_temperature")).read_data_value()
                    assert dv.StatusCode.is_good() and 30 < dv.Value.Value < 95

                assert (await client.get("/metrics")).status_code == 401  # a token, or [api] monitoring_networks
                r = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for fam in text_string_to_metric_families(r.text) for s in fam.samples}
                for device in protocols:
                    assert samples[("heatrec_driver_state", (("device", device), ("state", "connected")))] == 1
                    assert samples[("heatrec_driver_samples_total", (("device", device),))] > 0
                assert samples[("heatrec_storage_rows_written_total", ())] > 0
                assert samples[("heatrec_bus_dropped_total", (("subscriber", "storage"),))] == 0
                assert any(name == "heatrec_api_request_duration_seconds_count" and
                           ("route", "/api/v1/points") in labels for name, labels in samples)
