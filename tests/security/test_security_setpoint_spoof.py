"""The review's steering attack replayed against the demo plant: fake supply temperatures at 20 Hz.

Publishing `flow_temperature_c: 45` at 20 Hz drove the heat pump's setpoint from 70 to 82.5 °C in 25 s. The
attacker here holds the gateway's identity and sends telegrams that pass every telegram check (the meter's
serial, the current time): only the control loop's cross-check against the heat pump's own supply sensor
(Modbus) can tell. The loop must go to its safe state instead of running the setpoint away, and come back
bumplessly when the readings agree again.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import httpx

from service.auth import create_token
from service.storage.database import connect_pool
from simulators.runner import Simulation
from tests.security.conftest import METER_TOPIC, SERIAL, Attacker, Plant
from tests.support import running_service, wait_until

ATTACK_S = 25.0
RATE_HZ = 20.0


async def test_fake_supply_telegrams_at_20_hz_put_the_loop_in_its_safe_state_not_the_setpoint_up(
        service_plant: Plant, attacker: Attacker) -> None:
    cfg = service_plant.config()
    assert cfg.simulation is not None and cfg.control is not None
    assert cfg.control.supply_temperature_check == "hp1.supply_temperature"
    delay, rate = cfg.control.supply_temperature_check_delay_s, cfg.control.setpoint_rate_k_per_s
    gateway = service_plant.user("mbus-gateway")
    async with Simulation(cfg.simulation, tick_s=0.2), running_service(cfg) as svc:
        loop = svc.control
        assert loop is not None

        def steady() -> bool:
            s = loop.status()
            return (s.constraint != "starting" and not s.safe_state and s.mode == "auto"
                    and s.heat_pump_setpoints.get("hp1") is not None and s.supply_temperature is not None)

        await wait_until(steady, 60, "the loop in auto with live inputs")
        pool = await connect_pool(cfg.database)
        try:
            async with pool.acquire() as conn:
                token = await create_token(conn, "viewer", "spoof-test")
        finally:
            await pool.close()
        before = loop.status().heat_pump_setpoints["hp1"]
        assert before is not None
        seen: list[tuple[float, float | None, bool, str | None]] = []  # (t, setpoint, safe, constraint)

        first_sent = asyncio.Event()

        async def spoof() -> None:
            while True:
                await attacker(service_plant.broker, gateway, METER_TOPIC,
                               {"serial": SERIAL, "time": datetime.now(UTC).isoformat(), "flow_temperature_c": 45.0})
                first_sent.set()
                await asyncio.sleep(1 / RATE_HZ)

        clock = asyncio.get_running_loop()
        task = asyncio.create_task(spoof())
        try:
            # The attack starts with its first telegram acknowledged, not when its client begins to connect.
            await asyncio.wait_for(first_sent.wait(), 20)
            t0 = clock.time()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=10,
                                         headers={"Authorization": f"Bearer {token}"}) as client:
                async def admitted() -> bool:
                    return (await client.get("/api/v1/control")).status_code == 200

                await wait_until(admitted, 20, "the token admitted")
                while clock.time() - t0 < ATTACK_S:
                    status = (await client.get("/api/v1/control")).json()
                    seen.append((clock.time() - t0, status["heat_pump_setpoints"]["hp1"], status["safe_state"],
                                 status["constraint"]))
                    await asyncio.sleep(0.25)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        safe_at = next((t for t, _, safe, c in seen if safe and c == "safe_state:disagreeing_input"), None)
        assert safe_at is not None, f"never safe; setpoints {[sp for _, sp, _, _ in seen]}"
        assert safe_at <= delay + 5, f"safe only after {safe_at:.1f} s"
        highest = max(sp for _, sp, _, _ in seen if sp is not None)
        # At most the rate clamp for the delay (and a cycle or two of the frozen image) above where it was ...
        assert highest <= before + rate * (delay + 3), f"setpoint ran from {before} to {highest} °C"
        # ... then the safe setpoint, held while the attack goes on: nothing like the review's 82.5 °C.
        assert all(safe for t, _, safe, _ in seen if t > safe_at + 2), "the loop stayed safe while spoofed"
        last = seen[-1][1]
        assert last is not None and last <= max(before, cfg.control.safe_setpoint or 0.0) + 1e-6
        assert loop.stats.safe_state_entries >= 1

        # The attack stops: the meter's real telegrams agree with the heat pump again; the loop resumes.
        await wait_until(lambda: not loop.status().safe_state, 20, "the loop back in auto")
        resumed = loop.status()
        assert resumed.mode == "auto" and resumed.constraint != "safe_state:disagreeing_input"
        held = last
        now_sp = resumed.heat_pump_setpoints["hp1"]
        assert now_sp is not None and abs(now_sp - held) <= rate * 3 + 1e-6, "bumpless: no setpoint step"
