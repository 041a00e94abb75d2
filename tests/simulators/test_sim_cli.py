"""`heatrec simulate -c FILE --scenario FILE --speed X` as a real process, faults injected over its HTTP endpoint."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
from pymodbus.client import AsyncModbusTcpClient

pytestmark = pytest.mark.integration  # heatrec simulate as a child process

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_simulate_runs_an_archetype_with_a_scenario_and_takes_faults(tmp_path: Path) -> None:
    meter_port, control_port = free_port(), free_port()
    text = (ROOT / "config/plants/industrial.toml").read_text()
    text = text.replace("127.0.0.1:5330", f"127.0.0.1:{meter_port}").replace("control_port = 8380",
                                                                            f"control_port = {control_port}")
    text = text.replace("mqtt://127.0.0.1:3083", "mqtt://127.0.0.1:1")  # nobody there: retried quietly
    config = tmp_path / "industrial.toml"
    config.write_text(text)
    scenario = tmp_path / "s.toml"
    scenario.write_text("[[events]]\nat_s = 0\noutdoor_temperature = -12.0\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "simulate", "-c", str(config), "--scenario", str(scenario),
        "--speed", "60", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or "simulators running" not in lines[-1]:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, f"simulate exited early: {(await proc.stderr.read()).decode() if proc.stderr else ''}"
            lines.append(line.decode())
        assert any(f"127.0.0.1:{meter_port}" in x for x in lines)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{control_port}") as http:
            state = (await http.get("/state")).json()
            assert state["outdoor_temperature"] == -12.0
            r = await http.post("/faults", json={"device": "meter1", "kind": "exception", "code": 6})
            assert r.status_code == 201
        client = AsyncModbusTcpClient("127.0.0.1", port=meter_port, timeout=2, retries=0)
        assert await client.connect()
        rr = await client.read_input_registers(0, count=2, device_id=1)
        assert rr.isError() and rr.exception_code == 6
        client.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 20)
    assert rc == 0
