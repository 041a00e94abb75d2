"""MQTT telegrams parsed per second: heatrec's driver against a bare paho-mqtt subscriber, same broker.

Run: .venv/bin/python bench/bench_mqtt.py [--telegrams 20000] [--rounds 3]
Starts its own Mosquitto on a free loopback port. Each side first connects once with a persistent
session (fixed client id, clean session off, QoS 1) and leaves; then N heat-meter telegrams (JSON,
six values and a timestamp) are published at QoS 1 and queued by the broker; then the subscriber
connects again and is timed from connect until the N-th telegram is handled. The subscriber is
the bottleneck, not the publisher. heatrec: MqttDriver extracting six JSON paths and the source
time into six samples per telegram (decoded on paho's network thread, published on the event
loop). Baseline: a paho-mqtt client (its own network thread) whose on_message does json.loads of
each payload and nothing else. Target ratio >= 0.7. Medians of the rounds (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from drivers.base import ConnectionState
from drivers.mqtt import MqttDriver
from service.config import MqttDevice
from service.localservers import MosquittoServer, free_port
from service.model import Sample

FIELDS = ("energy_gj", "volume_m3", "power_kw", "flow_m3h", "flow_temperature_c", "return_temperature_c")


def telegram(i: int) -> bytes:
    """One heat-meter telegram as an M-Bus gateway publishes it."""
    doc: dict[str, Any] = {f: round(i * 0.001 + k, 3) for k, f in enumerate(FIELDS)}
    doc["time"] = datetime.now(UTC).isoformat()
    doc["serial"] = "71234567"
    return json.dumps(doc).encode()


def publish_all(broker: MosquittoServer, topic: str, n: int) -> None:
    """Publish n telegrams at QoS 1 and return when the broker has acknowledged every one."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{secrets.token_hex(4)}")
    client.username_pw_set(broker.username, broker.password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = [client.publish(topic, telegram(i), qos=1) for i in range(n)]
    infos[-1].wait_for_publish(120)
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


class Counter:
    """SampleSink that fires an event at a target count."""

    def __init__(self, target: int) -> None:
        self.count, self.target = 0, target
        self.done = asyncio.Event()

    def publish(self, sample: Sample) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()


async def heatrec_round(broker: MosquittoServer, n: int) -> float:
    """Telegrams per second through MqttDriver, draining n queued telegrams."""
    topic, client_id = f"bench/heatrec/{secrets.token_hex(4)}", f"bench-heatrec-{secrets.token_hex(4)}"
    device = MqttDevice.model_validate({
        "id": "meter", "protocol": "mqtt", "endpoint": broker.url, "username": broker.username,
        "password": broker.password, "client_id": client_id, "qos": 1,
        "points": [{"id": f.split("_")[0] + str(k), "topic": topic, "json_path": f"$.{f}", "timestamp_path": "$.time"}
                   for k, f in enumerate(FIELDS)]})
    first = MqttDriver(device, Counter(1))
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(first.wait_for_state(ConnectionState.CONNECTED), 10)  # session and subscription exist
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(publish_all, broker, topic, n)
    sink = Counter(n * len(FIELDS))
    driver = MqttDriver(device, sink)
    t0 = time.perf_counter()
    task = asyncio.create_task(driver.run())
    await asyncio.wait_for(sink.done.wait(), 300)
    elapsed = time.perf_counter() - t0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert driver.stats.malformed_messages == 0
    return n / elapsed


def bare_round(broker: MosquittoServer, n: int) -> float:
    """Telegrams per second through a bare paho-mqtt subscriber, draining n queued telegrams."""
    topic, client_id = f"bench/bare/{secrets.token_hex(4)}", f"bench-bare-{secrets.token_hex(4)}"
    subscribed = threading.Event()
    done = threading.Event()
    count = 0

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(topic, qos=1)

    def on_subscribe(*args: Any) -> None:
        subscribed.set()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        nonlocal count
        json.loads(message.payload)
        count += 1
        if count >= n:
            done.set()

    def client() -> paho.Client:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.username_pw_set(broker.username, broker.password)
        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        return c

    c = client()
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert subscribed.wait(10)
    c.disconnect()
    c.loop_stop()
    publish_all(broker, topic, n)
    c = client()
    t0 = time.perf_counter()
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert done.wait(300)
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return n / elapsed


def start_broker() -> tuple[MosquittoServer, Path]:
    """A private broker in a scratch directory (readable by the broker's own user)."""
    workdir = Path(tempfile.mkdtemp(prefix="heatrec-bench-mqtt-"))
    workdir.chmod(0o755)
    broker = MosquittoServer(workdir / "mosquitto", free_port(), "bench", secrets.token_urlsafe(12),
                             persistence=False)
    broker.start()
    return broker, workdir


async def main(n: int, rounds: int) -> None:
    broker, workdir = start_broker()
    try:
        bare, ours = [], []
        for _ in range(rounds):  # alternating, so machine load hits both sides alike
            bare.append(await asyncio.to_thread(bare_round, broker, n))
            ours.append(await heatrec_round(broker, n))
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    # Medians: the machine is shared, and a round that another process slowed is not the driver's doing.
    b, h = statistics.median(bare), statistics.median(ours)
    print(f"{n} telegrams of {len(FIELDS)} values each, QoS 1, median of {rounds} rounds per side")
    print(f"bare paho-mqtt (json.loads only): {b:,.0f} telegrams/s   rounds: "
          + ", ".join(f"{x:,.0f}" for x in bare))
    print(f"heatrec MqttDriver ({len(FIELDS)} samples each): {h:,.0f} telegrams/s   rounds: "
          + ", ".join(f"{x:,.0f}" for x in ours))
    print(f"ratio {h / b:.2f} (target >= 0.7)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--telegrams", type=int, default=20000, help="telegrams per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (default: %(default)s)")
    args = parser.parse_args()
    asyncio.run(main(args.telegrams, args.rounds))
