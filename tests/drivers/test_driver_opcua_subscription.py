"""OPC UA subscriptions: deadband, polling fallback when refused, and no pile of orphan sessions on reconnects."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

from drivers.base import ConnectionState
from drivers.opcua import OpcUaDriver
from service.config import OpcUaDevice
from service.localservers import free_port
from service.model import Quality
from tests.drivers.test_driver_mqtt_session import CuttableProxy

if TYPE_CHECKING:
    from conftest import OpcUaPeer, RecordingSink, WaitFor


def device(endpoint: str, points: list[dict[str, Any]], **kw: Any) -> OpcUaDevice:
    base: dict[str, Any] = {"id": "cdu", "protocol": "opcua", "endpoint": endpoint, "poll_interval_s": 0.1,
                            "timeout_s": 2.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "subscribe": True}
    return OpcUaDevice.model_validate({**base, **kw, "points": points})


async def test_deadband_hides_small_changes(opcua_peer: OpcUaPeer, sink: RecordingSink, wait_for: WaitFor,
                                            run_driver: Any) -> None:
    opcua_peer.set("setpoint", 30.0)
    points = [{"id": "setpoint", "node": opcua_peer.node("setpoint")}]
    drv = OpcUaDriver(device(opcua_peer.endpoint, points, deadband=1.0, sampling_interval_s=0.05, queue_size=4),
                      sink)
    run_driver(drv)
    await wait_for(lambda: sink.quality("cdu.setpoint") is Quality.GOOD, 10, "initial value")
    try:
        opcua_peer.set("setpoint", 30.4)  # within the deadband: not reported
        opcua_peer.set("setpoint", 31.5)  # beyond it (from 30.0): reported
        await wait_for(lambda: sink.of("cdu.setpoint")[-1].value == 31.5, 5, "the large change")
        assert [s.value for s in sink.of("cdu.setpoint")] == [30.0, 31.5]
    finally:
        opcua_peer.set("setpoint", 30.0)


async def test_refused_subscription_falls_back_to_polling(
        opcua_peer: OpcUaPeer, sink: RecordingSink, wait_for: WaitFor, run_driver: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    assert opcua_peer._server is not None
    iserver = opcua_peer._server.iserver
    limit = iserver.max_subscriptions
    iserver.max_subscriptions = 0  # the server answers BadTooManySubscriptions
    caplog.set_level(logging.INFO, logger="drivers.opcua")
    try:
        drv = OpcUaDriver(device(opcua_peer.endpoint, [{"id": "count", "node": opcua_peer.node("count")}]), sink)
        run_driver(drv)
        await wait_for(lambda: len(sink.of("cdu.count", Quality.GOOD)) >= 3, 10, "polled values")
    finally:
        iserver.max_subscriptions = limit
    assert drv.state is ConnectionState.CONNECTED and drv.stats.failures == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "drivers.opcua" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "polling" in warnings[0] and "BadTooManySubscriptions" in warnings[0]


async def test_lost_connections_leave_no_lasting_orphan_sessions(
        new_opcua_peer: Any, sink: RecordingSink, wait_for: WaitFor, run_driver: Any) -> None:
    peer: OpcUaPeer = new_opcua_peer(free_port())
    await asyncio.to_thread(peer.start)
    proxy = CuttableProxy("127.0.0.1", peer.port)
    await proxy.start()
    assert peer._server is not None
    sessions = peer._server.iserver._external_sessions
    try:
        drv = OpcUaDriver(device(f"opc.tcp://127.0.0.1:{proxy.port}",
                                 [{"id": "temperature", "node": peer.node("temperature")}], session_timeout_s=5),
                          sink)
        run_driver(drv)
        for cut in range(3):
            await wait_for(lambda: drv.state is ConnectionState.CONNECTED and sink.quality("cdu.temperature")
                           is Quality.GOOD, 10, f"connected before cut {cut}")
            # Sessions with subscriptions outlive their connection on the server (spec Part 4 6.7).
            proxy.cut()
            await wait_for(lambda: sink.quality("cdu.temperature") is Quality.BAD, 5, "BAD after the cut")
            proxy.cut_off = False
        await wait_for(lambda: drv.state is ConnectionState.CONNECTED, 10, "connected after the last cut")
        assert len(sessions) >= 2  # the orphans exist for a while...
        await wait_for(lambda: len(sessions) == 1, 15, "orphans expired")  # ...but not for long
        peer.set("temperature", 26.0)
        await wait_for(lambda: sink.of("cdu.temperature")[-1].value == 26.0, 5, "the live session still works")
    finally:
        await proxy.stop()
