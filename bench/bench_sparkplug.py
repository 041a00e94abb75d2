"""Sparkplug DDATA points per second: heatrec's edge node against bare paho-mqtt clients, same broker, same run.

Run: .venv/bin/python bench/bench_sparkplug.py [--scans 50] [--bursts 5] [--rounds 5]
Starts its own Mosquitto on a free loopback port and one subscriber (paho, its own thread) that counts
what arrives on spBv1.0/bench/DDATA/#; every side is timed from its start until the subscriber has the
last message. The plant: 20 devices of 100 points, 2,000 points that all change every scan; a burst is
`scans` scans (one source timestamp per scan, as a driver's poll), 100,000 points at the default, and a
round is `bursts` bursts (500,000 points).
- heatrec: the EdgeNode (born, aliases, deadband 0) with each burst's samples waiting in its bus queue, as
  after a burst from the drivers (the clock runs per burst); it takes them through report by exception,
  encodes DDATA with its own codec and publishes them (QoS 0). Producing the samples is not timed.
- bare+protobuf: a paho client that builds the same DDATA messages (same metrics per message, aliases,
  timestamps, doubles) with protobuf's runtime (classes compiled from tests/sparkplug/sparkplug_b.proto)
  and publishes them: what a minimal Python Sparkplug client does. The target ratio (>= 0.8) is against it.
- bare bytes: a paho client publishing the very payloads heatrec published in the round before, encoded
  in advance: the transport alone, the ceiling no encoder in Python reaches (shown for scale).
The sides alternate round by round (the order rotates); medians of the rounds (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import paho.mqtt.client as paho

from drivers.config import ModbusDevice
from service.bus import SampleBus
from service.localservers import MosquittoServer, free_port
from service.model import Quality, Sample
from service.scada.sparkplug.node import DRAIN_LIMIT, METRICS_PER_MESSAGE, EdgeNode
from service.scada.sparkplug_config import SparkplugConfig

DEVICES, POINTS = 20, 100
TOPIC = "spBv1.0/bench/DDATA/node/"
PROTO = Path(__file__).resolve().parents[1] / "tests" / "sparkplug" / "sparkplug_b.proto"


def compile_proto(out_dir: Path) -> ModuleType:
    """sparkplug_b_pb2 from the tests' schema (written from the specification), compiled by grpcio-tools."""
    import importlib.util

    from grpc_tools import protoc

    out_dir.mkdir(parents=True)
    assert protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out_dir}", str(PROTO)]) == 0
    spec = importlib.util.spec_from_file_location("sparkplug_b_pb2", out_dir / "sparkplug_b_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sparkplug_b_pb2"] = module
    spec.loader.exec_module(module)
    return module


