"""A meter exchange on the simulated M-Bus meter reaches accounting on the running service.

The service reads the simulated heat meter over M-Bus (TCP gateway) into PostgreSQL + TimescaleDB; the
simulator exchanges the meter (new identification number, register from 0). The driver's exchange becomes
exactly one replacement record with the old meter's last register and the new meter's first, plus an audit
entry, and the register arithmetic across it is clean: flagged as a replacement, no restart, no fault, and
the energy is what the two meters counted. Then the meter reports an error: a state alarm on its flags.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from service.accounting.registers import NEGATIVE, REPLACEMENT, RESTART, UNRESOLVED, RegisterSpec, register_steps
from service.accounting.store import fetch_register, fetch_replacements
from service.config import DatabaseConfig, load_config
from service.model import utcnow
from service.storage.database import connect_pool
from simulators.config import SimHeatMeter, SimulationConfig
from simulators.runner import Simulation
from simulators.scenario import FaultSpec
from tests.support import running_service, wait_until

pytestmark = pytest.mark.integration
MARGIN = timedelta(hours=1)


def plant_file(tmp_path: Path, database: DatabaseConfig, gateway: str) -> Path:
    path = tmp_path / "plant.toml"
    path.write_text(f"""
[plant]
name = "mbus exchange"

[database]
host = "{database.host}"
port = {database.port}
name = "{database.name}"
user = "{database.user}"
password = "{database.password}"

[storage]
spool_dir = "{tmp_path / 'spool'}"
batch_max_age_s = 0.2

[api]
token_store = "{tmp_path / 'tokens.json'}"

[[devices]]
id = "meter1"
protocol = "mbus"
endpoint = "{gateway}"
primary_address = 1
poll_interval_s = 0.2
timeout_s = 1.0

[[devices.points]]
id = "energy"
record = "energy"
unit = "GJ"
kind = "counter"

[[devices.points]]
id = "flow_temperature"
record = "flow_temperature"
unit = "degC"

[[devices.points]]
id = "error_flags"
record = "error_flags"
unit = ""
kind = "status"

[alarms]
evaluate_interval_s = 0.2

[[alarms.states]]
point = "meter1.error_flags"
name = "sensor_fault"
bit = 2
message = "heat meter meter1: temperature sensor fault"

[accounting]

[[accounting.meters]]
id = "meter1"
serial = "71234567"
energy_point = "meter1.energy"
qp_m3h = 400.0
qi_m3h = 4.0
max_power_kw = 50000.0
""")
    return path


async def test_meter_exchange_becomes_one_replacement_and_a_clean_register(tmp_path: Path,
                                                                           database: DatabaseConfig) -> None:
    sim_cfg = SimulationConfig(surplus_heat_kw=5000.0, direct_exchange_kw=5000.0, heat_meters=[
        SimHeatMeter(id="m1", protocol="mbus", endpoint="127.0.0.1:0", serial="71234567", initial_energy_gj=10.0)])
    async with Simulation(sim_cfg, tick_s=0.1) as sim:
        host, port = sim.mbus_gateways["m1"].address
        cfg = load_config(plant_file(tmp_path, database, f"{host}:{port}"))
        start = utcnow()
        async with running_service(cfg) as svc:
            pool = await connect_pool(cfg.database)
            spec = RegisterSpec(max_rate_per_s=50000.0 / 1e6, gap_s=900.0)
            try:
                async def readings(n: int) -> bool:
                    async with pool.acquire() as conn:
                        rows = await fetch_register(conn, "meter1.energy", start, utcnow(), MARGIN)
                    return len(rows) >= n

                await wait_until(lambda: readings(5), 30, "five readings of the old meter stored")
                await sim.inject(FaultSpec(device="m1", kind="replace", serial="72000001"))

                async def replaced() -> bool:
                    async with pool.acquire() as conn:
                        return bool(await conn.fetchval("SELECT count(*) FROM meter_replacements"))

                await wait_until(replaced, 30, "the replacement stored")
                async with pool.acquire() as conn:
                    row = await conn.fetchrow("SELECT * FROM meter_replacements")
                    audit = await conn.fetch("SELECT * FROM audit_log WHERE action = 'meter_exchange'")
                assert (row["meter_id"], row["old_serial"], row["new_serial"]) == ("meter1", "71234567", "72000001")
                assert row["entered_by"] == "driver:meter1"
                assert row["old_final_gj"] > 10.0 and row["new_initial_gj"] < 0.01
                assert [(a["target"], a["outcome"]) for a in audit] == [("meter1", "recorded")]

                exchanged = row["time"]

                async def after(n: int) -> bool:
                    async with pool.acquire() as conn:
                        rows = await fetch_register(conn, "meter1.energy", exchanged, utcnow(), MARGIN)
                    return len([r for r in rows if r.time > exchanged]) >= n

                await wait_until(lambda: after(5), 30, "five readings of the new meter stored")
                end = utcnow()
                async with pool.acquire() as conn:
                    rows = await fetch_register(conn, "meter1.energy", start, end, MARGIN)
                    reps = await fetch_replacements(conn, "meter1", start, end, MARGIN)
                    count = await conn.fetchval("SELECT count(*) FROM meter_replacements")
            finally:
                await pool.close()
            assert svc.drivers[0].stats.read_errors == 0

            # The meter reports an error (flag bit 2): the state alarm on its error_flags point goes active.
            alarms = svc.alarms
            assert alarms is not None
            alarm = alarms.engine.alarms["meter1.error_flags:sensor_fault"]
            assert alarm.state.value == "normal"
            await sim.inject(FaultSpec(device="m1", kind="meter_error", value=4.0))
            await wait_until(lambda: alarm.state.value == "unack_active", 30, "the error-flags alarm active")
    assert count == 1 and len(reps) == 1
    steps = register_steps(rows, spec, reps)
    flags = set().union(*(s.flags for s in steps))
    assert REPLACEMENT in flags
    assert not flags & {RESTART, NEGATIVE, UNRESOLVED}
    rows.sort(key=lambda r: r.time)
    old = [r.value for r in rows if r.time < exchanged]
    new = [r.value for r in rows if r.time >= exchanged]
    counted = (reps[0].old_final - old[0]) + (new[-1] - reps[0].new_initial)
    assert counted > 0 and sum(s.energy for s in steps) == pytest.approx(counted)
    assert reps[0].old_final == pytest.approx(old[-1]) and reps[0].new_initial == pytest.approx(new[0])
