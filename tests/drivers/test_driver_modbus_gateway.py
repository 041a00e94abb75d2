"""Several unit ids behind one Modbus TCP gateway: one shared connection, per-unit failures, request pauses."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus import ModbusDriver, ModbusLinks
from service.config import ModbusDevice
from service.localservers import free_port
from service.model import Quality
from tests.drivers.conftest import RecordingSink, WaitFor

pytestmark = pytest.mark.integration  # a pymodbus server on loopback


class Gateway:
    """A pymodbus server answering for units 1 and 2 at once, and for unit 9 only after 2 s (a dead unit)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[int, float]] = []  # (unit id, loop time) of each request received
        self.server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen on 127.0.0.1:port."""
        units = [SimDevice(u, simdata=([SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                                       [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                                       [SimData(0, count=10, values=100 * u, datatype=DataType.REGISTERS)],
                                       [SimData(0, count=10, values=0, datatype=DataType.REGISTERS)]),
                           action=self._slow if u == 9 else None)
                 for u in (1, 2, 9)]
        self.server = ModbusTcpServer(units, address=("127.0.0.1", self.port), trace_pdu=self._trace)
        await self.server.serve_forever(background=True)

    async def _slow(self, *args: Any) -> None:
        await asyncio.sleep(2.0)

    def _trace(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests.append((pdu.dev_id, asyncio.get_running_loop().time()))
        return pdu

    @property
    def connections(self) -> int:
        """Client connections open now."""
        assert self.server is not None
        return len(self.server.active_connections)


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """A running gateway on a free port."""
    gw = Gateway(free_port())
    await gw.start()
    yield gw
    assert gw.server is not None
    await gw.server.shutdown()


def _value(sink: RecordingSink, point: str) -> float | None:
    latest = sink.latest(point)
    return latest.value if latest else None


def _device(dev_id: str, port: int, unit: int, **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate({
        "id": dev_id, "protocol": "modbus", "endpoint": f"127.0.0.1:{port}", "unit_id": unit,
        "poll_interval_s": 0.1, "timeout_s": 0.5, "backoff_initial_s": 0.2, "backoff_max_s": 0.5, **extra,
        "points": [{"id": "value", "address": 0, "function": "holding", "writable": True, "min": 0, "max": 1000}],
    })


async def test_units_behind_one_gateway_share_one_connection_and_a_dead_unit_stays_apart(
        gateway: Gateway, sink: RecordingSink, run_driver: Callable[..., Any], wait_for: WaitFor) -> None:
    links = ModbusLinks()  # the service owns one registry: every unit behind the gateway shares its link
    drivers = [ModbusDriver(_device(f"u{u}", gateway.port, u), sink, links=links) for u in (1, 2, 9)]
    for d in drivers:
        run_driver(d)
    await wait_for(lambda: _value(sink, "u1.value") == 100 and _value(sink, "u2.value") == 200, 5, "units 1 and 2")
    await wait_for(lambda: sink.quality("u9.value") is Quality.BAD, 5, "unit 9 BAD")
    assert gateway.connections == 1
    # Unit 9 keeps timing out and reconnecting; units 1 and 2 keep delivering on the same connection.
    good_before = len(sink.of("u1.value", Quality.GOOD))
    failures_before = drivers[2].stats.failures
    await wait_for(lambda: drivers[2].stats.failures >= failures_before + 2, 10, "unit 9 retried twice")
    assert len(sink.of("u1.value", Quality.GOOD)) > good_before
    assert not sink.of("u1.value", Quality.BAD) and not sink.of("u2.value", Quality.BAD)
    assert gateway.connections == 1
    # A write through the shared connection lands on the right unit only.
    result = await drivers[1].write("u2.value", 321)
    assert result.ok, result
    await wait_for(lambda: _value(sink, "u2.value") == 321, 5, "u2 polled at 321")
    assert sink.value("u1.value") == 100


async def test_request_pause_spaces_requests_on_the_connection(
        gateway: Gateway, sink: RecordingSink, run_driver: Callable[..., Any], wait_for: WaitFor) -> None:
    links = ModbusLinks()
    for u in (1, 2):
        run_driver(ModbusDriver(_device(f"u{u}", gateway.port, u, request_pause_s=0.15), sink, links=links))
    await wait_for(lambda: len(gateway.requests) >= 6, 10, "six requests")
    times = [t for _, t in gateway.requests[:6]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.14, gaps  # requests of both units are spaced, not just each unit's own
    assert {u for u, _ in gateway.requests[:6]} == {1, 2}


async def test_last_device_closes_the_shared_connection(gateway: Gateway, sink: RecordingSink,
                                                        wait_for: WaitFor) -> None:
    links = ModbusLinks()
    tasks = [asyncio.create_task(ModbusDriver(_device(f"u{u}", gateway.port, u), sink, links=links).run())
             for u in (1, 2)]
    await wait_for(lambda: sink.latest("u1.value") is not None and sink.latest("u2.value") is not None, 5,
                   "both units read")
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    n = len(sink.of("u2.value", Quality.GOOD))
    await wait_for(lambda: len(sink.of("u2.value", Quality.GOOD)) > n + 2, 5, "unit 2 still polled")
    assert gateway.connections == 1
    tasks[1].cancel()
    await asyncio.gather(tasks[1], return_exceptions=True)
    await wait_for(lambda: gateway.connections == 0, 5, "connection closed")
    assert len(links) == 0, "the owner's registry forgets a link nobody uses"


async def test_owners_never_share_a_connection(gateway: Gateway, sink: RecordingSink,
                                               run_driver: Callable[..., Any], wait_for: WaitFor) -> None:
    # Two services (or a probe beside a service) in one process: each owns its registry, so each its link.
    for u in (1, 2):
        run_driver(ModbusDriver(_device(f"u{u}", gateway.port, u), sink, links=ModbusLinks()))
    await wait_for(lambda: sink.latest("u1.value") is not None and sink.latest("u2.value") is not None, 5,
                   "both units read")
    assert gateway.connections == 2
