"""OPC UA driver against a real asyncua server on loopback: quality, timestamps, re-creation, writes."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest
from asyncua import ua

from drivers.base import ConnectionState
from drivers.errors import DriverError
from drivers.opcua import OpcUaDriver, parse_node, quality_of
from service.config import OpcUaDevice
from service.localservers import free_port
from service.model import Quality

if TYPE_CHECKING:
    from conftest import OpcUaPeer, RecordingSink, WaitFor


def device(endpoint: str, points: list[dict[str, Any]], **kw: Any) -> OpcUaDevice:
    base: dict[str, Any] = {"id": "cdu", "protocol": "opcua", "endpoint": endpoint, "poll_interval_s": 0.1,
                            "timeout_s": 1.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
    return OpcUaDevice.model_validate({**base, **kw, "points": points})


def test_node_strings_parse() -> None:
    assert parse_node("ns=2;s=cdu1.flow") == (None, "ns=2;s=cdu1.flow")
    assert parse_node("nsu=urn:x:y;s=cdu1.flow") == ("urn:x:y", "s=cdu1.flow")
    with pytest.raises(ValueError):
        parse_node("nsu=urn:x")
    with pytest.raises(Exception):  # noqa: B017 - asyncua's own parse error
        parse_node("garbage")


def test_status_severity_maps_to_quality() -> None:
    assert quality_of(ua.StatusCode(ua.StatusCodes.Good)) is Quality.GOOD
    assert quality_of(ua.StatusCode(ua.StatusCodes.UncertainInitialValue)) is Quality.UNCERTAIN
    assert quality_of(ua.StatusCode(ua.StatusCodes.BadCommunicationError)) is Quality.BAD


def test_bad_node_and_half_security_are_refused(sink: RecordingSink) -> None:
    with pytest.raises(DriverError, match="bad node"):
        OpcUaDriver(device("opc.tcp://127.0.0.1:1", [{"id": "x", "node": "rubbish"}]), sink)
    with pytest.raises(ValueError, match="security_mode"):  # a policy without a mode is refused at load
        device("opc.tcp://127.0.0.1:1", [{"id": "x", "node": "i=85"}], security_policy="Basic256Sha256")


async def test_values_quality_and_timestamps_arrive(opcua_peer: OpcUaPeer, sink: RecordingSink,
                                                    wait_for: WaitFor, run_driver: Any) -> None:
    points = [{"id": "temperature", "node": opcua_peer.node("temperature")},
              {"id": "count", "node": opcua_peer.nsu_node("count")},
              {"id": "fault", "node": opcua_peer.node("sensor_fault")},
              {"id": "uncertain", "node": opcua_peer.node("uncertain")},
              {"id": "label", "node": opcua_peer.node("label")},
              {"id": "missing", "node": f"ns={opcua_peer.ns};s=dev.nothing"},
              {"id": "foreign", "node": "nsu=urn:not-here;s=x"}]
    drv = OpcUaDriver(device(opcua_peer.endpoint, points), sink)
    run_driver(drv)
    await wait_for(lambda: all(sink.latest(f"cdu.{p}") for p in ("temperature", "count", "fault", "uncertain",
                                                                   "missing", "foreign")))
    temperature = sink.latest("cdu.temperature")
    assert temperature is not None and temperature.quality is Quality.GOOD and temperature.value == 21.5
    assert temperature.source_time == opcua_peer.SOURCE_TIME  # the server's, not ours
    assert temperature.receive_time > temperature.source_time
    assert sink.value("cdu.count") == 7.0 and sink.quality("cdu.count") is Quality.GOOD
    assert sink.quality("cdu.fault") is Quality.BAD and sink.value("cdu.fault") is None
    assert sink.quality("cdu.uncertain") is Quality.UNCERTAIN and sink.value("cdu.uncertain") == 3.0
    assert sink.quality("cdu.missing") is Quality.BAD  # BadNodeIdUnknown for this point only
    assert sink.quality("cdu.foreign") is Quality.BAD
    assert sink.of("cdu.label") == []  # text is not a sample
    assert drv.state is ConnectionState.CONNECTED


async def test_write_then_read_back_in_the_nodes_type(opcua_peer: OpcUaPeer, sink: RecordingSink,
                                                      run_driver: Any) -> None:
    points = [{"id": "setpoint", "node": opcua_peer.node("setpoint"), "writable": True, "min": 20, "max": 45},
              {"id": "count", "node": opcua_peer.node("count"), "writable": True, "unbounded_writes": True},
              {"id": "temperature", "node": opcua_peer.node("temperature")}]
    drv = OpcUaDriver(device(opcua_peer.endpoint, points), sink)
    run_driver(drv)
    async with asyncio.timeout(10):
        await drv.wait_for_state(ConnectionState.CONNECTED)
    result = await drv.write("cdu.setpoint", 32.5)
    assert result.status == "ok" and result.readback == 32.5, result
    assert opcua_peer.value("setpoint") == 32.5
    result = await drv.write("cdu.count", 11.4)  # an Int32 node gets an Int32, rounded
    assert result.status == "ok" and result.written == 11 and result.readback == 11, result
    assert opcua_peer.value("count") == 11

    for point_id, value in (("cdu.setpoint", 50.0), ("cdu.setpoint", 19.0), ("cdu.temperature", 1.0)):
        rejected = await drv.write(point_id, value)
        assert rejected.status == "rejected", rejected
    assert opcua_peer.value("setpoint") == 32.5  # the server never saw the rejected values


async def test_subscription_delivers_changes(opcua_peer: OpcUaPeer, sink: RecordingSink, wait_for: WaitFor,
                                             run_driver: Any) -> None:
    points = [{"id": "uncertain", "node": opcua_peer.node("uncertain")},
              {"id": "missing", "node": f"ns={opcua_peer.ns};s=dev.nothing"}]
    drv = OpcUaDriver(device(opcua_peer.endpoint, points, subscribe=True), sink)
    run_driver(drv)
    await wait_for(lambda: sink.quality("cdu.uncertain") is Quality.UNCERTAIN, timeout=10)
    assert sink.quality("cdu.missing") is Quality.BAD  # the server refused to monitor it
    opcua_peer.set("uncertain", 4.25)
    await wait_for(lambda: sink.value("cdu.uncertain") == 4.25, what="the change arrives")
    assert sink.quality("cdu.uncertain") is Quality.GOOD
    opcua_peer.set("uncertain", 3.0, status=ua.StatusCodes.UncertainLastUsableValue)  # leave it as found


async def test_restarted_server_is_reconnected_and_nodes_re_resolved(
        new_opcua_peer: Any, sink: RecordingSink, wait_for: WaitFor, run_driver: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    first: OpcUaPeer = new_opcua_peer(port)
    await asyncio.to_thread(first.start)
    points = [{"id": "temperature", "node": first.nsu_node("temperature")}]
    drv = OpcUaDriver(device(first.endpoint, points), sink)
    caplog.set_level(logging.INFO, logger="drivers.opcua")
    run_driver(drv)
    await wait_for(lambda: sink.quality("cdu.temperature") is Quality.GOOD, timeout=10)

    await asyncio.to_thread(first.stop)
    await wait_for(lambda: sink.quality("cdu.temperature") is Quality.BAD, what="BAD after the stop")
    await wait_for(lambda: drv.stats.failures >= 3 and drv.state is ConnectionState.BACKING_OFF)
    mine = [r for r in caplog.records if r.name == "drivers.opcua"]
    assert [r.levelno for r in mine].count(logging.WARNING) == 1

    # A new server instance whose namespace index moved from 2 to 4: only re-resolving finds the node.
    second: OpcUaPeer = new_opcua_peer(port, extra_namespaces=2)
    await asyncio.to_thread(second.start)
    assert second.ns != first.ns
    second.set("temperature", 24.0)
    await wait_for(lambda: sink.value("cdu.temperature") == 24.0, timeout=10, what="GOOD after the restart")
    assert sink.quality("cdu.temperature") is Quality.GOOD and drv.stats.reconnects == 1
    assert sum("recovered" in r.getMessage() for r in caplog.records if r.name == "drivers.opcua") == 1
