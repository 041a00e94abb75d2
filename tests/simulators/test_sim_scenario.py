"""Scenario files: load steps, outdoor profiles by date, and faults from a scenario, on virtual time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from service.clock import VirtualClock
from service.config import SimHeatPump, SimulationConfig, load_config
from simulators.errors import SimulatorError
from simulators.runner import Simulation
from simulators.scenario import OutdoorProfile, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "config" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_load_and_name_real_demo_devices(path: Path) -> None:
    scenario = load_scenario(path)
    demo = load_config(ROOT / "config" / "demo.toml").simulation
    assert demo is not None
    ids = {d.id for d in demo.cdus + demo.heat_pumps + demo.heat_meters}
    assert {e.fault.device for e in scenario.events if e.fault} <= ids


def test_bad_scenarios_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[events]]\nat_s = 10\nfault = { device = "hp1", kind = "meltdown" }\n')
    with pytest.raises(SimulatorError, match=r"bad.toml: events.0.fault.kind"):
        load_scenario(bad)
    with pytest.raises(SimulatorError, match="not found"):
        load_scenario(tmp_path / "missing.toml")


def test_a_scenario_that_does_not_fit_the_plant_fails_at_start(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[events]]\nat_s = 3600\nfault = { device = "hp1", kind = "malformed" }\n')
    cfg = SimulationConfig(heat_pumps=[SimHeatPump(id="hp1", endpoint="127.0.0.1:0")])
    with pytest.raises(SimulatorError, match=r"event at 3600 s: fault 'malformed' on 'hp1' \(a heat pump\)"):
        Simulation(cfg, scenario=load_scenario(path))


def test_outdoor_profile_has_seasons_and_days() -> None:
    p = OutdoorProfile(annual_mean=8.0, annual_amplitude=8.0, coldest_day=20, daily_amplitude=3.0,
                       coldest_hour=5.0)
    winter_night = p.at(datetime(2025, 1, 20, 5, tzinfo=UTC))
    winter_noon = p.at(datetime(2025, 1, 20, 17, tzinfo=UTC))
    summer = p.at(datetime(2025, 7, 21, 17, tzinfo=UTC))
    assert winter_night == pytest.approx(8 - 8 - 3, abs=0.01)
    assert winter_noon == pytest.approx(8 - 8 + 3, abs=0.01)
    assert summer == pytest.approx(8 + 8 + 3, abs=0.1)


@pytest.mark.integration  # the simulators' servers on loopback
async def test_a_scenario_drives_load_weather_and_faults(tmp_path: Path, clock: VirtualClock) -> None:
    path = tmp_path / "s.toml"
    path.write_text("""
[outdoor]
annual_mean = 8.0
annual_amplitude = 8.0
daily_amplitude = 0.0
[[events]]
at_s = 60
it_load_scale = 0.5
[[events]]
at_s = 120
fault = { device = "hp1", kind = "trip" }
[[events]]
at_s = 180
clear_faults = "*"
[[events]]
at_s = 240
outdoor_temperature = 12.5
""")
    cfg = SimulationConfig(surplus_heat_kw=500.0, surplus_heat_temperature=40.0,
                           heat_pumps=[SimHeatPump(id="hp1", endpoint="127.0.0.1:0")])
    async with Simulation(cfg, clock=clock, tick_s=None, scenario=load_scenario(path)) as sim:
        host, port = sim.heat_pumps["hp1"].address
        client = AsyncModbusTcpClient(host, port=port, timeout=1, retries=0)
        assert await client.connect()

        async def status_at(seconds: int) -> int:
            while sim.model.elapsed_s < seconds:
                clock.advance(1.0)
                await sim.refresh()
            rr = await client.read_input_registers(5, count=1, device_id=1)
            assert not rr.isError()
            return int(rr.registers[0])

        assert await status_at(59) == 0b001
        assert sim.model.it_load_scale == 1.0
        january = OutdoorProfile(annual_mean=8.0, annual_amplitude=8.0, daily_amplitude=0.0).at(clock.now())
        assert sim.model.outdoor_temperature == pytest.approx(january)
        assert january < 1.0
        assert await status_at(61) == 0b001
        assert sim.model.it_load_scale == 0.5
        assert await status_at(122) == 0b010  # tripped by the scenario, seen on the wire
        assert await status_at(182) == 0b001
        await status_at(241)
        assert sim.model.outdoor_temperature == 12.5  # a fixed value ends the profile
        await status_at(300)
        assert sim.model.outdoor_temperature == 12.5
        client.close()
