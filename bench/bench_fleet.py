"""Central ingest through the broker: N sites into one `heatrec central`, against a bare pipeline, and the lag.

Run: .venv/bin/python bench/bench_fleet.py [--sites 20] [--rows 400000] [--batch 5000] [--rounds 5]
                                           [--lag-sites 20] [--lag-points 500] [--lag-s 60]
Starts its own PostgreSQL + TimescaleDB and Mosquitto on free loopback ports and removes them after.

Throughput: each round, `sites` site publishers (one MQTT 5 connection each, in this process) publish
pre-encoded batches of the real wire format (HRF1, `batch` samples each, `rows` in all) as fast as the
broker takes them, QoS 1, and wait for every batch's acknowledgement. The consumer is, in turn:

- central: `heatrec central` as its own process (batch number, row lock, COPY, watermark, retained ack);
- bare: a process with a paho subscriber that decodes the same HRF1 payloads, COPYs the samples with
  asyncpg (as many connections as central's ingest.max_in_flight) and publishes a bare ack per batch.

Each side starts before its timed part (its subscription ready), stops after; the sides alternate their
order every round; the first round only warms up; figures are medians, in samples per second from the
first publish to the last acknowledgement.

Lag: `lag-sites` real site uplinks (bus, outbox with fsync, uplink; default batching) in this process,
`lag-points` points each sampled at 1 Hz for `lag-s` seconds, into `heatrec central`; then p50/p99 of the
commit time of each stored sample (PostgreSQL's track_commit_timestamp) minus its sample time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.bus import SampleBus  # noqa: E402
from service.config import DatabaseConfig  # noqa: E402
from service.fleet import store, wire  # noqa: E402
from service.fleet.uplink import Uplink  # noqa: E402
from service.fleet_config import UplinkConfig  # noqa: E402
from service.localservers import MosquittoServer, PostgresCluster, free_port  # noqa: E402
from service.model import Quality, Sample, utcnow  # noqa: E402
from service.storage.database import connect_pool  # noqa: E402
from service.storage.migrations import migrate  # noqa: E402

SIDES = ("central", "bare")
N_POINTS = 100
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
IN_FLIGHT = 4  # central's ingest.max_in_flight default; the bare side gets as many connections


def payloads(site: str, n_batches: int, size: int, start: datetime) -> list[bytes]:
    """A site's batches as it would publish them: distinct (point, time), numbered 1..n in epoch 1."""
    out = []
    for b in range(n_batches):
        base = start + timedelta(seconds=b * size // N_POINTS)
        samples = [Sample(f"dev.p{i % N_POINTS}", float(i), Quality.GOOD, base + timedelta(seconds=i // N_POINTS),
                          base) for i in range(size)]
        out.append(wire.encode_message(site, 1, b + 1, 1, base, 0, 0, wire.encode_samples(samples)))
    return out


# ---- the bare pipeline (its own process) -----------------------------------------------------------------

def bare_sink(spec: dict[str, Any]) -> None:
    """paho subscriber -> decode HRF1 -> asyncpg COPY -> bare ack; prints 'ready' once subscribed."""
    import paho.mqtt.client as paho

    db = DatabaseConfig(**spec["db"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        pool = await connect_pool(db, min_size=IN_FLIGHT, max_size=IN_FLIGHT)
        keys = store.PointKeys()
        subscribed = threading.Event()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5)
        client.username_pw_set(spec["user"], spec["password"])
        client.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(queue.put_nowait, m.payload)
        client.on_subscribe = lambda *_a: subscribed.set()
        client.on_connect = lambda c, *_a: c.subscribe(f"{wire.PREFIX}/+/batch", qos=1)
        client.connect(spec["host"], spec["port"])
        client.loop_start()
        await asyncio.to_thread(subscribed.wait, 10)
        print("ready", flush=True)

        committed: dict[str, int] = {}

        async def worker() -> None:
            while True:
                batch = wire.decode_message(await queue.get())
                async with pool.acquire() as conn:
                    await store.ensure_site(conn, batch.site)
                    key_of = await keys.keys(conn, batch.site, {s.point for s in batch.samples})
                    await conn.copy_records_to_table(
                        "samples", records=[(s.source_time, key_of[s.point], s.value, int(s.quality))
                                            for s in batch.samples], columns=["time", "point_key", "value", "quality"])
                # A count, not the batch number: workers finish out of order; the publisher waits for all.
                committed[batch.site] = n = committed.get(batch.site, 0) + 1
                client.publish(wire.ack_topic(batch.site), wire.encode_ack(batch.site, 1, n, batch.seq), qos=1)

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))

    asyncio.run(main())


# ---- the harness -------------------------------------------------------------------------------------------

class Bench:
    """The private servers and the two consumers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pg = PostgresCluster(root / "pg", free_port(), secrets.token_urlsafe(16),
                                  settings={"track_commit_timestamp": "on"})
        self.broker = MosquittoServer(root / "mqtt", free_port(), "bench", secrets.token_urlsafe(16),
                                      persistence=False)
        self.db: DatabaseConfig | None = None

    def start(self) -> None:
        """Both servers, the database migrated."""
        self.pg.start()
        self.pg.create_database("fleet")
        self.db = DatabaseConfig(host=self.pg.host, port=self.pg.port, name="fleet", user=self.pg.user,
                                 password=self.pg.password)
        self.broker.start()

    def stop(self) -> None:
        """Both servers."""
        self.broker.stop()
        self.pg.stop()

    def central_toml(self) -> Path:
        """central.toml for the one instance (every site taken in)."""
        assert self.db is not None
        d, b = self.db, self.broker
        path = self.root / "central.toml"
        path.write_text("\n".join([
            'instance = "bench"', "[database]", f'host = "{d.host}"', f"port = {d.port}", f'name = "{d.name}"',
            f'user = "{d.user}"', f'password = "{d.password}"', "[broker]", f'url = "{b.url}"',
            f'username = "{b.username}"', f'password = "{b.password}"', "[api]", 'host = "127.0.0.1"',
            f"port = {free_port()}", f'token_store = "{self.root / "central-tokens.json"}"', "[ingest]",
            f"max_in_flight = {IN_FLIGHT}", ""]))
        return path

    def _spawn(self, side: str) -> tuple[subprocess.Popen[bytes], int]:
        """The side's consumer process, and where its log stood before it."""
        with open(self.root / f"{side}.log", "ab") as log:
            offset = log.tell()
            if side == "central":
                return subprocess.Popen([sys.executable, "-m", "service.cli", "central", "-c",
                                         str(self.central_toml())], cwd=ROOT, stdout=log,
                                        stderr=subprocess.STDOUT), offset
            assert self.db is not None
            spec = {"db": self.db.model_dump(), "host": self.broker.host, "port": self.broker.port,
                    "user": self.broker.username, "password": self.broker.password}
            return subprocess.Popen([sys.executable, __file__, "--bare-sink", json.dumps(spec)], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=log), offset

    async def start_side(self, side: str) -> subprocess.Popen[bytes]:
        """The side's consumer process, once it takes batches."""
        proc, offset = await asyncio.to_thread(self._spawn, side)
        if side == "central":
            path, deadline = self.root / "central.log", time.monotonic() + 60
            while b"taking batches" not in (await asyncio.to_thread(path.read_bytes))[offset:]:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"heatrec central did not start (see {path})")
                await asyncio.sleep(0.05)
            # It logs before its subscriptions are granted: give the SUBACK a moment to land.
            await asyncio.sleep(0.5)
        else:
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            if line.strip() != b"ready":
                raise RuntimeError(f"bare sink did not start (see {self.root / 'bare.log'})")
        return proc

    @staticmethod
    def stop_side(proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM and wait."""
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _client(self, ident: str) -> aiomqtt.Client:
        return aiomqtt.Client(self.broker.host, self.broker.port, username=self.broker.username,
                              password=self.broker.password, identifier=ident, protocol=aiomqtt.ProtocolVersion.V5,
                              clean_start=True, timeout=60, max_queued_outgoing_messages=0)

    async def publish_all(self, work: dict[str, list[bytes]]) -> float:
        """Every site publishes its batches and waits for the acknowledgement of its last; seconds it took."""
        async with contextlib.AsyncExitStack() as stack:
            clients = {site: await stack.enter_async_context(self._client(f"bench-{site}")) for site in work}
            done = {site: asyncio.Event() for site in work}
            for site, c in clients.items():
                await c.subscribe(wire.ack_topic(site), qos=1)

            async def acks(site: str, c: aiomqtt.Client) -> None:
                async for m in c.messages:
                    if isinstance(m.payload, bytes) and wire.decode_ack(m.payload).watermark >= len(work[site]):
                        done[site].set()
                        return

            async def publish(site: str, c: aiomqtt.Client) -> None:
                for p in work[site]:
                    await c.publish(wire.batch_topic(site), p, qos=1)
                try:
                    await asyncio.wait_for(done[site].wait(), 120)
                except TimeoutError:
                    raise RuntimeError(f"{site}: no acknowledgement of its last batch in 120 s") from None

            listeners = [asyncio.create_task(acks(s, c)) for s, c in clients.items()]
            t = time.perf_counter()
            await asyncio.gather(*(publish(s, c) for s, c in clients.items()))
            elapsed = time.perf_counter() - t
            for task in listeners:
                task.cancel()
            return elapsed

    async def throughput(self, n_sites: int, rows: int, batch: int, rounds: int) -> dict[str, list[float]]:
        """samples/s per side and round (after the warm-up)."""
        per_site = max(1, rows // batch // n_sites)
        results: dict[str, list[float]] = {s: [] for s in SIDES}
        slot = 0
        for r in range(rounds + 1):
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                slot += 1
                start = EPOCH + timedelta(days=30 * slot)
                work = {f"{side}{r}-{i}": payloads(f"{side}{r}-{i}", per_site, batch, start) for i in range(n_sites)}
                proc = await self.start_side(side)
                try:
                    elapsed = await self.publish_all(work)
                finally:
                    self.stop_side(proc)
                rate = per_site * batch * n_sites / elapsed
                print(f"  round {r}{' (warm-up)' if r == 0 else ''}: {side:8s} {rate:10,.0f} samples/s", flush=True)
                if r:
                    results[side].append(rate)
        return results

    async def lag(self, n_sites: int, points: int, seconds: float) -> tuple[float, float, int]:
        """p50, p99 (s) of commit time minus sample time for real uplinks at 1 Hz into heatrec central; samples."""
        proc = await self.start_side("central")
        sites = [f"lag-{i}" for i in range(n_sites)]
        buses = {s: SampleBus() for s in sites}
        uplinks = [Uplink(UplinkConfig(url=self.broker.url, username=self.broker.username,
                                       password=self.broker.password, site=s, outbox_dir=str(self.root / "ob" / s)),
                          buses[s]) for s in sites]
        tasks = [asyncio.create_task(u.run()) for u in uplinks]
        try:
            names = [f"dev{p // 50}.p{p}" for p in range(points)]
            t_end = time.monotonic() + seconds
            next_tick = time.monotonic()
            ticks = 0
            while time.monotonic() < t_end:
                ticks += 1
                now = utcnow()
                for s in sites:
                    bus = buses[s]
                    for i, name in enumerate(names):
                        bus.publish(Sample(name, float(i), Quality.GOOD, now, now))
                next_tick += 1.0
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            assert self.db is not None
            pool = await connect_pool(self.db, max_size=1)
            want, deadline = ticks * points * n_sites, time.monotonic() + 60
            async with pool.acquire() as conn:
                while await conn.fetchval("SELECT sum(samples) FROM fleet_sites WHERE site LIKE 'lag-%'") != want:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the centre did not store all {want} samples within 60 s of the end")
                    await asyncio.sleep(0.2)
            await pool.close()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.stop_side(proc)
        assert self.db is not None
        pool = await connect_pool(self.db, max_size=1)
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
                          percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99, count(*) AS n
                   FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(s.xmin) - s.time) AS lag
                         FROM samples s JOIN fleet_points p ON p.key = s.point_key
                         WHERE p.site LIKE 'lag-%') x""")
        await pool.close()
        return float(row["p50"]), float(row["p99"]), int(row["n"])


