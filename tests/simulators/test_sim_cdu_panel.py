"""The CDU as a data-centre operator changes it on its own panel (control endpoint, scenario), and what it serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asyncua import Client as OpcUaClient
from asyncua import ua

from service.clock import VirtualClock
from service.config import SimCdu, SimHeatPump, SimulationConfig
from simulators.cdu_opcua import node_id
from simulators.errors import SimulatorError
from simulators.runner import Simulation
from simulators.scenario import FaultSpec, load_scenario
from tests.support import wait_until

ALLOWABLE_MAX = node_id("cdu1", "supply_temperature_allowable_max")
SUPPLY = node_id("cdu1", "secondary_supply_temperature")
RETURN = node_id("cdu1", "secondary_return_temperature")


def cdu_plant(**top: Any) -> SimulationConfig:
    """One CDU over OPC UA and one small heat pump; limited dry coolers, so heat is left in the CDU loop."""
    return SimulationConfig(
        cdus=[SimCdu(id="cdu1", endpoint="opc.tcp://127.0.0.1:0", it_load_kw=800.0)],
        heat_pumps=[SimHeatPump(id="hp1", endpoint="127.0.0.1:0", capacity_kw=500.0)],
        **{"dry_cooler_capacity_kw": 150.0, **top})


async def advance(sim: Simulation, clock: VirtualClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1.0)
        await sim.refresh()


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulation]:
    async with Simulation(cdu_plant(), clock=clock, tick_s=None, control_port=0) as s:
        await advance(s, clock, 60)
        yield s


async def reads(client: OpcUaClient, nid: ua.NodeId, expected: float) -> bool:
    return bool(await client.get_node(nid).read_value() == expected)


@pytest.mark.integration  # the CDU's OPC UA server and the control endpoint on loopback
async def test_put_cdu_changes_the_allowable_max_and_an_opcua_client_reads_it(sim: Simulation) -> None:
    assert sim.control_url is not None
    async with OpcUaClient(sim.cdus["cdu1"].endpoint, timeout=5) as client, \
            httpx.AsyncClient(base_url=sim.control_url) as http:
        assert await client.get_node(ALLOWABLE_MAX).read_value() == 35.0
        r = await http.put("/cdus/cdu1", json={"supply_temperature_allowable_max": 31.0})
        assert r.status_code == 200
        assert r.json() == {"cdu": "cdu1", "supply_temperature_allowable_max": 31.0}
        assert sim.model.cdus["cdu1"].supply_temperature_allowable_max == 31.0
        await wait_until(lambda: reads(client, ALLOWABLE_MAX, 31.0), 5, "the new allowable max over OPC UA")
        r = await http.put("/cdus/cdu1/", json={"supply_temperature_allowable_max": 33})  # an integer is a number
        assert r.status_code == 200 and r.json()["supply_temperature_allowable_max"] == 33.0
        await wait_until(lambda: reads(client, ALLOWABLE_MAX, 33.0), 5, "the second allowable max over OPC UA")
        state = (await http.get("/state")).json()
        assert state["cdus"]["cdu1"]["supply_temperature_allowable_max"] == 33.0
        # heatrec only reads it: over OPC UA the node stays read-only.
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await client.get_node(ALLOWABLE_MAX).write_value(ua.Variant(40.0, ua.VariantType.Double))
        assert sim.model.cdus["cdu1"].supply_temperature_allowable_max == 33.0


@pytest.mark.integration  # the control endpoint on loopback
async def test_put_cdu_refuses_what_the_panel_would_not_take(sim: Simulation) -> None:
    assert sim.control_url is not None
    key = "supply_temperature_allowable_max"
    async with httpx.AsyncClient(base_url=sim.control_url) as http:
        missing = await http.put("/cdus/cdu9", json={key: 31.0})
        assert missing.status_code == 404 and "cdu9" in missing.json()["error"]
        bad_bodies: list[bytes] = [b"", b"{not json", b"[31.0]", b"31.0", b"{}", b'{"allowable_max": 31.0}',
                                   b'{"supply_temperature_allowable_max": 31.0, "cdu": "cdu1"}',
                                   b'{"supply_temperature_allowable_max": "31"}',
                                   b'{"supply_temperature_allowable_max": true}',
                                   b'{"supply_temperature_allowable_max": null}',
                                   b'{"supply_temperature_allowable_max": NaN}',
                                   b'{"supply_temperature_allowable_max": 1e400}', b"\xff\xfe"]
        for body in bad_bodies:
            r = await http.put("/cdus/cdu1", content=body)
            assert r.status_code == 400, body
            assert "error" in r.json()
        for value in (-0.5, 100.5):
            r = await http.put("/cdus/cdu1", json={key: value})
            assert r.status_code == 409, value
            assert "outside 0.0..100.0" in r.json()["error"]
        assert (await http.get("/cdus/cdu1")).status_code == 405
    assert sim.model.cdus["cdu1"].supply_temperature_allowable_max == 35.0, "nothing refused was applied"


@pytest.mark.integration  # the control endpoint on loopback
async def test_state_carries_the_heat_flows_that_close_the_balance(sim: Simulation) -> None:
    assert sim.control_url is not None
    async with httpx.AsyncClient(base_url=sim.control_url) as http:
        state = (await http.get("/state")).json()
    cdu, hp = state["cdus"]["cdu1"], state["heat_pumps"]["hp1"]
    assert set(cdu) == {"supply_temperature", "supply_temperature_allowable_max", "it_load_kw", "heat_removed_kw"}
    assert set(hp) == {"heat_output_kw", "evaporator_heat_kw", "cop", "running", "fault", "effective_setpoint"}
    assert cdu["supply_temperature"] == sim.model.cdus["cdu1"].supply_temperature, "the true value, no noise"
    assert hp["running"] is True and hp["fault"] is False and hp["effective_setpoint"] == 70.0
    assert hp["heat_output_kw"] == pytest.approx(500.0)
    assert hp["heat_output_kw"] == pytest.approx(hp["evaporator_heat_kw"] * hp["cop"] / (hp["cop"] - 1))
    assert state["dry_cooler_capacity_kw"] == 150.0 and state["dry_cooler_kw"] == pytest.approx(150.0)
    assert state["unremoved_kw"] > 100.0, "the small pump and the dry coolers leave heat in the CDU loop"
    taken = state["direct_exchange_kw"] + hp["evaporator_heat_kw"] + state["dry_cooler_kw"] + state["unremoved_kw"]
    assert cdu["heat_removed_kw"] == pytest.approx(taken, rel=1e-9)
    assert cdu["supply_temperature"] > 31.0, "the heat left over warms the CDU supply"


@pytest.mark.integration  # the CDU's OPC UA server on loopback
async def test_served_temperatures_are_live_and_a_frozen_one_is_exact(sim: Simulation, clock: VirtualClock) -> None:
    async with OpcUaClient(sim.cdus["cdu1"].endpoint, timeout=5) as client:
        supply, returns = [], []
        for _ in range(10):
            await advance(sim, clock, 1)
            supply.append(await client.get_node(SUPPLY).read_value())
            returns.append(await client.get_node(RETURN).read_value())
            true = sim.model.cdus["cdu1"]
            assert supply[-1] != true.supply_temperature and abs(supply[-1] - true.supply_temperature) < 0.2
            assert returns[-1] == sim.model.reported_cdu("cdu1").return_temperature
        assert len(set(supply)) == len(supply) and len(set(returns)) == len(returns)
        await sim.inject(FaultSpec(device="cdu1", kind="frozen", point="supply_temperature"))
        frozen = await client.get_node(SUPPLY).read_value()
        for _ in range(10):
            await advance(sim, clock, 1)
            assert await client.get_node(SUPPLY).read_value() == frozen  # exactly, noise and all
            returns.append(await client.get_node(RETURN).read_value())
        assert len(set(returns)) == len(returns), "the return sensor stays live"


@pytest.mark.integration  # the CDU's OPC UA server on loopback, with the background ticker
async def test_a_change_in_the_model_reaches_clients_on_the_next_tick(clock: VirtualClock) -> None:
    async with Simulation(cdu_plant(), clock=clock, tick_s=0.05) as sim, \
            OpcUaClient(sim.cdus["cdu1"].endpoint, timeout=5) as client:
        sim.model.set_cdu_allowable_max("cdu1", 32.25)  # no publish of its own: the face's update() carries it
        await wait_until(lambda: reads(client, ALLOWABLE_MAX, 32.25), 5, "the ticker publishing the new setting")
        dv = await client.get_node(ALLOWABLE_MAX).read_data_value()
        assert dv.SourceTimestamp == clock.now()


SCENARIO = """
name = "panel"
[[events]]
at_s = 0
cdu_allowable_max = { cdu1 = 33.0 }
[[events]]
at_s = 120
cdu_allowable_max = { cdu1 = 31.0 }
"""


@pytest.mark.integration  # the CDU's OPC UA server on loopback
async def test_a_scenario_changes_the_allowable_max_on_time(tmp_path: Path, clock: VirtualClock) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    async with Simulation(cdu_plant(), clock=clock, tick_s=None, scenario=load_scenario(path)) as sim, \
            OpcUaClient(sim.cdus["cdu1"].endpoint, timeout=5) as client:
        assert sim.model.cdus["cdu1"].supply_temperature_allowable_max == 33.0
        await wait_until(lambda: reads(client, ALLOWABLE_MAX, 33.0), 5, "the 0 s event over OPC UA")
        await advance(sim, clock, 119)
        assert await client.get_node(ALLOWABLE_MAX).read_value() == 33.0
        await advance(sim, clock, 1)
        assert sim.model.cdus["cdu1"].supply_temperature_allowable_max == 31.0
        await wait_until(lambda: reads(client, ALLOWABLE_MAX, 31.0), 5, "the 120 s event over OPC UA")


def test_a_scenario_naming_an_unknown_cdu_fails_at_start(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[[events]]\nat_s = 600\ncdu_allowable_max = { cdu1 = 31.0, cdu9 = 30.0 }\n")
    with pytest.raises(SimulatorError, match=r"event at 600 s: cdu_allowable_max names 'cdu9', .*\(CDUs: cdu1\)"):
        Simulation(cdu_plant(), scenario=load_scenario(path))


@pytest.mark.parametrize(("line", "key"), [("{ cdu1 = 150.0 }", r"events\.0\.cdu_allowable_max\.cdu1"),
                                           ("{ cdu1 = -1 }", r"events\.0\.cdu_allowable_max\.cdu1"),
                                           ("{ cdu1 = nan }", r"events\.0\.cdu_allowable_max\.cdu1"),
                                           ('{ cdu1 = "31" }', r"events\.0\.cdu_allowable_max\.cdu1"),
                                           ("{}", r"events\.0\.cdu_allowable_max")])
def test_bad_allowable_max_events_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[[events]]\nat_s = 10\ncdu_allowable_max = {line}\n")
    with pytest.raises(SimulatorError, match=key):
        load_scenario(path)


@pytest.mark.integration  # the control endpoint on loopback
async def test_post_events_carries_a_scenario_event_out_now(sim: Simulation) -> None:
    assert sim.control_url is not None
    async with httpx.AsyncClient(base_url=sim.control_url, timeout=5) as http:
        r = await http.post("/events", json={"it_load_scale": 1.3, "dh_demand_scale": 0.4,
                                             "outdoor_temperature": 30.0})
        assert r.status_code == 200, r.text
        assert r.json()["applied"] == {"it_load_scale": 1.3, "dh_demand_scale": 0.4, "outdoor_temperature": 30.0}
        assert (sim.model.it_load_scale, sim.model.dh_demand_scale, sim.model.outdoor_temperature) == (1.3, 0.4,
                                                                                                      30.0)
        r = await http.post("/events", json={"fault": {"device": "hp1", "kind": "trip"}})
        assert r.status_code == 200 and sim.model.heat_pumps["hp1"].fault
        r = await http.post("/events", json={"clear_faults": "*"})
        assert r.status_code == 200 and not sim.model.heat_pumps["hp1"].fault
        for bad, status in (({"it_load_scale": 5}, 400), ({"at_s": 3, "bogus": 1}, 400), ([1], 400),
                            ({"fault": {"device": "cdu9", "kind": "trip"}}, 409),
                            ({"cdu_allowable_max": {"cdu9": 31.0}}, 409)):
            r = await http.post("/events", json=bad)
            assert r.status_code == status and r.json()["error"], (bad, r.status_code, r.text)
        assert (await http.get("/events")).status_code == 405
        assert sim.model.it_load_scale == 1.3, "a refused event changes nothing"


def test_the_dry_coolers_take_less_on_a_hot_day() -> None:
    from simulators.plant import dry_cooler_capacity

    rated = SimulationConfig(dry_cooler_capacity_kw=400.0, dry_cooler_design_outdoor_temperature=25.0,
                             dry_cooler_design_loop_temperature=40.0)
    assert dry_cooler_capacity(rated, 40.0, 25.0) == pytest.approx(400.0)
    assert dry_cooler_capacity(rated, 40.0, 30.0) == pytest.approx(400.0 * 10 / 15)
    assert dry_cooler_capacity(rated, 40.0, 5.0) == pytest.approx(400.0), "never above the rating"
    assert dry_cooler_capacity(rated, 28.0, 30.0) == 0.0, "air warmer than the water takes nothing"
    assert dry_cooler_capacity(SimulationConfig(dry_cooler_capacity_kw=400.0), 40.0, 35.0) == 400.0
    with pytest.raises(ValueError, match="dry_cooler_design_loop_temperature"):
        SimulationConfig(dry_cooler_capacity_kw=1.0, dry_cooler_design_outdoor_temperature=45.0)


@pytest.mark.integration  # the control endpoint on loopback, driven by curl
def test_the_control_endpoint_commands_of_the_docs_run_as_written(tmp_path: Path) -> None:
    """docs/simulators.md section 7's curl lines against a simulated demo plant (its port for 8180)."""
    import asyncio
    import re
    import subprocess
    import threading

    from service.localservers import free_port

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "simulators.md").read_text()
    block = doc.split("## 7. Faults", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert len(commands) >= 6 and all(c.startswith("curl ") for c in commands), commands
    port = free_port()
    ready, stop = threading.Event(), threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with Simulation(cdu_plant(), tick_s=0.2, control_port=port):
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)
        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "simulated plant did not start"
        for command in commands:
            run = re.sub(r"localhost:8180", f"127.0.0.1:{port}", command) + " -w '\\n%{http_code}' --max-time 10"
            out = subprocess.run(run, shell=True, capture_output=True, text=True, timeout=20)
            body, _, code = out.stdout.rpartition("\n")
            assert out.returncode == 0 and code.startswith("2"), (command, out.stdout, out.stderr)
            assert body.strip().startswith("{"), (command, body)
    finally:
        stop.set()
        thread.join(15)
