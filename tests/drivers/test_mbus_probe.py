"""`heatrec probe` on an M-Bus meter: its points, and with --records every record it sends.

The simulated gateway runs on its own event loop in a thread, since the CLI runs its own.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli import main as heatrec
from simulators.config import SimHeatMeter, SimulationConfig
from simulators.runner import Simulation

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway() -> Iterator[str]:
    ready = threading.Event()
    address: list[str] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        cfg = SimulationConfig(heat_meters=[SimHeatMeter(id="m1", protocol="mbus", endpoint="127.0.0.1:0",
                                                         serial="71234567", initial_energy_gj=3.6)])
        async with Simulation(cfg, tick_s=None) as sim:
            host, port = sim.mbus_gateways["m1"].address
            address.append(f"{host}:{port}")
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the simulated gateway did not start"
    yield address[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def plant(tmp_path: Path, endpoint: str) -> str:
    path = tmp_path / "plant.toml"
    path.write_text(f"""
[[devices]]
id = "meter1"
protocol = "mbus"
endpoint = "{endpoint}"
primary_address = 1

[[devices.points]]
id = "energy"
record = "energy"
unit = "kWh"
kind = "counter"
""")
    return str(path)


def test_probe_lists_points_and_records(gateway: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = plant(tmp_path, gateway)
    assert heatrec(["probe", "-c", config, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["id"], row["value"], row["unit"], row["quality"]) == ("meter1.energy", 1000.0, "kWh", "GOOD")

    assert heatrec(["probe", "-c", config, "--device", "meter1", "--records"]) == 0
    text = capsys.readouterr().out
    assert "telegram 1: KAM 71234567 version 1, heat (outlet), status 00, more records follow" in text
    assert "energy" in text and "3600000000.0 J" in text  # 3.6 GJ as the meter sends it: 3600 MJ
    assert "flow_temperature" in text and "error_flags" in text

    assert heatrec(["probe", "-c", config, "--device", "meter1", "--records", "--json"]) == 0
    telegrams = json.loads(capsys.readouterr().out)
    assert [t["more_follows"] for t in telegrams] == [True, False]
    due = next(r for r in telegrams[1]["records"] if r["meaning"] == "energy" and r["storage"] == 1)
    assert (due["value"], due["unit"], due["dif_vif"]) == (3.6e9, "J", "44 0e")


def test_records_need_an_mbus_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert heatrec(["probe", "-c", plant(tmp_path, "127.0.0.1:1"), "--device", "nope", "--records"]) == 2
    assert "protocol \"mbus\"" in capsys.readouterr().err