def _load() -> str:
    """The machine's load average (other work on it skews every figure)."""
    return Path("/proc/loadavg").read_text().strip()


async def run(bench: Bench, a: argparse.Namespace) -> None:
    """Migrate, throughput rounds, then the lag run; print the figures."""
    assert bench.db is not None
    pool = await connect_pool(bench.db, max_size=1)
    async with pool.acquire() as conn:
        await migrate(conn)
    await pool.close()
    print(f"load before: {_load()}", flush=True)
    if a.rounds:
        res = await bench.throughput(a.sites, a.rows, a.batch, a.rounds)
        central, bare = statistics.median(res["central"]), statistics.median(res["bare"])
        per_site = max(1, a.rows // a.batch // a.sites)
        print(f"through the broker, {a.sites} sites, {per_site * a.batch * a.sites} samples per side per round, "
              f"batches of {a.batch}, median of {a.rounds} rounds:")
        print(f"  heatrec central  {central:12,.0f} samples/s   {central / bare:5.2f} of bare")
        print(f"  bare paho+COPY   {bare:12,.0f} samples/s")
        print(f"load after throughput: {_load()}", flush=True)
    if a.lag_s > 0:
        p50, p99, n = await bench.lag(a.lag_sites, a.lag_points, a.lag_s)
        print(f"lag, {a.lag_sites} sites x {a.lag_points} points at 1 Hz for {a.lag_s:.0f} s ({n} samples), "
              f"commit time - sample time: p50 {p50:.3f} s, p99 {p99:.3f} s")
        print(f"load after lag: {_load()}", flush=True)


def main() -> None:
    """Parse, start the private servers, run, remove them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lag-sites", type=int, default=20)
    ap.add_argument("--lag-points", type=int, default=500)
    ap.add_argument("--lag-s", type=float, default=60.0)
    ap.add_argument("--bare-sink", metavar="JSON", help=argparse.SUPPRESS)  # the bare side's own process
    a = ap.parse_args()
    if a.bare_sink:
        bare_sink(json.loads(a.bare_sink))
        return
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    root.chmod(0o755)
    bench = Bench(root)
    try:
        bench.start()
        asyncio.run(run(bench, a))
    finally:
        bench.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
