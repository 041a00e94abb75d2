"""Price-aware dispatch on the running service against the simulators, over a compressed day.

The demo plant on free ports with a heat store (its state of charge read over Modbus TCP), dry coolers that
can take the whole IT load, and `[dispatch]` with 2-second plan steps replaying a price file: a cheap block,
an expensive block, cheap again. The heat pump's SG-Ready register, read on the Modbus wire by a separate
client, follows the plan: blocked in the expensive block, running in the cheap one; there its capacity-limit
register holds the plan's part load (the IT heat alone cannot give the pump its full output), and it is back
at 100 % as soon as dispatch is switched off; the CDU never exceeds its allowable maximum; removing the price
file shows the follow-demand fallback in `GET /api/v1/dispatch`, and the pump is back on today's control.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymodbus.client import AsyncModbusTcpClient

from service.auth import create_token
from service.config import load_config
from service.dispatch import prices as price_data
from service.localservers import free_port
from service.storage.database import connect_pool
from simulators.runner import Simulation
from tests.support import running_service, wait_until

pytestmark = pytest.mark.integration
PRICE_START = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
CHEAP, EXPENSIVE = "20.00", "5000.00"  # DKK/MWh: at COP ~5 the heat costs ~0.05 and ~1.0 DKK/kWh (sold at 0.3)
PRICES = [CHEAP] * 2 + [EXPENSIVE] * 5 + [CHEAP] * 89  # one plan step of 2 s per quarter hour


def dispatch_plant(path: Path, prices: Path) -> None:
    """The demo plant made fast, with a tank, SG-Ready staging, big dry coolers and a compressed [dispatch]."""
    text = path.read_text()
    state = path.parent / "dispatch-state.json"
    tank_port = free_port()
    edits = [
        ("capacity_kw = 1200.0\ncompressor_power_kw",
         "capacity_kw = 1200.0\ntime_constant_s = 5.0\ncompressor_power_kw"),
        # The dry coolers take the whole IT load in any weather: the pump may stop when heat does not pay.
        ("dry_cooler_capacity_kw = 400.0\ndry_cooler_design_outdoor_temperature = 25.0\n",
         "dry_cooler_capacity_kw = 1200.0\n"),
        # The tank's water joins the meter's supply while the pump is blocked: the meter and the pump's own
        # sensor then measure different water, so the cross-check of the two would be a false safe state.
        ('supply_temperature_check = "hp1.supply_temperature"   # the same water on another path (Modbus): '
         'must agree\n', ""),
        ('heartbeat = "hp1.heartbeat"\n',
         'heartbeat = "hp1.heartbeat"\nsg_ready = "hp1.sg_ready"\ncapacity_limit = "hp1.capacity_limit"\n'),
    ]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    # No SCADA server: its start costs seconds and this test has nothing to ask it.
    text, cut = re.subn(r"(?s)# --- SCADA OPC UA server.*?(?=# --- Alarms)", "", text)
    assert cut == 1
    text += f"""
[simulation.heat_store]
id = "tank1"
endpoint = "127.0.0.1:{tank_port}"
volume_m3 = 20.0
min_temperature = 40.0
max_temperature = 70.0
max_discharge_kw = 500.0
initial_state_of_charge = 0.5

[[devices]]
id = "tank1"
protocol = "modbus"
endpoint = "127.0.0.1:{tank_port}"
unit_id = 1
poll_interval_s = 0.5

[[devices.points]]
id = "state_of_charge"
unit = ""
address = 0
function = "input"
type = "uint16"
scale = 0.0001

[dispatch]
enabled = true
price_file = "{prices}"
tariffs = "dk1_10kv_illustrative"
heat_price_dkk_per_mwh = "300"
horizon_h = 4
solver_time_limit_s = 2.0
dry_cooler_capacity_kw = 1200.0
source_temperature = 35.0
sink_temperature = 65.0
replan_s = 2.0
step_s = 2.0
state_file = "{state}"

[[dispatch.heat_pumps]]
id = "hp1"
capacity_kw = 1200.0

[dispatch.store]
volume_m3 = 20.0
min_temperature = 40.0
max_temperature = 70.0
max_discharge_kw = 500.0

