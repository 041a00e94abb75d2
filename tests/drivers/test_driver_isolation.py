"""Per-device isolation: dead and silent devices of every protocol never delay a healthy one."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from drivers import create_driver
from drivers.mqtt import MqttDriver
from drivers.opcua import OpcUaDriver
from service.config import ModbusDevice, MqttDevice, OpcUaDevice
from service.localservers import free_port
from service.model import Quality

if TYPE_CHECKING:
    from conftest import ModbusPeer, RecordingSink, SilentPeer, WaitFor

FAST = {"poll_interval_s": 0.05, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}


def settings(id: str, endpoint: str, timeout_s: float, point: dict[str, Any]) -> dict[str, Any]:
    return {"id": id, "endpoint": endpoint, "timeout_s": timeout_s, **FAST, "points": [{"id": "t", **point}]}


def modbus(id: str, port: int, timeout_s: float) -> ModbusDevice:
    return ModbusDevice(protocol="modbus", **settings(id, f"127.0.0.1:{port}", timeout_s, {"address": 0}))


def opcua(id: str, port: int, timeout_s: float) -> OpcUaDevice:
    return OpcUaDevice(protocol="opcua",
                       **settings(id, f"opc.tcp://127.0.0.1:{port}", timeout_s, {"node": "ns=2;s=t"}))


def mqtt(id: str, port: int, timeout_s: float) -> MqttDevice:
    return MqttDevice(protocol="mqtt",
                      **settings(id, f"mqtt://127.0.0.1:{port}", timeout_s, {"topic": "a/b"}))


async def test_dead_devices_do_not_delay_a_healthy_one(modbus_peer: ModbusPeer, silent_peer: SilentPeer,
                                                       sink: RecordingSink, wait_for: WaitFor,
                                                       run_driver: Any) -> None:
    devices = [modbus("healthy", modbus_peer.port, 0.5),
               modbus("silent_modbus", silent_peer.port, 1.0),
               modbus("dead_modbus", free_port(), 1.0),  # nothing listens there
               opcua("silent_opcua", silent_peer.port, 1.0),
               mqtt("silent_mqtt", silent_peer.port, 1.0)]
    modbus_peer.set_holding(0, [7])
    for device in devices:
        run_driver(create_driver(device, sink))
    # Run through at least one full timeout of every dead device.
    await wait_for(lambda: all(sink.quality(f"{d.id}.t") is Quality.BAD for d in devices[1:]), timeout=5,
                   what="every dead device reported BAD")
    await wait_for(lambda: len(sink.of("healthy.t", Quality.GOOD)) >= 30, timeout=5)
    good = sink.of("healthy.t", Quality.GOOD)
    gaps = [(b.receive_time - a.receive_time).total_seconds() for a, b in itertools.pairwise(good)]
    # 0.05 s polls; a driver stuck behind a 1 s timeout would show gaps of a second.
    assert max(gaps) < 0.3, max(gaps)
    assert all(s.value == 7 for s in good)


async def test_a_silent_broker_or_server_leaks_no_connections(silent_peer: SilentPeer, sink: RecordingSink,
                                                              wait_for: WaitFor, run_driver: Any) -> None:
    mqtt_driver = MqttDriver(mqtt("m", silent_peer.port, 0.2), sink)
    opcua_driver = OpcUaDriver(opcua("o", silent_peer.port, 0.2), sink)
    run_driver(mqtt_driver)
    run_driver(opcua_driver)
    await wait_for(lambda: mqtt_driver.stats.failures >= 4 and opcua_driver.stats.failures >= 4, timeout=10)
    # Every timed-out attempt closed its socket: at most the two current attempts are open.
    await wait_for(lambda: silent_peer.open_connections <= 2, timeout=2,
                   what=f"sockets closed ({silent_peer.open_connections}/{silent_peer.connections} open)")
