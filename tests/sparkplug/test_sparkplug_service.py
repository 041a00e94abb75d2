"""The whole service as a Sparkplug edge node, with the demo's simulators, the test's primary host and Mosquitto.

Births carry every configured point with consistent aliases and datatypes, and the values the host sees
are the heat pump's registers read with pymodbus; a DCMD on the heat pump's setpoint reaches its Modbus
register through the arbiter (envelope and rate applied, audited), an out-of-envelope one is refused and
audited, and both are answered with the value in force. A SIGKILLed `heatrec run` leaves the broker to
publish the NDEATH with the bdSeq of the session's NBIRTH.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymodbus.client import AsyncModbusTcpClient

from service.config import DatabaseConfig, HeatrecConfig, ModbusPoint, load_config
from service.localservers import MosquittoServer
from simulators.heat_pump_modbus import HOLDING_REGISTER_COUNT
from simulators.runner import Simulation
from tests.sparkplug.host import DOUBLE, SparkplugHost, metric_value, property_value
from tests.support import demo_config_text, running_service, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _cut(text: str, start: str, end: str) -> str:
    """The config without the part from the line `start` up to (not including) `end`."""
    i, j = text.index(start), text.index(end)
    return text[:i] + text[j:]


def plant_with_sparkplug(tmp_path: Path, database: DatabaseConfig, broker: MosquittoServer, node: str,
                         host_id: str) -> Path:
    """The demo plant on free ports as a Sparkplug edge node; no OPC UA server and no control loop, so nothing
    else writes the heat pump's setpoint (the arbiter is the same either way)."""
    text = demo_config_text({"55432": database.port, "1883": broker.port})
    text = text.replace('name = "heatrec"', f'name = "{database.name}"', 1)
    text = text.replace("[storage]\n", f'[storage]\nspool_dir = "{tmp_path / "spool"}"\n', 1)
    text = _cut(text, "# --- SCADA OPC UA server", "# --- Alarms")
    text = _cut(text, "# --- Supply-temperature control", "# --- The simulated plant")
    # The setpoint's rate limit, so a command shows both the envelope and the rate at work.
    text = text.replace('id = "supply_setpoint"\nunit = "degC"\nkind = "setpoint"\nwritable = true\n',
                        'id = "supply_setpoint"\nunit = "degC"\nkind = "setpoint"\nwritable = true\nmax_rate = 0.5\n',
                        1)
    text += f"""
[sparkplug]
url = "mqtt://127.0.0.1:{broker.port}"
username = "heatrec"
password = "${{HEATREC_MQTT_PASSWORD:-}}"
group_id = "plant"
edge_node_id = "{node}"
primary_host_id = "{host_id}"
spool_dir = "{tmp_path / "sparkplug"}"
keepalive_s = 5

[[sparkplug.points]]
point = "hp1.supply_setpoint"
commandable = true
"""
    path = tmp_path / "plant.toml"
    path.write_text(text)
    return path


def _expected(point: ModbusPoint, inputs: list[int], holding: list[int]) -> float:
    """The point's value decoded from the registers here, independently of heatrec's codec."""
    regs = (holding if point.function == "holding" else inputs)[point.address:point.address + point.register_count]
    raw = struct.pack(f">{len(regs)}H", *regs)
    fmt = {"int16": ">h", "uint16": ">H", "uint32": ">I", "float32": ">f"}[point.type]
    return struct.unpack(fmt, raw)[0] * point.scale + point.offset


def _values(host: SparkplugHost, aliases: dict[int, str]) -> dict[str, Any]:
    """The host's current value per point: DBIRTH, then DDATA in order (historical ones do not count)."""
    out: dict[str, Any] = {}
    for r in host.messages():
        if r.verb == "DBIRTH":
            for m in r.payload.metrics:
                out[f"{r.device}.{m.name}"] = metric_value(m)
        elif r.verb == "DDATA":
            for m in r.payload.metrics:
                if not m.is_historical:
                    out[aliases[m.alias]] = metric_value(m)
    return out


