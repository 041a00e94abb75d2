"""The driver life cycle on virtual time against a scripted fake client: poll cadence, backoff and reconnect are
exact and instant here; the loopback tests (test_driver_modbus*.py) keep the wire honest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymodbus.exceptions import ConnectionException

from drivers.backoff import Backoff
from drivers.base import ConnectionState
from drivers.modbus import ModbusDriver, ModbusLinks
from service.clock import VirtualClock
from service.config import ModbusDevice
from service.model import Quality
from service.tasks import cancel_and_wait
from tests.drivers.conftest import RecordingSink


@dataclass
class Plant:
    """What the fake device does, and what the driver did to it (virtual times)."""

    clock: VirtualClock
    up: bool = True
    value: int = 700
    connects: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)


@dataclass
class _Response:
    registers: list[int]

    def isError(self) -> bool:  # pymodbus spells it so
        return False


class ScriptedClient:
    """The part of AsyncModbusTcpClient the driver uses, answering from `Plant`."""

    def __init__(self, plant: Plant) -> None:
        self._plant = plant
        self.connected = False

    async def connect(self) -> bool:
        self._plant.connects.append(self._plant.clock.monotonic())
        self.connected = self._plant.up
        return self.connected

    def close(self) -> None:
        self.connected = False

    async def read_input_registers(self, address: int, *, count: int, device_id: int) -> _Response:
        if not self._plant.up:
            self.connected = False
            raise ConnectionException("connection reset by peer")
        self._plant.reads.append(self._plant.clock.monotonic())
        return _Response([self._plant.value] * count)


DEVICE = ModbusDevice.model_validate({
    "id": "hp", "protocol": "modbus", "endpoint": "10.0.0.1:502", "poll_interval_s": 10.0, "timeout_s": 1.0,
    "points": [{"id": "supply", "address": 0, "function": "input", "type": "uint16", "scale": 0.1}]})


async def settle() -> None:
    """Let every task run until it waits on the clock again."""
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
async def rig() -> AsyncIterator[tuple[Plant, ModbusDriver, RecordingSink]]:
    clock = VirtualClock()
    plant = Plant(clock)
    sink = RecordingSink()
    links = ModbusLinks(client_factory=lambda host, **kw: ScriptedClient(plant))
    driver = ModbusDriver(DEVICE, sink, links=links, clock=clock, backoff=Backoff(1.0, 8.0, jitter=0.0))
    task = asyncio.create_task(driver.run())
    await settle()
    yield plant, driver, sink
    await cancel_and_wait(task)


async def advance(plant: Plant, seconds: float, step: float = 0.5) -> None:
    """Move virtual time on in steps, letting the driver act at each."""
    left = seconds
    while left > 1e-9:
        plant.clock.advance(min(step, left))
        left -= step
        await settle()


async def test_polls_follow_the_interval_on_virtual_time(rig: Any) -> None:
    plant, driver, sink = rig
    assert plant.reads == [0.0] and driver.state is ConnectionState.CONNECTED
    await advance(plant, 9.5)
    assert plant.reads == [0.0]
    await advance(plant, 0.5)
    await advance(plant, 20.0)
    assert plant.reads == [0.0, 10.0, 20.0, 30.0]
    assert [s.value for s in sink.of("hp.supply", Quality.GOOD)] == [70.0] * 4


async def test_a_lost_device_backs_off_exponentially_then_reconnects_and_resets(rig: Any) -> None:
    plant, driver, sink = rig
    plant.up = False
    await advance(plant, 10.0)  # the next poll finds the connection gone
    assert sink.quality("hp.supply") is Quality.BAD and driver.state is ConnectionState.BACKING_OFF
    await advance(plant, 1.0 + 2.0 + 4.0 + 8.0 + 8.0)
    # Attempts after 1, 2, 4, 8 s, then capped at 8 s (jitter off): exact on virtual time.
    assert plant.connects == [0.0, 11.0, 13.0, 17.0, 25.0, 33.0]
    plant.up = True
    await advance(plant, 8.0)
    assert plant.connects[-1] == 41.0 and driver.state is ConnectionState.CONNECTED
    assert sink.quality("hp.supply") is Quality.GOOD and driver.stats.reconnects == 1
    plant.up = False  # healthy once: the backoff starts again from its first step
    await advance(plant, 10.0 + 1.0)
    assert plant.connects[-1] == 52.0