class Subscriber:
    """Counts DDATA messages and keeps their payloads (the bare-bytes side replays them)."""

    def __init__(self, broker: MosquittoServer) -> None:
        self.count = self._base = 0
        self.last = 0.0
        self.record: list[tuple[str, bytes]] | None = None
        self._lock = threading.Lock()
        ready = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{secrets.token_hex(3)}")
        c.username_pw_set(broker.username, broker.password)
        c.on_connect = lambda client, *a: client.subscribe("spBv1.0/bench/DDATA/#", qos=0)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._on_message
        c.connect(broker.host, broker.port)
        c.loop_start()
        assert ready.wait(10), "subscription not acknowledged"
        self._client = c

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.count += 1
            self.last = time.perf_counter()
            if self.record is not None:
                self.record.append((msg.topic, bytes(msg.payload)))

    def reset(self, record: bool = False) -> None:
        with self._lock:
            self.count, self.record = 0, [] if record else None

    def mark(self) -> None:
        with self._lock:
            self._base = self.count

    def wait_more(self, n: int) -> float:
        """perf_counter() of the n-th message since mark()."""
        return self.wait(self._base + n)

    def wait(self, n: int, timeout: float = 300) -> float:
        """perf_counter() of the n-th message since reset."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self.count >= n:
                    return self.last
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {n} messages arrived")
            time.sleep(0.001)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def plant() -> list[ModbusDevice]:
    return [ModbusDevice.model_validate({"id": f"d{d:02d}", "protocol": "modbus", "endpoint": "127.0.0.1:1",
                                         "points": [{"id": f"p{i:03d}", "address": i} for i in range(POINTS)]})
            for d in range(DEVICES)]


def scans(n: int, start: int) -> list[Sample]:
    """n scans of every point, each value new (deadband 0 reports them all)."""
    out = []
    t0 = datetime.now(UTC)
    for k in range(start, start + n):
        t = t0 + timedelta(milliseconds=k)
        out += [Sample(f"d{d:02d}.p{i:03d}", k + i * 1e-3, Quality.GOOD, t, t)
                for d in range(DEVICES) for i in range(POINTS)]
    return out


def client(broker: MosquittoServer) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{secrets.token_hex(3)}")
    c.username_pw_set(broker.username, broker.password)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


async def heatrec_round(node: EdgeNode, bus: SampleBus, sub: Subscriber, bursts: list[list[Sample]],
                        record: bool) -> float:
    """Points per second over the bursts; each burst waits in the node's bus queue before its clock starts."""
    elapsed, points = 0.0, 0
    sub.reset(record)
    for samples in bursts:
        base_metrics, base_messages = node.stats.metrics, node.stats.messages
        sub.mark()
        for s in samples:  # queued for the node before the clock starts: the drivers' part is not timed
            bus.publish(s)
        t0 = time.perf_counter()
        while node.stats.metrics < base_metrics + len(samples):
            await asyncio.sleep(0.0005)
        end = await asyncio.to_thread(sub.wait_more, node.stats.messages - base_messages)
        elapsed += end - t0
        points += len(samples)
    return points / elapsed


def bare_bytes_round(broker: MosquittoServer, sub: Subscriber, payloads: list[tuple[str, bytes]],
                     points: int) -> float:
    c = client(broker)
    try:
        sub.reset()
        t0 = time.perf_counter()
        for topic, payload in payloads:
            c.publish(topic, payload, qos=0)
        end = sub.wait(len(payloads))
    finally:
        c.disconnect()
        c.loop_stop()
    return points / (end - t0)


def bare_protobuf_round(broker: MosquittoServer, sub: Subscriber, pb2: ModuleType, samples: list[Sample],
                        aliases: dict[str, int]) -> float:
    """The same DDATA (same grouping: per drain, per device, at most METRICS_PER_MESSAGE) built with protobuf."""
    c = client(broker)
    try:
        sub.reset()
        seq, messages = 0, 0
        t0 = time.perf_counter()
        for start in range(0, len(samples), DRAIN_LIMIT):
            groups: dict[str, list[Sample]] = {}
            for s in samples[start:start + DRAIN_LIMIT]:
                groups.setdefault(s.point.split(".", 1)[0], []).append(s)
            for device, group in groups.items():
                for i in range(0, len(group), METRICS_PER_MESSAGE):
                    seq = (seq + 1) & 0xFF
                    p = pb2.Payload(timestamp=int(time.time() * 1000), seq=seq)
                    last_t, ms = None, 0
                    for s in group[i:i + METRICS_PER_MESSAGE]:
                        if s.source_time is not last_t:
                            last_t, ms = s.source_time, int(s.source_time.timestamp() * 1000)
                        m = p.metrics.add()
                        m.alias = aliases[s.point]
                        m.timestamp = ms
                        m.double_value = s.value
                    c.publish(TOPIC + device, p.SerializeToString(), qos=0)
                    messages += 1
        end = sub.wait(messages)
    finally:
        c.disconnect()
        c.loop_stop()
    return len(samples) / (end - t0)


