"""Device-state alarms on the running service: a tripped heat pump alarms and shows as not running.

The demo plant on free ports with its simulators (OPC UA, Modbus TCP, MQTT), PostgreSQL and Mosquitto.
The simulator trips the heat pump (status bit 1): the alarm `hp1.status:trip` goes active within its
on-delay, control status lists the pump as not running with the reason, and SCADA shows the alarm.
Clearing the trip returns the alarm unacknowledged (ISA-18.2) until an operator acknowledges it. With
control off, heatrec stops its heartbeats: the pump's watchdog falls back (bit 2) and that alarms too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from asyncua import Client, ua

from service.auth import create_token
from service.config import load_config
from service.storage.database import connect_pool
from simulators.runner import Simulation
from simulators.scenario import FaultSpec
from tests.support import running_service, wait_until

TRIP = "hp1.status:trip"
FALLBACK = "hp1.status:watchdog_fallback"


def short_watchdog(path: Path) -> None:
    """A 3 s pump watchdog (the demo's is 60 s), so the fallback case takes seconds."""
    text = path.read_text().replace('[[simulation.heat_pumps]]\nid = "hp1"\n',
                                    '[[simulation.heat_pumps]]\nid = "hp1"\nwatchdog_timeout_s = 3.0\n', 1)
    path.write_text(text)


async def test_a_trip_alarms_shows_in_control_status_and_scada_and_returns_unacknowledged(
        plant_config_file: Path) -> None:
    short_watchdog(plant_config_file)
    cfg = load_config(plant_config_file)
    assert cfg.simulation is not None and cfg.simulation.heat_pumps[0].watchdog_timeout_s == 3.0
    async with Simulation(cfg.simulation, tick_s=0.2) as sim, running_service(cfg) as svc:
        pool = await connect_pool(cfg.database)
        async with pool.acquire() as conn:
            operator = await create_token(conn, "operator", "states-operator")
        await pool.close()
        hdr = {"Authorization": f"Bearer {operator}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=10) as http:
            async def alarm(alarm_id: str) -> dict[str, Any]:
                r = await http.get("/api/v1/alarms", headers=hdr)
                assert r.status_code == 200, r.text
                return next(a for a in r.json()["alarms"] if a["id"] == alarm_id)

            async def control() -> dict[str, Any]:
                r = await http.get("/api/v1/control", headers=hdr)
                assert r.status_code == 200, r.text
                return dict(r.json())

            async def pump_running() -> bool:
                return "hp1" in (await control())["heat_pumps_running"]

            await wait_until(pump_running, 60, "hp1 running by its status word")
            assert (await alarm(TRIP))["state"] == "normal"

            # The live stream carries the alarm too (only alarms: no point matches "none.").
            streamed: list[str] = []

            async def follow_stream() -> None:
                async with http.stream("GET", "/api/v1/stream", params={"points": "none."}, headers=hdr,
                                       timeout=None) as resp:
                    async for line in resp.aiter_lines():
                        streamed.append(line)

            reader = asyncio.create_task(follow_stream())
            fault = await sim.inject(FaultSpec(device="hp1", kind="trip"))

            async def tripped() -> bool:
                return (await alarm(TRIP))["state"] == "unack_active"

            await wait_until(tripped, 30, "the trip alarm active")  # on-delay 2 s, evaluated every second
            st = await control()
            assert "hp1" not in st["heat_pumps_running"]
            assert "tripped" in st["heat_pumps_not_running"]["hp1"], st
            events = (await http.get("/api/v1/alarms/events", params={"alarm_id": TRIP}, headers=hdr)).json()
            assert events["events"][0]["new_state"] == "unack_active"
            await wait_until(lambda: any(TRIP in line and "unack_active" in line for line in streamed), 10,
                             "the trip alarm on the SSE stream")
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

            async with Client(svc.scada.endpoint if svc.scada else "", timeout=10) as scada:
                ns = await scada.get_namespace_index("urn:heatrec:scada")
                active = scada.get_node(ua.NodeId(f"alarms.{TRIP}.Active", ns))
                state = scada.get_node(ua.NodeId(f"alarms.{TRIP}.State", ns))
                assert await active.read_value() is True and await state.read_value() == "unack_active"

                await sim.clear_fault(fault.id)

                async def returned() -> bool:
                    return (await alarm(TRIP))["state"] == "rtn_unack"

                # Cleared but not acknowledged: ISA-18.2 keeps it for the operator to see.
                await wait_until(returned, 30, "the trip alarm returned, unacknowledged")
                await wait_until(pump_running, 30, "hp1 running again")
                r = await http.post(f"/api/v1/alarms/{TRIP}/acknowledge", headers=hdr)
                assert r.status_code == 200 and r.json()["new_state"] == "normal", r.text

                async def scada_normal() -> bool:
                    return bool(await state.read_value() == "normal" and await active.read_value() is False)

                await wait_until(scada_normal, 10, "SCADA showing the alarm normal")

            # Control off: no more heartbeats, so the pump's watchdog falls back to its local setpoint.
            r = await http.put("/api/v1/control", json={"mode": "off"}, headers=hdr)
            assert r.status_code == 200, r.text

            async def fallback() -> bool:
                return (await alarm(FALLBACK))["state"] == "unack_active"

            await wait_until(fallback, 40, "the watchdog fallback alarm")
            assert "watchdog fallback" in (await control())["heat_pumps_not_running"].get("hp1", "")
