"""OPC UA subscriptions: 1,000 nodes changing at 10 Hz, heatrec's driver against a bare asyncua subscriber.

Run: .venv/bin/python bench/bench_opcua.py [--nodes 1000] [--hz 10] [--seconds 10]
An asyncua server in its own process holds `nodes` Double variables and writes every one of them
`hz` times a second, each write the next integer of a sequence. Each side subscribes to all nodes
(publishing interval 100 ms, queue size 10, server-side sampling on every change) for `seconds`,
one after the other: the bare side counts asyncua's data-change callbacks, heatrec counts the
samples its OpcUaDriver publishes. Dropped = sequence numbers that never arrived for a node between
the first and last one seen. The server's achieved update rate varies (it is Python, on the same
machine), so each side's figure is printed beside the changes the server made in its window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import time
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from asyncua import Client, Server, ua

from drivers.opcua import OpcUaDriver
from service.config import OpcUaDevice
from service.localservers import free_port
from service.model import Sample

NS_URI = "urn:heatrec:bench"


def serve(port: int, nodes: int, hz: float, ready: Any, ticks: Synchronized[int], stop: Any) -> None:
    """Server process: build the nodes, then write every node `hz` times a second until told to stop."""

    async def main() -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
        ns = await server.register_namespace(NS_URI)
        obj = await server.nodes.objects.add_object(ns, "bench")
        variables = [await obj.add_variable(f"ns={ns};s=v{i}", f"v{i}", 0.0) for i in range(nodes)]
        ids = [v.nodeid for v in variables]
        async with server:
            ready.set()
            period = 1 / hz
            next_tick = time.monotonic()
            n = 0
            while not stop.is_set():
                n += 1
                dv = ua.DataValue(ua.Variant(float(n), ua.VariantType.Double))
                for nid in ids:
                    await server.write_attribute_value(nid, dv)
                ticks.value = n
                next_tick += period
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    asyncio.run(main())


class Tally:
    """Counts notifications per node and the sequence numbers that never arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.produced = 0  # server updates (all nodes) during the counting window
        self.last: dict[str, float] = {}
        self.dropped = 0

    def see(self, key: str, value: float | None) -> None:
        self.count += 1
        if value is None:
            return
        prev = self.last.get(key)
        if prev is not None and value > prev + 1:
            self.dropped += int(value - prev - 1)
        self.last[key] = value


class TallySink(Tally):
    """A SampleSink feeding the tally."""

    def publish(self, sample: Sample) -> None:
        self.see(sample.point, sample.value)


class Handler:
    """asyncua subscription handler feeding a tally."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.tally.see(node.nodeid.Identifier, val)


async def bare_run(endpoint: str, nodes: int, seconds: float, ticks: Synchronized[int]) -> Tally:
    """Plain asyncua client: one subscription on every node, callbacks counted."""
    tally = Tally()
    async with Client(endpoint, timeout=30) as client:
        ns = await client.get_namespace_index(NS_URI)
        sub = await client.create_subscription(100, Handler(tally))
        await sub.subscribe_data_change([client.get_node(f"ns={ns};s=v{i}") for i in range(nodes)],
                                        queuesize=10, sampling_interval=0)
        await asyncio.sleep(1.0)  # initial values and warm-up
        start, tick0 = tally.count, ticks.value
        await asyncio.sleep(seconds)
        tally.count -= start
        tally.produced = (ticks.value - tick0) * nodes
        await sub.delete()
    return tally


async def heatrec_run(endpoint: str, nodes: int, seconds: float, ticks: Synchronized[int]) -> TallySink:
    """OpcUaDriver with subscribe = true on every node, samples counted."""
    sink = TallySink()
    device = OpcUaDevice.model_validate({
        "id": "bench", "protocol": "opcua", "endpoint": endpoint, "subscribe": True, "poll_interval_s": 0.1,
        "sampling_interval_s": 0.0001, "queue_size": 10, "timeout_s": 30,
        "points": [{"id": f"v{i}", "node": f"nsu={NS_URI};s=v{i}"} for i in range(nodes)]})
    task = asyncio.create_task(OpcUaDriver(device, sink).run())
    await asyncio.sleep(1.0)
    start, tick0 = sink.count, ticks.value
    await asyncio.sleep(seconds)
    sink.count -= start
    sink.produced = (ticks.value - tick0) * nodes
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return sink


async def main(nodes: int, hz: float, seconds: float) -> None:
    port = free_port()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    ticks = ctx.Value("l", 0)
    proc = ctx.Process(target=serve, args=(port, nodes, hz, ready, ticks, stop), daemon=True)
    proc.start()
    try:
        assert await asyncio.to_thread(ready.wait, 120), "server did not start"
        endpoint = f"opc.tcp://127.0.0.1:{port}"
        results = {}
        for name, run in (("bare asyncua", bare_run), ("heatrec", heatrec_run)):
            tally = await run(endpoint, nodes, seconds, ticks)
            results[name] = (tally.count / seconds, tally.dropped, tally.produced / seconds)
    finally:
        stop.set()
        proc.join(15)
        if proc.is_alive():
            proc.kill()
    print(f"{nodes} nodes, server asked for {hz:g} Hz, {seconds:g} s per side")
    for name, (per_s, dropped, produced) in results.items():
        print(f"{name:>13}: {per_s:,.0f} notifications/s of {produced:,.0f} changes/s the server made "
              f"({per_s / produced:.2f}), dropped {dropped}")
    (b, _, bp), (h, _, hp) = results["bare asyncua"], results["heatrec"]
    print(f"ratio of keeping up (received/made), heatrec to bare: {(h / hp) / (b / bp):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.nodes, args.hz, args.seconds))
