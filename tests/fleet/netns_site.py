"""A site as a process, for the fleet test across network namespaces (run inside a site's namespace).

    python -m tests.fleet.netns_site produce SPEC.json   # the Uplink on a bus fed with distinct samples
    python -m tests.fleet.netns_site drain PLANT.toml    # a stopped site's outbox, published until acknowledged

`produce` feeds `points` points at `per_s` samples a second each (tick n: every point at base + n/per_s s),
until SIGTERM; then it stops producing, writes the number of ticks to `ticks_file` (so the test knows every
sample it made: `produced()`), waits until the centre has acknowledged its whole outbox and exits 0 (3 when
that does not happen within `drain_s`). `drain` exits 0 once the outbox of the plant's [uplink] is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.bus import SampleBus
from service.config import load_config
from service.fleet.uplink import Uplink
from service.fleet_config import UplinkConfig
from service.model import Quality, Sample
from service.signals import run_until_signal


def produced(spec: dict[str, Any], ticks: int) -> set[tuple[str, datetime]]:
    """Every (point, time) a `produce` run of `spec` made in `ticks` ticks."""
    base = datetime.fromisoformat(spec["base"])
    return {(f"dev{p % 3}.p{p}", base + timedelta(milliseconds=n * 1000 // spec["per_s"]))
            for n in range(1, ticks + 1) for p in range(spec["points"])}


async def _until_drained(up: Uplink, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if up.sub.queue.empty() and not up._batch and up.opened.is_set() and up.outbox.backlog_batches == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def produce(spec_file: Path) -> int:
    """Run a bus-fed site until SIGTERM, then drain; the exit code."""
    spec = json.loads(spec_file.read_text())
    cfg = UplinkConfig(**spec["uplink"])
    outcome: list[int] = []

    async def main(stop: asyncio.Event) -> None:
        bus = SampleBus()
        up = Uplink(cfg, bus)
        link = asyncio.create_task(up.run())
        base = datetime.fromisoformat(spec["base"])
        ticks = 0

        async def feed() -> None:
            nonlocal ticks
            loop = asyncio.get_running_loop()
            start = loop.time()
            while True:
                ticks += 1
                t = base + timedelta(milliseconds=ticks * 1000 // spec["per_s"])
                for p in range(spec["points"]):
                    bus.publish(Sample(f"dev{p % 3}.p{p}", float(ticks), Quality.GOOD, t, t))
                # Paced on the clock, not on sleeps, so a busy machine does not slow the load down.
                await asyncio.sleep(max(0.0, start + ticks / spec["per_s"] - loop.time()))

        producer = asyncio.create_task(feed())
        await stop.wait()
        await _stop(producer)
        await asyncio.to_thread(Path(spec["ticks_file"]).write_text, str(ticks))
        drained = await _until_drained(up, spec["drain_s"])
        await _stop(link)
        outcome.append(0 if drained else 3)

    run_until_signal(main)
    return outcome[0] if outcome else 4


def drain(plant_file: Path, seconds: float = 40.0) -> int:
    """Publish a stopped site's outbox until the centre has acknowledged all of it; the exit code."""
    cfg = load_config(plant_file).uplink
    assert cfg is not None, f"{plant_file}: no [uplink]"

    async def main() -> int:
        up = Uplink(cfg, SampleBus())
        link = asyncio.create_task(up.run())
        drained = await _until_drained(up, seconds)
        await _stop(link)
        return 0 if drained else 3

    return asyncio.run(main())


def spec_for(site: str, uplink: dict[str, Any], ticks_file: Path, *, day: int, points: int = 10,
             per_s: int = 50, drain_s: float = 40.0) -> dict[str, Any]:
    """A `produce` spec: samples of `site` from 2026-06-`day` on (each site its own day, so none coincide)."""
    return {"site": site, "uplink": uplink, "ticks_file": str(ticks_file), "points": points, "per_s": per_s,
            "base": datetime(2026, 6, day, tzinfo=UTC).isoformat(), "drain_s": drain_s}


if __name__ == "__main__":
    mode, arg = sys.argv[1], Path(sys.argv[2])
    sys.exit(produce(arg) if mode == "produce" else drain(arg))
