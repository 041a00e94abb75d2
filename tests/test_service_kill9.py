"""The whole service (`heatrec run`) killed with SIGKILL while it spools, then restarted.

Real simulators feed real drivers; PostgreSQL (a private cluster) is stopped so samples go to the
spool; heatrec is killed -9; what the spool holds at that moment must reach the database exactly
once after the database and heatrec come back, and nothing in the database may be duplicated.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from service.config import load_config
from service.localservers import MosquittoServer, PostgresCluster, free_port
from service.storage.database import connect_pool
from service.storage.spool import Spool, spool_path
from simulators.runner import Simulation
from tests.support import demo_config_text, wait_until

ROOT = Path(__file__).resolve().parents[1]


def spooled_keys(directory: Path) -> set[tuple[str, float]]:
    """(point, source epoch) of every sample a copy of the spool holds, as a fresh start would replay it."""
    copy = directory.parent / (directory.name + "-copy")
    shutil.copytree(directory, copy)
    spool = Spool(copy, max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    try:
        keys = set()
        for seq in spool.sealed():
            for _, batch in spool.read_segment(seq):
                keys.update((s.point, s.source_time.timestamp()) for s in batch)
        return keys
    finally:
        spool.close()
        shutil.rmtree(copy)


def start_service(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`heatrec run` as its own process, so it can be killed for real."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "service.cli", "run", "-c", str(config)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def test_sigkill_of_spooling_service_loses_and_duplicates_nothing(server_root: Path, mosquitto: MosquittoServer,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pg = PostgresCluster(server_root / f"pg-kill9-{secrets.token_hex(3)}", free_port(), secrets.token_urlsafe(16),
                         settings={"fsync": "off"})
    pg.start()
    text = demo_config_text({"1883": mosquitto.port, "55432": pg.port})
    text = text.replace("[storage]\n", f'[storage]\nspool_dir = "{tmp_path / "spool"}"\nbatch_max_age_s = 0.2\n'
                        "write_timeout_s = 2\n", 1).replace("batch_max_age_s = 1.0\n", "", 1)
    config = tmp_path / "plant.toml"
    config.write_text(text)
    monkeypatch.setenv("HEATREC_DB_PASSWORD", pg.password)
    monkeypatch.setenv("HEATREC_MQTT_PASSWORD", mosquitto.password)
    env = {**os.environ, "HEATREC_DB_PASSWORD": pg.password, "HEATREC_MQTT_PASSWORD": mosquitto.password}
    cfg = load_config(config)
    assert cfg.simulation is not None
    spool_dir = spool_path(cfg.storage.spool_dir, cfg.database)
    log = tmp_path / "service.log"
    proc: subprocess.Popen[bytes] | None = None
    pool: asyncpg.Pool | None = None
    try:
        async with Simulation(cfg.simulation, tick_s=0.2):
            proc = start_service(config, env, log)
            pool = await connect_pool(cfg.database, max_size=2)

            async def rows() -> bool:
                assert pool is not None and proc is not None
                assert proc.poll() is None, log.read_text()[-2000:]
                try:
                    return bool(await pool.fetchval("SELECT count(*) FROM samples"))
                except asyncpg.UndefinedTableError:
                    return False

            await wait_until(rows, 60, "first rows from the running service")
            await pool.close()
            pool = None
            pg.stop()  # the outage: from here on the service spools

            def spooling() -> bool:
                return len(spooled_keys(spool_dir)) >= 100 if spool_dir.exists() else False

            await wait_until(spooling, 60, "samples in the spool while PostgreSQL is down")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            held = spooled_keys(spool_dir)
            pg.start()
            proc = start_service(config, env, log)
            pool = await connect_pool(cfg.database, max_size=2)

            def replayed() -> bool:
                return not list(spool_dir.glob("seg-*.spool")) or not spooled_keys(spool_dir) & held

            await wait_until(replayed, 60, "the spool replayed after the restart")
            stored = {(r["point"], r["time"].timestamp()) for r in await pool.fetch(
                "SELECT point, time FROM readings")}
            missing = held - stored
            assert not missing, f"{len(missing)} of {len(held)} spooled samples lost, e.g. {sorted(missing)[:3]}"
            dup = await pool.fetchval("SELECT count(*) - count(DISTINCT (point, time)) FROM readings")
            assert dup == 0
            assert proc.poll() is None, log.read_text()[-2000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if pool is not None:
            await pool.close()
        pg.stop()