async def _audit(cfg: HeatrecConfig, target: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(host=cfg.database.host, port=cfg.database.port, user=cfg.database.user,
                                 password=cfg.database.password, database=cfg.database.name)
    try:
        return list(await conn.fetch("SELECT principal, action, requested, applied, outcome, detail FROM audit_log "
                                     "WHERE target = $1 ORDER BY seq", target))
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def test_births_match_the_simulators_and_dcmd_goes_through_the_arbiter(
        database: DatabaseConfig, mosquitto: MosquittoServer, tmp_path: Path, sparkplug_pb2: ModuleType,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEATREC_DB_PASSWORD", database.password or "")
    monkeypatch.setenv("HEATREC_MQTT_PASSWORD", mosquitto.password)
    node, host_id = f"e{secrets.token_hex(3)}", f"h{secrets.token_hex(3)}"
    cfg = load_config(plant_with_sparkplug(tmp_path, database, mosquitto, node, host_id))
    assert cfg.simulation is not None
    host = SparkplugHost(sparkplug_pb2, mosquitto, host_id=host_id, group="plant")
    await asyncio.to_thread(host.start)
    try:
        # No ticker: the plant stands still, so what the host sees must equal the registers exactly.
        async with Simulation(cfg.simulation, tick_s=None) as sim:
            await sim.refresh()
            async with running_service(cfg) as svc:
                assert svc.sparkplug is not None
                births = {r.device: r for r in await host.wait_for("DBIRTH", 3, timeout=30)}
                assert set(births) == {d.id for d in cfg.devices}
                aliases = svc.sparkplug.aliases
                assert len(set(aliases.values())) == len(aliases) == sum(len(d.points) for d in cfg.devices)
                for dev in cfg.devices:
                    metrics = births[dev.id].payload.metrics
                    assert [m.name for m in metrics] == [p.id for p in dev.points]  # every configured point
                    for m, p in zip(metrics, dev.points, strict=True):
                        assert m.alias == aliases[f"{dev.id}.{p.id}"] and m.datatype == DOUBLE
                        assert property_value(m, "engUnit") == p.unit
                        assert property_value(m, "Quality") in (0, 192)
                by_alias = {a: pid for pid, a in aliases.items()}
                hp = next(d for d in cfg.devices if d.id == "hp1")
                hp_points = [p for p in hp.points if isinstance(p, ModbusPoint)]
                await wait_until(lambda: all(_values(host, by_alias).get(f"hp1.{p.id}") is not None
                                             for p in hp_points), 20, "every heat-pump value at the host")
                port = sim.heat_pumps["hp1"].address[1]
                modbus = AsyncModbusTcpClient("127.0.0.1", port=port)
                await modbus.connect()
                try:
                    inputs = (await modbus.read_input_registers(0, count=16, device_id=1)).registers
                    holding = (await modbus.read_holding_registers(0, count=HOLDING_REGISTER_COUNT,
                                                                   device_id=1)).registers
                    seen = _values(host, by_alias)
                    for p in hp_points:
                        assert seen[f"hp1.{p.id}"] == pytest.approx(_expected(p, inputs, holding), abs=1e-9), p.id

                    # A DCMD within the envelope: written through the arbiter, read back, answered.
                    before = len(host.messages())
                    host.dcmd(node, "hp1", name="supply_setpoint", value=61.5)

                    async def register() -> float:
                        rr = await modbus.read_holding_registers(0, count=1, device_id=1)
                        return struct.unpack(">h", struct.pack(">H", rr.registers[0]))[0] * 0.1

                    await wait_until(lambda: _reg_is(register, 61.5), 10, "the setpoint register at 61.5")
                    alias = aliases["hp1.supply_setpoint"]

                    def answers(since: int) -> list[float]:
                        return [metric_value(m) for r in host.messages()[since:] if r.verb == "DDATA"
                                and r.device == "hp1" for m in r.payload.metrics if m.alias == alias]

                    await wait_until(lambda: any(abs(v - 61.5) < 0.051 for v in answers(before)), 10,
                                     "the DDATA with the value in force")
                    # Out of the envelope: refused (an operator is told no rather than clamped), audited,
                    # answered with the value still in force.
                    before = len(host.messages())
                    host.dcmd(node, "hp1", name="supply_setpoint", value=200.0)
                    await wait_until(lambda: bool(answers(before)), 10, "the answer to the refused DCMD")
                    assert answers(before) == [pytest.approx(61.5, abs=0.051)]
                    # Beyond the rate: ramped by max_rate from the last write, and the register holds that.
                    before = len(host.messages())
                    host.dcmd(node, "hp1", alias=alias, value=80.0)
                    await wait_until(lambda: bool(answers(before)), 10, "the answer to the ramped DCMD")
                    ramped = answers(before)[0]
                    assert 61.5 <= ramped < 65.0  # 0.5 K/s since the first write, not 80
                    assert await register() == pytest.approx(ramped, abs=0.051)

                    async def audited() -> bool:
                        return len(await _audit(cfg, "hp1.supply_setpoint")) >= 3

                    await wait_until(audited, 20, "three audit entries")
                    rows = await _audit(cfg, "hp1.supply_setpoint")
                    assert [(r["principal"], r["action"], json.loads(r["requested"]), r["outcome"]) for r in rows] == [
                        ("sparkplug", "write.sparkplug", 61.5, "accepted"),
                        ("sparkplug", "write.sparkplug", 200.0, "rejected"),
                        ("sparkplug", "write.sparkplug", 80.0, "accepted")]
                    assert "envelope" in rows[1]["detail"] and "max_rate" in rows[2]["detail"]
                    assert svc.sparkplug.stats.commands_accepted == 2
                    assert svc.sparkplug.stats.commands_refused == 1
                finally:
                    modbus.close()
                assert "sparkplug" in svc.health() and svc.health()["sparkplug"][0] == "ok"
                # /metrics has the node's families, and they pass promtool's lint like the rest.
                assert svc.tokens is not None
                _, token = svc.tokens.create("viewer", "prometheus")
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=10) as client:
                    text = (await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})).text
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for f in text_string_to_metric_families(text) for s in f.samples}
                assert samples[("heatrec_sparkplug_commands_total", (("outcome", "accepted"),))] == 2
                assert samples[("heatrec_sparkplug_online", ())] == 1
                promtool = shutil.which("promtool")
                assert promtool, "promtool missing: run 'make setup'"
                lint = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"], input=text,
                                               capture_output=True, text=True, timeout=30, check=False)
                assert "sparkplug" not in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    finally:
        await asyncio.to_thread(host.stop)