[dispatch.points]
it_heat = ["cdu1.heat_removed"]
store_state_of_charge = "tank1.state_of_charge"
"""
    path.write_text(text)


def write_prices(path: Path) -> None:
    series = price_data.PriceSeries("DK1", PRICE_START, tuple(Decimal(p) for p in PRICES))
    path.write_text(json.dumps({"records": price_data.to_records(series)}, default=str))


async def read_holding(port: int, address: int) -> int:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
    await client.connect()
    try:
        rr = await client.read_holding_registers(address, count=1, device_id=1)
        assert not rr.isError(), rr
        return int(rr.registers[0])
    finally:
        client.close()


async def test_the_heat_pump_follows_the_price_plan_cooling_first(plant_config_file: Path, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    write_prices(prices)
    dispatch_plant(plant_config_file, prices)
    cfg = load_config(plant_config_file)
    assert cfg.simulation is not None and cfg.dispatch is not None
    hp_port = int(cfg.simulation.heat_pumps[0].endpoint.rsplit(":", 1)[1])
    async with Simulation(cfg.simulation, tick_s=0.2) as sim:
        cdu, cdu_max = sim.model.cdus["cdu1"], sim.model.cdus["cdu1"].supply_temperature_allowable_max
        hottest = [cdu.supply_temperature]
        async with running_service(cfg) as svc:
            pool = await connect_pool(cfg.database)
            async with pool.acquire() as conn:
                viewer = await create_token(conn, "viewer", "dispatch-viewer")
                operator = await create_token(conn, "operator", "dispatch-operator")
            await pool.close()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=10) as http:
                seen: list[dict[str, Any]] = []

                async def dispatch() -> dict[str, Any]:
                    hottest.append(cdu.supply_temperature)
                    r = await http.get("/api/v1/dispatch", headers={"Authorization": f"Bearer {viewer}"})
                    assert r.status_code == 200, r.text
                    seen.append(r.json())
                    return dict(r.json())

                async def in_block(blocked: bool) -> bool:
                    st = await dispatch()
                    if st["status"] != "optimal" or st["execution"] != "applied" or st["command"] is None \
                            or st["current_step"] is None:
                        return False
                    # The block is judged by the price the plan used for the step in force.
                    step = st["steps"][st["current_step"]]
                    price = step["electricity_dkk_per_kwh"]
                    if price is None or step["on"]["hp1"] == blocked or (Decimal(price) > 5) != blocked:
                        return False
                    sg = await read_holding(hp_port, 1)
                    return sg == 1 if blocked else sg in (0, 2)

                await wait_until(lambda: in_block(True), 30, "the pump SG-Ready blocked in the expensive block")
                expensive = seen[-1]
                assert expensive["command"]["in_service"] == []
                assert Decimal(expensive["steps"][expensive["current_step"]]["electricity_dkk_per_kwh"]) > 5
                assert expensive["expected_margin_dkk"] is not None
                await wait_until(lambda: in_block(False), 20, "the pump running again in the cheap block")
                cheap = seen[-1]
                assert cheap["command"]["in_service"] == ["hp1"]
                assert Decimal(cheap["steps"][cheap["current_step"]]["electricity_dkk_per_kwh"]) < 1
                capped: list[int] = []

                async def part_load_capped() -> bool:
                    # The plan's heat for the pump, as its capacity limit on the wire (0.1 % per count).
                    st = await dispatch()
                    if st["execution"] != "applied" or st["command"] is None or st["current_step"] is None:
                        return False
                    planned = st["steps"][st["current_step"]]["heat_kw"]["hp1"]
                    limit = st["command"]["capacity_limit_percent"].get("hp1")
                    register = await read_holding(hp_port, 3)
                    capped[:] = [register]
                    return (limit is not None and 0 < planned < 1200 * 0.9 and limit < 100
                            and st["capacity_limit_written"].get("hp1") == limit
                            and register == round(limit * 10) and limit >= planned / 1200 * 100)

                await wait_until(part_load_capped, 20, "the plan's part load as the pump's capacity limit")
                assert 0 < capped[0] < 1000
                r = await http.put("/api/v1/dispatch", json={"enabled": False},
                                   headers={"Authorization": f"Bearer {operator}"})
                assert r.status_code == 200, r.text

                async def released() -> bool:
                    st = await dispatch()
                    return (st["command"] is None and st["capacity_limit_written"].get("hp1") == 100.0
                            and await read_holding(hp_port, 3) == 1000)

                await wait_until(released, 10, "the capacity limit back at 100 % once dispatch is switched off")
                r = await http.put("/api/v1/dispatch", json={"enabled": True},
                                   headers={"Authorization": f"Bearer {operator}"})
                assert r.status_code == 200, r.text
                await wait_until(part_load_capped, 20, "the cap again once dispatch is back on")
                # The store's content came from the tank's own register, over Modbus TCP.
                assert svc.bus.latest["tank1.state_of_charge"].value is not None
                assert any(s["store_kwh"] > 0 for s in cheap["steps"])

                # The price file disappears: today's control, visibly.
                prices.unlink()

                async def following_demand() -> bool:
                    st = await dispatch()
                    return (st["status"] == "follow_demand" and st["fallback"] and st["command"] is None
                            and "missing prices" in st["reason"] and await read_holding(hp_port, 1) == 0
                            and await read_holding(hp_port, 3) == 1000)

                await wait_until(following_demand, 10, "the follow-demand fallback, shown and acted on")
                health = (await http.get("/api/v1/health", headers={"Authorization": f"Bearer {viewer}"})).json()
                assert health["components"]["dispatch"]["status"] == "degraded"
                metrics = (await http.get("/metrics", headers={"Authorization": f"Bearer {viewer}"})).text
                assert 'heatrec_dispatch_fallback{fallback="follow_demand"} 1.0' in metrics
                # The plan over time went through the service's own writer: the margin report sums it.
                day = {"start": (PRICE_START - timedelta(hours=1)).isoformat(),
                       "end": (PRICE_START + timedelta(days=1)).isoformat()}

                async def reported() -> bool:
                    r = await http.get("/api/v1/dispatch/report", params=day,
                                       headers={"Authorization": f"Bearer {viewer}"})
                    assert r.status_code == 200, r.text
                    body = r.json()
                    assert all(isinstance(body[k], str) and Decimal(body[k]).is_finite()  # money as strings
                               for k in ("expected_margin_dkk", "baseline_margin_dkk", "difference_dkk"))
                    return bool(body["hours_applied"] > 0 and body["hours_fallback"] > 0)

                await wait_until(reported, 10, "the stored plan records in the margin report")
                # The operator's switch: audited, and the answer says it is off.
                r = await http.put("/api/v1/dispatch", json={"enabled": False},
                                   headers={"Authorization": f"Bearer {viewer}"})
                assert r.status_code == 403
                r = await http.put("/api/v1/dispatch", json={"enabled": False},
                                   headers={"Authorization": f"Bearer {operator}"})
                assert r.status_code == 200 and r.json()["enabled"] is False, r.text
    assert max(hottest) <= cdu_max, (max(hottest), cdu_max)
