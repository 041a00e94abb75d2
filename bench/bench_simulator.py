"""Simulator CPU: a 22.5 MW plant (20 CDUs, 9 heat pumps, 4 meters) served at 1 Hz, as a share of one core.

Run: .venv/bin/python bench/bench_simulator.py [--seconds 30]
Three windows in one process, each measured with process CPU time over wall time:
  1. idle: an asyncio loop waking at 1 Hz with nothing to do (the floor);
  2. baseline: the same 1 Hz loop stepping the plant model only (no servers);
  3. simulator: the full Simulation ticking at 1 Hz, all 33 servers listening (20 OPC UA,
     9 + 4 Modbus TCP), no clients connected;
  4. polled: the same while a separate client process reads every device once a second
     (every CDU variable over OPC UA, the full register blocks over Modbus), as heatrec does.
Only this process's CPU is counted (the polling client runs in its own process).
The ratio simulator / baseline shows what the protocol faces cost over the physics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from service.clock import RealClock
from service.config import SimCdu, SimHeatMeter, SimHeatPump, SimulationConfig
from simulators.plant import PlantModel
from simulators.runner import Simulation

TARGET_SHARE = 0.10
POLLER = """
import asyncio, json, sys
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient
from simulators.cdu_opcua import CDU_VARIABLES, node_id

async def main(spec):
    opc = []
    for cdu_id, url in spec["opcua"].items():
        c = Client(url, timeout=5)
        await c.connect()
        opc.append((c, [c.get_node(node_id(cdu_id, v.name)) for v in CDU_VARIABLES]))
    mb = []
    for host, port, unit, count in spec["modbus"]:
        c = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        await c.connect()
        mb.append((c, unit, count))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        next_at += 1.0
        await asyncio.sleep(max(next_at - loop.time(), 0.0))
        for c, nodes in opc:
            await c.read_values(nodes)
        for c, unit, count in mb:
            rr = await c.read_input_registers(0, count=count, device_id=unit)
            assert not rr.isError()

asyncio.run(main(json.loads(sys.argv[1])))
"""


def plant() -> SimulationConfig:
    """22.5 MW DLC plant on ephemeral loopback ports; Modbus meters, so no broker is needed."""
    return SimulationConfig(
        seed=1, dh_design_demand_kw=30000.0, direct_exchange_kw=12000.0,
        cdus=[SimCdu(id=f"cdu{i}", endpoint="opc.tcp://127.0.0.1:0", it_load_kw=1125.0,
                     supply_temperature_setpoint=50.0, supply_temperature_allowable_max=52.0, setpoint_max=55.0)
              for i in range(1, 21)],
        heat_pumps=[SimHeatPump(id=f"hp{i}", endpoint="127.0.0.1:0", capacity_kw=1500.0, dead_time_s=30.0)
                    for i in range(1, 10)],
        heat_meters=[SimHeatMeter(id=f"meter{i}", protocol="modbus", endpoint="127.0.0.1:0",
                                  serial=f"7500000{i}") for i in range(1, 5)],
    )


async def share_of_core(seconds: float, work: object = None) -> float:
    """CPU seconds per wall second of this process over `seconds`, running `work()` at 1 Hz if given."""
    loop = asyncio.get_running_loop()
    cpu0, wall0 = time.process_time(), loop.time()
    next_at = wall0
    while loop.time() - wall0 < seconds:
        next_at += 1.0
        await asyncio.sleep(max(next_at - loop.time(), 0.0))
        if callable(work):
            work()
    return (time.process_time() - cpu0) / (loop.time() - wall0)


async def main(seconds: float) -> None:
    cfg = plant()
    idle = await share_of_core(seconds)
    model = PlantModel(cfg, RealClock())
    baseline = await share_of_core(seconds, model.tick)
    t0 = time.perf_counter()
    async with Simulation(cfg, tick_s=1.0) as sim:
        started = time.perf_counter() - t0
        await asyncio.sleep(2.0)  # let the first ticks and any start-up work settle
        loop = asyncio.get_running_loop()
        cpu0, wall0 = time.process_time(), loop.time()
        await asyncio.sleep(seconds)
        full = (time.process_time() - cpu0) / (loop.time() - wall0)
        n = len(sim.cdus) + len(sim.heat_pumps) + len(sim.modbus_meters)
        spec = {"opcua": {cid: srv.endpoint for cid, srv in sim.cdus.items()},
                "modbus": [(*hp.address, hp.unit_id, 16) for hp in sim.heat_pumps.values()]
                + [(*m.address, m.unit_id, 12) for m in sim.modbus_meters.values()]}
        poller = await asyncio.create_subprocess_exec(sys.executable, "-c", POLLER, json.dumps(spec),
                                                      stdout=asyncio.subprocess.PIPE)
        try:
            assert poller.stdout is not None
            assert (await asyncio.wait_for(poller.stdout.readline(), 120)).strip() == b"ready"
            await asyncio.sleep(2.0)
            cpu0, wall0 = time.process_time(), loop.time()
            await asyncio.sleep(seconds)
            polled = (time.process_time() - cpu0) / (loop.time() - wall0)
            if poller.returncode is not None:
                raise RuntimeError("the polling client died: the polled figure would be meaningless")
        finally:
            if poller.returncode is None:
                poller.kill()
            await poller.wait()
    print(f"plant: {len(cfg.cdus)} CDUs, {len(cfg.heat_pumps)} heat pumps, {len(cfg.heat_meters)} meters, "
          f"{n} servers; start-up {started:.1f} s; windows of {seconds:.0f} s at 1 Hz")
    print(f"idle asyncio loop          {idle * 100:6.2f} % of one core")
    print(f"baseline: model step only  {baseline * 100:6.2f} % of one core")
    print(f"simulator: model + servers {full * 100:6.2f} % of one core")
    print(f"polled: + 33 reads/s       {polled * 100:6.2f} % of one core")
    print(f"ratio simulator / baseline {full / baseline:6.1f}")
    print(f"ratio polled / baseline    {polled / baseline:6.1f}")
    print(f"target < {TARGET_SHARE * 100:.0f} % (polled): {'met' if polled < TARGET_SHARE else 'NOT met'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measuring window")
    asyncio.run(main(parser.parse_args().seconds))