def start_service(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`heatrec run` as its own process, so it can be killed for real."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "service.cli", "run", "-c", str(config)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def _reg_is(register: Any, value: float) -> bool:
    return abs(await register() - value) < 0.051


@pytest.mark.integration
async def test_sigkill_leaves_the_broker_to_publish_ndeath_with_the_births_bdseq(
        database: DatabaseConfig, mosquitto: MosquittoServer, tmp_path: Path, sparkplug_pb2: ModuleType) -> None:
    node, host_id = f"k{secrets.token_hex(3)}", f"h{secrets.token_hex(3)}"
    config = plant_with_sparkplug(tmp_path, database, mosquitto, node, host_id)
    env = {**os.environ, "HEATREC_DB_PASSWORD": database.password or "", "HEATREC_MQTT_PASSWORD": mosquitto.password}
    host = SparkplugHost(sparkplug_pb2, mosquitto, host_id=host_id, group="plant")
    await asyncio.to_thread(host.start)
    log = tmp_path / "service.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        for round_ in range(2):  # and again after a restart: a new session, the next bdSeq
            proc = start_service(config, env, log)
            births = await host.wait_for("NBIRTH", round_ + 1, timeout=60)
            bdseq = metric_value(next(m for m in births[-1].payload.metrics if m.name == "bdSeq"))
            assert proc.poll() is None, log.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            deaths = await host.wait_for("NDEATH", round_ + 1, timeout=20)  # the will, published by the broker
            assert metric_value(deaths[-1].payload.metrics[0]) == bdseq
            assert deaths[-1].payload.metrics[0].name == "bdSeq"
        seqs = [metric_value(next(m for m in r.payload.metrics if m.name == "bdSeq")) for r in host.messages("NBIRTH")]
        assert seqs[1] == (seqs[0] + 1) % 256  # kept across the restart (spool_dir/bdseq)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await asyncio.to_thread(host.stop)
