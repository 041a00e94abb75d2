"""OPC UA points addressed by browse path: resolved on every connect, so a rebuilt server is found again."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

from drivers.base import ConnectionState
from drivers.opcua import OpcUaDriver, parse_browse_path
from service.config import ConfigError, OpcUaDevice, parse_config
from service.localservers import free_port
from service.model import Quality

if TYPE_CHECKING:
    from conftest import OpcUaPeer, RecordingSink, WaitFor


def device(endpoint: str, points: list[dict[str, Any]], **kw: Any) -> OpcUaDevice:
    base: dict[str, Any] = {"id": "cdu", "protocol": "opcua", "endpoint": endpoint, "poll_interval_s": 0.1,
                            "timeout_s": 1.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
    return OpcUaDevice.model_validate({**base, **kw, "points": points})


def supply_path(peer: OpcUaPeer, leaf: str = "supply") -> str:
    return f"0:Objects/{peer.ns}:Plant/{peer.ns}:cdu1/{peer.ns}:{leaf}"


@pytest.mark.parametrize(("point", "where", "words"), [
    ({"node": "ns=2;s=x", "browse_path": "0:Objects/2:x"}, "points[0].browse_path:", "either node or browse_path"),
    ({}, "points[0]:", "needs node or browse_path"),
    ({"browse_path": "0:Objects/Plant"}, "points[0].browse_path:", "'Plant' is not index:BrowseName"),
    ({"browse_path": "0:Objects/x:Plant"}, "points[0].browse_path:", "is not index:BrowseName"),
    ({"browse_path": "0:Objects/2:"}, "points[0].browse_path:", "is not index:BrowseName"),
])
def test_exactly_one_address_and_the_field_is_named(point: dict[str, Any], where: str, words: str) -> None:
    doc = {"devices": [{"id": "cdu", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
                        "points": [{"id": "a", **point}]}]}
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, "plant.toml")
    assert f"devices[0].{where}" in str(exc.value) and words in str(exc.value), str(exc.value)


def test_browse_paths_parse() -> None:
    names = parse_browse_path("0:Objects/2:Plant/12:supply temperature")
    assert [(n.NamespaceIndex, n.Name) for n in names] == [(0, "Objects"), (2, "Plant"), (12, "supply temperature")]


async def test_browse_path_points_read_and_write(opcua_peer: OpcUaPeer, sink: RecordingSink, wait_for: WaitFor,
                                                 run_driver: Any, caplog: pytest.LogCaptureFixture) -> None:
    points = [{"id": "supply", "browse_path": supply_path(opcua_peer), "writable": True, "unbounded_writes": True},
              {"id": "missing", "browse_path": supply_path(opcua_peer, "nothing_here")},
              {"id": "temperature", "node": opcua_peer.node("temperature")}]
    drv = OpcUaDriver(device(opcua_peer.endpoint, points), sink)
    caplog.set_level(logging.INFO, logger="drivers.opcua")
    run_driver(drv)
    await wait_for(lambda: sink.quality("cdu.supply") is Quality.GOOD, timeout=10)
    await wait_for(lambda: len(sink.of("cdu.missing", Quality.BAD)) >= 3, what="several polls")
    assert sink.value("cdu.supply") == opcua_peer.value("supply") and sink.value("cdu.temperature") == 21.5
    assert sink.of("cdu.missing", Quality.GOOD) == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "drivers.opcua" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nothing_here" in warnings[0], warnings

    before = opcua_peer.value("supply")
    try:
        result = await drv.write("supply", 42.5)
        assert result.ok and opcua_peer.value("supply") == 42.5
    finally:
        opcua_peer.set("supply", before)


async def test_browse_paths_are_resolved_again_after_a_server_restart(
        new_opcua_peer: Any, sink: RecordingSink, wait_for: WaitFor, run_driver: Any) -> None:
    port = free_port()
    first: OpcUaPeer = new_opcua_peer(port)
    await asyncio.to_thread(first.start)
    drv = OpcUaDriver(device(first.endpoint, [{"id": "supply", "browse_path": supply_path(first)}]), sink)
    run_driver(drv)
    await wait_for(lambda: sink.quality("cdu.supply") is Quality.GOOD, timeout=10)
    assert sink.value("cdu.supply") == 40.0
    old_node = first.node_id("supply")

    await asyncio.to_thread(first.stop)
    await wait_for(lambda: sink.quality("cdu.supply") is Quality.BAD, what="BAD after the stop")
    await wait_for(lambda: drv.state is ConnectionState.BACKING_OFF, what="backing off")

    # The rebuilt server gives the same path a different NodeId: only re-resolving finds it.
    second: OpcUaPeer = new_opcua_peer(port, fillers=3)
    await asyncio.to_thread(second.start)
    assert second.node_id("supply") != old_node and supply_path(second) == supply_path(first)
    second.set("supply", 55.0)
    await wait_for(lambda: sink.value("cdu.supply") == 55.0, timeout=10, what="the new node's value")
    assert sink.quality("cdu.supply") is Quality.GOOD and drv.stats.reconnects == 1
