"""Control: heatrec's controller against a plain PI on the closed-loop suite, and cycle jitter under ingest.

Run: .venv/bin/python bench/bench_control.py [--seconds 30] [--period 0.1] [--rate 20000]

1. IAE (K·s) per scenario of the closed-loop suite (bench/closed_loop.py, simulated time, no
   network): heatrec's controller (PID + feedforward + CDU limit + staging) against a plain PI with the
   same gains, the same arbiter and the same CDU limit but no feedforward. Target: total ratio ≤ 0.6.
2. Cycle jitter of ControlLoop on the real clock (how late each cycle starts against its fixed
   schedule) while another task publishes `--rate` samples/s onto the same SampleBus and a consumer
   drains them; the baseline is the same loop on an idle bus, measured in the same run. Target: p99 ≤ 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import UTC, datetime

# Beside this script: `python bench/bench_control.py` puts bench/ first on sys.path.
from closed_loop import METER, control_config, run, suite

from drivers.base import WriteResult
from service.bus import SampleBus
from service.control.loop import ControlLoop
from service.model import Quality, Sample
from service.tasks import cancel_and_wait

INPUTS = {METER: 70.0, "hp1.outdoor_temperature": 0.0, "cdu1.secondary_supply_temperature": 30.0,
          "cdu1.supply_temperature_allowable_max": 35.0, "hp1.status": 1.0, "hp2.status": 1.0,
          "hp1.heat_output": 400.0, "hp2.heat_output": 400.0}


def iae_suite() -> float:
    print("closed-loop suite (simulated time), IAE while the loop tracks:")
    print(f"  {'scenario':<16} {'heatrec':>10} {'plain PI':>10} {'ratio':>6}  CDU violations (heatrec / PI)")
    total_h = total_b = 0.0
    for sc in suite():
        h = run(sc, sc.config(feedforward=True))
        b = run(sc, sc.config(feedforward=False))
        total_h += h.iae
        total_b += b.iae
        print(f"  {sc.name:<16} {h.iae:10.1f} {b.iae:10.1f} {h.iae / b.iae:6.2f}"
              f"  {h.cdu_violations} / {b.cdu_violations}")
        print(f"    heatrec: {h.line()}")
    ratio = total_h / total_b
    print(f"  {'total':<16} {total_h:10.1f} {total_b:10.1f} {ratio:6.2f}  (target ≤ 0.6)")
    return ratio


async def publisher(bus: SampleBus, rate: int, stop: asyncio.Event) -> int:
    """Publish `rate` samples/s in 10 ms bursts over 2,000 points, plus fresh control inputs."""
    sent = 0
    start = time.monotonic()
    k = 0
    while not stop.is_set():
        now = datetime.now(UTC)
        for i in range(rate // 100):
            bus.publish(Sample(f"dev{i % 20}.p{(sent + i) % 100}", float(i), Quality.GOOD, now, now))
        sent += rate // 100
        for point, value in INPUTS.items():
            bus.publish(Sample(point, value + (0.01 * (k % 2) if point == METER else 0.0), Quality.GOOD, now, now))
        k += 1
        await asyncio.sleep(max(start + k * 0.01 - time.monotonic(), 0.0))
    return sent


async def drain(bus: SampleBus, stop: asyncio.Event) -> None:
    """A consumer like the storage writer: takes everything off its queue."""
    sub = bus.subscribe("bench-consumer", maxsize=200_000)
    while not stop.is_set():
        sub.drain(50_000)
        await asyncio.sleep(0.005)


async def jitter(seconds: float, period: float, rate: int) -> tuple[float, float, float, float, int, int]:
    """p50, p99, max jitter and max cycle time (s), cycles, samples published for one run (rate 0 = idle)."""
    bus = SampleBus()

    async def write(point: str, value: float) -> WriteResult:
        await asyncio.sleep(0.002)  # a device round-trip
        return WriteResult(point, "ok", value, value, value)

    loop = ControlLoop(control_config(period_s=period), bus, write)
    stop = asyncio.Event()
    pub = asyncio.create_task(publisher(bus, rate, stop))
    con = asyncio.create_task(drain(bus, stop))
    await asyncio.sleep(0.2)
    ctl = asyncio.create_task(loop.run())
    await asyncio.sleep(seconds)
    await cancel_and_wait(ctl)
    stop.set()
    sent = await pub
    await cancel_and_wait(con)
    s = loop.stats
    return s.jitter_percentile(50), s.jitter_percentile(99), s.max_jitter_s, s.max_cycle_s, s.cycles, sent


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--period", type=float, default=0.1, help="control period for the jitter runs, s")
    ap.add_argument("--rate", type=int, default=20_000, help="samples/s published during the loaded run")
    args = ap.parse_args()
    ratio = iae_suite()
    load = os.getloadavg()[0]
    print(f"\ncycle jitter, period {args.period * 1000:.0f} ms, {args.seconds:.0f} s per run"
          f" (machine load average {load:.1f} on {os.cpu_count()} cores: other work delays wake-ups):")
    for label, rate in (("idle bus (baseline)", 0), (f"{args.rate:,} samples/s", args.rate)):
        p50, p99, mx, cycle_max, cycles, sent = await jitter(args.seconds, args.period, rate)
        got = sent / args.seconds
        print(f"  {label:<22} p50 {p50 * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms  max {mx * 1000:6.2f} ms"
              f"  longest cycle {cycle_max * 1000:5.2f} ms  ({cycles} cycles, {got:,.0f} samples/s published)")
    print(f"\nIAE ratio heatrec / plain PI: {ratio:.2f} (target ≤ 0.6); p99 jitter target ≤ 20 ms")


if __name__ == "__main__":
    asyncio.run(main())
