"""One driver per device, chosen by the device's protocol."""

from __future__ import annotations

from drivers.backoff import Backoff
from drivers.base import Driver
from drivers.config import MbusDevice, ModbusDevice, MqttDevice, OpcUaDevice
from drivers.mbus import ExchangeSink, MbusDriver
from drivers.mbus_link import MbusLinks
from drivers.modbus import ModbusDriver, ModbusLinks
from drivers.mqtt import MqttDriver
from drivers.mqtt_serials import SerialMemory
from drivers.opcua import OpcUaDriver
from service.bus import SampleSink
from service.clock import SleepingClock

AnyDriver = Driver[OpcUaDevice] | Driver[ModbusDevice] | Driver[MqttDevice] | Driver[MbusDevice]


def create_driver(device: OpcUaDevice | ModbusDevice | MqttDevice | MbusDevice, sink: SampleSink, *,
                  backoff: Backoff | None = None, modbus_links: ModbusLinks | None = None,
                  clock: SleepingClock | None = None, mqtt_serials: SerialMemory | None = None,
                  mbus_links: MbusLinks | None = None, mbus_identities: SerialMemory | None = None,
                  on_meter_exchange: ExchangeSink | None = None) -> AnyDriver:
    """The generic driver for the device's protocol, publishing to `sink`; not started yet.

    Modbus devices built with the same `modbus_links` share one connection per endpoint (gateways); MQTT
    devices keep the meter serials they track in `mqtt_serials` (drivers.mqtt_serials.SerialFile). M-Bus meters
    behind one gateway share a connection through `mbus_links`, keep their identification numbers in
    `mbus_identities` and report a meter exchange to `on_meter_exchange`."""
    if isinstance(device, OpcUaDevice):
        return OpcUaDriver(device, sink, backoff=backoff, clock=clock)
    if isinstance(device, ModbusDevice):
        return ModbusDriver(device, sink, backoff=backoff, links=modbus_links, clock=clock)
    if isinstance(device, MqttDevice):
        return MqttDriver(device, sink, backoff=backoff, clock=clock, serials=mqtt_serials)
    if isinstance(device, MbusDevice):
        return MbusDriver(device, sink, backoff=backoff, links=mbus_links, clock=clock,
                          identities=mbus_identities, on_exchange=on_meter_exchange)
    raise TypeError(f"no driver for protocol {getattr(device, 'protocol', type(device).__name__)!r}")
