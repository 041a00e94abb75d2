"""`heatrec simulate -c FILE --scenario FILE --speed X` as a real process, faults injected over its HTTP endpoint."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

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
            # The industrial plant's billing meter is wired M-Bus behind a TCP gateway: a good telegram first,
            # then one with a bad checksum once the fault is in (frames built here by hand, EN 13757-2).
            assert _checksum_ok(await _req_ud2(meter_port, 1))
            r = await http.post("/faults", json={"device": "meter1", "kind": "bad_checksum"})
            assert r.status_code == 201
            assert not _checksum_ok(await _req_ud2(meter_port, 1))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 20)
    assert rc == 0


async def _req_ud2(port: int, address: int) -> bytes:
    """One REQ_UD2 short frame (10 C A CS 16, FCB and FCV set) to a primary address; the long frame answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        control = 0x7B
        writer.write(bytes((0x10, control, address, (control + address) & 0xFF, 0x16)))
        await writer.drain()
        head = await asyncio.wait_for(reader.readexactly(4), 10)
        assert head[0] == 0x68 and head[3] == 0x68 and head[1] == head[2], head.hex()
        return head + await asyncio.wait_for(reader.readexactly(head[1] + 2), 10)
    finally:
        writer.close()


def _checksum_ok(frame: bytes) -> bool:
    """Whether a long frame's checksum is the sum of its C, A, CI and data bytes, modulo 256."""
    length = frame[1]
    return frame[-1] == 0x16 and sum(frame[4:4 + length]) & 0xFF == frame[4 + length]
