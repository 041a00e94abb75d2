"""The demo's simulated registers continue across restarts (state in a file), as a real meter's never reset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.clock import VirtualClock
from service.config import SimulationConfig
from simulators.plant import PlantModel
from simulators.register_state import RegisterFile
from simulators.runner import Simulation
from tests.support import meter_telegrams

MakeConfig = Callable[..., SimulationConfig]
TOPIC = "mbus/heatmeter/71234567"


def test_registers_are_saved_and_restored(plant_config: MakeConfig, clock: VirtualClock, tmp_path: Path) -> None:
    cfg = plant_config()
    model = PlantModel(cfg, clock)
    for _ in range(600):  # ten simulated minutes of heat
        clock.advance(1.0)
        model.tick()
    meter, hp = model.heat_meters["meter1"], model.heat_pumps["hp1"]
    assert meter.energy_gj > cfg.heat_meters[0].initial_energy_gj and hp.electric_energy_kwh > 0
    store = RegisterFile(tmp_path / "registers.json")
    store.save(model)
    again = PlantModel(cfg, VirtualClock())
    assert store.load_into(again) == 2
    assert again.heat_meters["meter1"].energy_gj == meter.energy_gj
    assert again.heat_meters["meter1"].volume_m3 == meter.volume_m3
    assert again.heat_pumps["hp1"].electric_energy_kwh == hp.electric_energy_kwh


def test_a_damaged_or_foreign_file_is_ignored(plant_config: MakeConfig, clock: VirtualClock, tmp_path: Path) -> None:
    cfg = plant_config()
    path = tmp_path / "registers.json"
    for text in ("{not json", json.dumps({"format": 99}), json.dumps(
            {"format": 1, "heat_meters": {"meter1": {"energy_gj": -5, "volume_m3": 1}, "other": {}},
             "heat_pumps": {"hp1": {"electric_energy_kwh": "x"}}})):
        path.write_text(text)
        model = PlantModel(cfg, clock)
        assert RegisterFile(path).load_into(model) == 0
        assert model.heat_meters["meter1"].energy_gj == cfg.heat_meters[0].initial_energy_gj


async def test_the_meter_continues_where_it_stopped_across_a_restart(mosquitto: Any, plant_config: MakeConfig,
                                                                     tmp_path: Path,
                                                                     eventually: Callable[..., Any]) -> None:
    cfg = plant_config(broker=f"mqtt://{mosquitto.host}:{mosquitto.port}", mqtt_username=mosquitto.username,
                       mqtt_password=mosquitto.password, meter={"publish_interval_s": 0.1})
    state = tmp_path / "registers.json"
    async with meter_telegrams(mosquitto, TOPIC) as telegrams:
        initial = cfg.heat_meters[0].initial_energy_gj
        async with Simulation(cfg, tick_s=0.1, register_file=state):
            await eventually(lambda: telegrams and telegrams[-1]["energy_gj"] > initial + 1e-4, within=15,
                             message="the register counting")
        first_run = list(telegrams)
        stopped_at = max(t["energy_gj"] for t in first_run)
        async with Simulation(cfg, tick_s=0.1, register_file=state):
            await eventually(lambda: len(telegrams) > len(first_run), within=15, message="a telegram after restart")
    second_run = telegrams[len(first_run):]
    # Without the file the second run would start again at the configured initial value (a register restart).
    assert second_run[0]["energy_gj"] >= stopped_at > initial
    energies = [t["energy_gj"] for t in telegrams]
    assert energies == sorted(energies), "the register never steps back"