def setup() -> tuple[Path, MosquittoServer, ModuleType]:
    """A scratch directory (readable by the broker's user), a private broker, the protobuf classes."""
    workdir = Path(tempfile.mkdtemp(prefix="heatrec-bench-sparkplug-"))
    workdir.chmod(0o755)
    broker = MosquittoServer(workdir / "mosquitto", free_port(), "bench", secrets.token_urlsafe(12),
                             persistence=False)
    broker.start()
    return workdir, broker, compile_proto(workdir / "pb2")


async def main(n_scans: int, rounds: int, n_bursts: int) -> None:
    if n_scans * DEVICES * POINTS > 100_000:
        raise SystemExit("--scans must keep a round within the node's bus queue (100,000 samples): at most 50")
    workdir, broker, pb2 = setup()
    load = os.getloadavg()
    sub = Subscriber(broker)
    bus = SampleBus()
    cfg = SparkplugConfig(url=f"mqtt://{broker.host}:{broker.port}", username=broker.username,
                          password=broker.password, group_id="bench", edge_node_id="node",
                          spool_dir=str(workdir / "node"))
    devices = plant()
    node = EdgeNode(cfg, devices, bus, device_states=lambda: {d.id: "connected" for d in devices})
    task = asyncio.create_task(node.run())
    ours: list[float] = []
    bare: list[float] = []
    proto: list[float] = []
    try:
        while node.stats.device_births < DEVICES:
            await asyncio.sleep(0.01)
        counter = 0
        await heatrec_round(node, bus, sub, [scans(n_scans, counter)], record=True)  # warm-up, and the payloads
        assert sub.record is not None
        payloads = sub.record * n_bursts  # bare bytes replays them
        for r in range(rounds):
            order = ["heatrec", "bytes", "protobuf"]
            order = order[r % 3:] + order[:r % 3]
            for side in order:
                bursts = []
                for _ in range(n_bursts):
                    counter += n_scans
                    bursts.append(scans(n_scans, counter))
                samples = [s for b in bursts for s in b]
                if side == "heatrec":
                    ours.append(await heatrec_round(node, bus, sub, bursts, record=False))
                elif side == "bytes":
                    bare.append(await asyncio.to_thread(bare_bytes_round, broker, sub, payloads, len(samples)))
                else:
                    proto.append(await asyncio.to_thread(bare_protobuf_round, broker, sub, pb2, samples,
                                                         node.aliases))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    h, b, p = statistics.median(ours), statistics.median(bare), statistics.median(proto)
    after = os.getloadavg()
    print(f"{DEVICES * POINTS} changing points x {n_scans} scans x {n_bursts} bursts = "
          f"{n_scans * DEVICES * POINTS * n_bursts:,} points per round, QoS 0, median of {rounds} rounds per side; "
          f"load {load[0]:.1f} before, {after[0]:.1f} after ({os.cpu_count()} cores)")
    print(f"{len(payloads)} DDATA messages per round, {sum(len(x) for _, x in payloads) / len(payloads):,.0f} "
          "bytes each on average")
    print(f"heatrec EdgeNode:          {h:,.0f} points/s   rounds: " + ", ".join(f"{x:,.0f}" for x in ours))
    print(f"bare paho + protobuf:      {p:,.0f} points/s   rounds: " + ", ".join(f"{x:,.0f}" for x in proto))
    print(f"bare paho, bytes ready:    {b:,.0f} points/s   rounds: " + ", ".join(f"{x:,.0f}" for x in bare))
    print(f"ratio vs bare+protobuf {h / p:.2f} (target >= 0.8); vs ready bytes {h / b:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=50, help="scans of all 2,000 points per round (default: "
                                                              "%(default)s)")
    parser.add_argument("--bursts", type=int, default=5, help="bursts of --scans per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side (default: %(default)s)")
    args = parser.parse_args()
    asyncio.run(main(args.scans, args.rounds, args.bursts))
