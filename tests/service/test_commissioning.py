"""`heatrec probe` and `heatrec write` against the simulators on loopback, run as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from service.commissioning import probe
from service.config import HeatrecConfig, load_config
from service.localservers import MosquittoServer
from simulators.runner import Simulation
from simulators.scenario import FaultSpec
from tests.support import demo_config_text

ROOT = Path(__file__).resolve().parents[2]


class MuteDevice:
    """A TCP listener that accepts connections and never answers; counts what it is sent."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on a free loopback port; returns the port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while data := await reader.read(4096):
            self.received += data
        writer.close()

    async def stop(self) -> None:
        """Close the listener."""
        if self._server is not None:
            self._server.close()


def _mute_modbus(device_id: str, port: int, timeout_s: float) -> str:
    return f"""
[[devices]]
id = "{device_id}"
protocol = "modbus"
endpoint = "127.0.0.1:{port}"
timeout_s = {timeout_s}
backoff_initial_s = 5.0

[[devices.points]]
id = "setpoint"
unit = "degC"
writable = true
min = 40.0
max = 85.0
address = 0
type = "int16"
scale = 0.1
"""


@pytest_asyncio.fixture
async def mute() -> AsyncIterator[list[MuteDevice]]:
    """Two mute devices."""
    devices = [MuteDevice(), MuteDevice()]
    yield devices
    for d in devices:
        await d.stop()


@pytest_asyncio.fixture
async def plant_file(tmp_path: Path, mosquitto: MosquittoServer, mute: list[MuteDevice],
                     monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo plant's config on free ports, with two extra mute Modbus devices."""
    monkeypatch.setenv("HEATREC_MQTT_PASSWORD", mosquitto.password)
    text = demo_config_text({"1883": mosquitto.port})
    extra = "".join([_mute_modbus("dead1", await mute[0].start(), 2.0),
                     _mute_modbus("dead2", await mute[1].start(), 2.0)])
    # An appended [[devices]] after other tables is still the top-level array: concatenation works.
    path = tmp_path / "plant.toml"
    path.write_text(text + extra)
    return path


@pytest_asyncio.fixture
async def plant(plant_file: Path) -> AsyncIterator[tuple[Path, HeatrecConfig, Simulation]]:
    """The demo plant's simulators running behind `plant_file`."""
    cfg = load_config(plant_file)
    assert cfg.simulation is not None
    async with Simulation(cfg.simulation, tick_s=0.2) as sim:
        yield plant_file, cfg, sim


async def _heatrec(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", *args, cwd=ROOT, env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_probe_json_lists_every_point_good(plant: tuple[Path, HeatrecConfig, Simulation]) -> None:
    path, cfg, _ = plant
    rc, out, err = await _heatrec("probe", "-c", str(path), "--json", "--device", "hp1")
    assert rc == 0, err
    rows = json.loads(out)
    hp1 = next(d for d in cfg.devices if d.id == "hp1")
    assert [r["id"] for r in rows] == [f"hp1.{p.id}" for p in hp1.points]
    assert all(r["quality"] == "GOOD" for r in rows), rows
    by_id = {r["id"]: r for r in rows}
    assert 30 < by_id["hp1.supply_temperature"]["value"] < 95
    assert by_id["hp1.supply_temperature"]["unit"] == "degC"
    assert {"id", "value", "unit", "quality"} <= set(rows[0])


async def test_dead_devices_are_bad_quickly_and_do_not_hold_up_the_others(
        plant: tuple[Path, HeatrecConfig, Simulation]) -> None:
    _, cfg, _ = plant
    started = time.monotonic()
    rows = await probe(cfg)
    elapsed = time.monotonic() - started
    quality = {r.id: r.quality for r in rows}
    assert set(quality) == set(cfg.point_ids())
    for pid, q in quality.items():
        assert q == ("BAD" if pid.startswith("dead") else "GOOD"), (pid, q, rows)
    dead = next(r for r in rows if r.id == "dead1.setpoint")
    assert dead.error and "2.0 s" in dead.error  # the read timed out after the device's timeout_s
    # Two mute devices with a 2 s timeout each: probed one after the other they would take over 4 s.
    assert elapsed < 3.8, elapsed


async def test_probe_text_exits_non_zero_when_a_point_is_bad(
        plant: tuple[Path, HeatrecConfig, Simulation]) -> None:
    path, _, _ = plant
    rc, out, _ = await _heatrec("probe", "-c", str(path), "--device", "dead1")
    assert rc == 1
    line = next(x for x in out.splitlines() if x.startswith("dead1.setpoint"))
    assert "BAD" in line and "holding 0" in line
    assert "error: dead1:" in out


async def test_write_reads_back_and_reaches_the_device(plant: tuple[Path, HeatrecConfig, Simulation]) -> None:
    path, _, sim = plant
    rc, out, err = await _heatrec("write", "-c", str(path), "hp1.supply_setpoint", "65.5")
    assert rc == 0, out + err
    assert "hp1.supply_setpoint: ok" in out and "read back 65.5" in out
    assert sim.model.heat_pumps["hp1"].remote_setpoint == pytest.approx(65.5)


async def test_a_write_the_device_refuses_exits_1_not_3(plant: tuple[Path, HeatrecConfig, Simulation]) -> None:
    # Exit 3 means "refused with nothing sent"; a write the device answers with an exception was sent.
    path, _, sim = plant
    await sim.inject(FaultSpec(device="hp1", kind="exception"))
    rc, out, err = await _heatrec("write", "-c", str(path), "hp1.supply_setpoint", "66.0")
    assert rc == 1, out + err
    assert "hp1.supply_setpoint: refused" in out and "device refused" in out


@pytest.mark.parametrize(("point", "value", "reason"), [
    ("dead1.setpoint", "90", "above the maximum 85.0"),
    ("dead1.setpoint", "nan", "not a finite number"),
    ("hp1.supply_temperature", "60", "not writable"),
])
async def test_refused_writes_send_nothing(plant_file: Path, mute: list[MuteDevice], point: str, value: str,
                                           reason: str) -> None:
    # Nothing runs behind hp1's endpoint either: a refused write must not even try to connect.
    rc, out, err = await _heatrec("write", "-c", str(plant_file), point, value)
    assert rc == (2 if value == "nan" else 3), out + err  # 2: not a number at all, 3: refused by the envelope
    assert reason in out + err
    assert mute[0].connections == 0 and mute[0].received == b""
