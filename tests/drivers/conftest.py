"""Driver test fixtures: real protocol peers on loopback, a recording sink and a deadline-bound wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiomqtt
import pytest
import pytest_asyncio
from asyncua import Server, ua
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.base import Driver
from service.localservers import free_port
from service.model import Quality, Sample

T = TypeVar("T")
WaitFor = Callable[..., Awaitable[None]]


# ---------------------------------------------------------------------- sink and waiting


class RecordingSink:
    """A SampleSink that keeps every sample, for assertions."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def publish(self, sample: Sample) -> None:
        self.samples.append(sample)

    def of(self, point: str, quality: Quality | None = None) -> list[Sample]:
        """Samples of one point, optionally of one quality, oldest first."""
        return [s for s in self.samples if s.point == point and (quality is None or s.quality is quality)]

    def latest(self, point: str) -> Sample | None:
        """The newest sample of a point."""
        found = self.of(point)
        return found[-1] if found else None

    def value(self, point: str) -> float | None:
        """Value of the newest sample of a point (which must exist)."""
        s = self.latest(point)
        assert s is not None, f"no sample of {point}"
        return s.value

    def quality(self, point: str) -> Quality | None:
        """Quality of the newest sample of a point."""
        s = self.latest(point)
        return s.quality if s else None


async def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0,
                    what: str = "") -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.01)


@pytest.fixture
def wait_for() -> WaitFor:
    """`await wait_for(predicate, timeout, what)`: wait on a condition with a deadline, never on luck."""
    return _wait_for


@pytest.fixture
def sink() -> RecordingSink:
    """A fresh recording sink."""
    return RecordingSink()


@pytest_asyncio.fixture
async def run_driver() -> AsyncIterator[Callable[[Driver[Any]], asyncio.Task[None]]]:
    """Start drivers as tasks; they are cancelled (and must stop cleanly) at teardown."""
    tasks: list[asyncio.Task[None]] = []

    def start(driver: Driver[Any]) -> asyncio.Task[None]:
        task = asyncio.create_task(driver.run(), name=f"driver-{driver.device_id}")
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


# ---------------------------------------------------------------------- Modbus


class ModbusPeer:
    """A pymodbus TCP server with a known layout; it counts requests and can clamp writes.

    Holding registers 0-49 and 60-99 exist, 50-59 answer ILLEGAL_ADDRESS; input registers 0-19;
    coils and discrete inputs 0-15.
    """

    INVALID_HOLDING = range(50, 60)

    def __init__(self, port: int, unit_id: int = 1) -> None:
        self.port, self.unit_id = port, unit_id
        self.requests: list[tuple[int, int, int]] = []  # (function code, address, count) as received
        self.clamp: dict[int, tuple[int, int]] = {}  # holding address -> (low, high) raw limits on writes
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen on 127.0.0.1:port."""
        holding = [SimData(0, count=50, values=0, datatype=DataType.REGISTERS),
                   SimData(60, count=40, values=0, datatype=DataType.REGISTERS)]
        inputs = [SimData(0, count=20, values=0, datatype=DataType.REGISTERS)]
        coils = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        discrete = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        device = SimDevice(self.unit_id, simdata=(coils, discrete, holding, inputs), action=self._action)
        self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port), trace_pdu=self._trace)
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def _trace(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests.append((pdu.function_code, getattr(pdu, "address", -1), getattr(pdu, "count", 0)))
        return pdu

    async def _action(self, function_code: int, start: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> None:
        if set_values is not None and function_code in (6, 16):
            for i, v in enumerate(set_values):
                low, high = self.clamp.get(address + i, (0, 0xFFFF))
                set_values[i] = min(max(int(v), low), high)  # a device that silently clamps
        return None

    def _block(self, kind: str) -> tuple[int, list[int]]:
        assert self._server is not None
        runtime = self._server.context.devices[self.unit_id]  # type: ignore[union-attr]
        start, _, registers, _ = runtime.block[kind]
        return start, registers

    def set_holding(self, address: int, registers: list[int]) -> None:
        """Put raw words into holding registers."""
        start, regs = self._block("h")
        regs[address - start:address - start + len(registers)] = registers

    def holding(self, address: int, count: int = 1) -> list[int]:
        """Raw words of holding registers."""
        start, regs = self._block("h")
        return list(regs[address - start:address - start + count])

    def set_input(self, address: int, registers: list[int]) -> None:
        """Put raw words into input registers."""
        start, regs = self._block("i")
        regs[address - start:address - start + len(registers)] = registers

    def set_coil(self, address: int, value: bool) -> None:
        """Set one coil (coils are packed 16 to a word)."""
        start, regs = self._block("c")
        word, bit = divmod(address, 16)
        if value:
            regs[word - start] |= 1 << bit
        else:
            regs[word - start] &= ~(1 << bit)

    def count(self, *function_codes: int) -> int:
        """How many requests with these function codes arrived."""
        return sum(1 for fc, _, _ in self.requests if fc in function_codes)


@pytest_asyncio.fixture
async def start_modbus_peer() -> AsyncIterator[Callable[[int], Awaitable[ModbusPeer]]]:
    """`await start_modbus_peer(port)`: a running Modbus peer, stopped at teardown."""
    peers: list[ModbusPeer] = []

    async def start(port: int) -> ModbusPeer:
        peer = ModbusPeer(port)
        await peer.start()
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        await peer.stop()


@pytest_asyncio.fixture
async def modbus_peer(start_modbus_peer: Callable[[int], Awaitable[ModbusPeer]]) -> ModbusPeer:
    """A running Modbus peer on a free port."""
    return await start_modbus_peer(free_port())


# ---------------------------------------------------------------------- a peer that never answers


class SilentPeer:
    """Accepts TCP connections and reads, but never answers: the worst kind of dead device.

    It keeps what each connection sent first (to tell a TLS ClientHello from a plain request);
    with `hang_up` it closes every connection after that first chunk.
    """

    def __init__(self, hang_up: bool = False) -> None:
        self.port = 0
        self.hang_up = hang_up
        self.first_bytes: list[bytes] = []
        self.connections = 0  # accepted so far
        self.open_connections = 0  # not yet closed by the client
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self.connections += 1
        self.open_connections += 1
        try:
            with contextlib.suppress(ConnectionError):
                first = await reader.read(4096)
                self.first_bytes.append(first)
                if self.hang_up:
                    writer.close()
                    return
                while await reader.read(4096):
                    pass
        finally:
            self.open_connections -= 1

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        # Let each handler see its connection close rather than be cancelled with the loop.
        pending = [t for t in self._handlers if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2)


@pytest_asyncio.fixture
async def silent_peer() -> AsyncIterator[SilentPeer]:
    """A listening endpoint that swallows requests."""
    peer = SilentPeer()
    await peer.start()
    yield peer
    await peer.stop()


@pytest_asyncio.fixture
async def hanging_up_peer() -> AsyncIterator[SilentPeer]:
    """A listening endpoint that records the first bytes of each connection, then hangs up."""
    peer = SilentPeer(hang_up=True)
    await peer.start()
    yield peer
    await peer.stop()


# ---------------------------------------------------------------------- OPC UA


class OpcUaPeer:
    """An asyncua Server in its own thread and event loop.

    asyncua needs seconds to build its address space, so the shared peer is built once per
    session; its own loop lets it outlive each test's loop.
    """

    NS_URI = "urn:heatrec:test"
    SOURCE_TIME = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __init__(self, port: int, extra_namespaces: int = 0, fillers: int = 0) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}"
        self.extra_namespaces = extra_namespaces
        self.fillers = fillers
        self.ns = -1
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"opcua-peer-{port}", daemon=True)
        self._server: Server | None = None
        self._nodes: dict[str, Any] = {}

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the peer's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        """Build the address space and listen."""
        self._thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        for i in range(self.extra_namespaces):  # shifts our namespace index, as a firmware update might
            await server.register_namespace(f"urn:heatrec:filler{i}")
        self.ns = await server.register_namespace(self.NS_URI)
        dev = await server.nodes.objects.add_object(self.ns, "dev")
        initial: dict[str, tuple[Any, ua.VariantType]] = {
            "temperature": (21.5, ua.VariantType.Double),
            "setpoint": (30.0, ua.VariantType.Double),
            "count": (7, ua.VariantType.Int32),
            "sensor_fault": (0.0, ua.VariantType.Double),
            "uncertain": (3.0, ua.VariantType.Double),
            "label": ("cdu", ua.VariantType.String),
        }
        for name, (value, vtype) in initial.items():
            node = await dev.add_variable(f"ns={self.ns};s=dev.{name}", name, ua.Variant(value, vtype))
            await node.set_writable()
            self._nodes[name] = node
        # Objects/Plant/cdu1/supply with numeric ids the server assigns: `fillers` objects created first
        # shift them, as a rebuilt address space would, while the browse path stays the same.
        for i in range(self.fillers):
            await server.nodes.objects.add_object(self.ns, f"filler{i}")
        plant = await server.nodes.objects.add_object(self.ns, "Plant")
        cdu = await plant.add_object(self.ns, "cdu1")
        supply = await cdu.add_variable(self.ns, "supply", ua.Variant(40.0, ua.VariantType.Double))
        await supply.set_writable()
        self._nodes["supply"] = supply
        await self._set("temperature", 21.5, ua.VariantType.Double, None, self.SOURCE_TIME)
        double = ua.VariantType.Double
        await self._set("sensor_fault", 0.0, double, ua.StatusCodes.BadSensorFailure, None)
        await self._set("uncertain", 3.0, double, ua.StatusCodes.UncertainLastUsableValue, None)
        await server.start()
        self._server = server

    async def _set(self, name: str, value: Any, vtype: ua.VariantType, status: int | None,
                   source_time: datetime | None) -> None:
        dv = ua.DataValue(ua.Variant(value, vtype), StatusCode=ua.StatusCode(status or ua.StatusCodes.Good),
                          SourceTimestamp=source_time)
        await self._nodes[name].write_value(dv)

    def set(self, name: str, value: Any, vtype: ua.VariantType = ua.VariantType.Double,
            status: int | None = None, source_time: datetime | None = None) -> None:
        """Change a variable from the server side."""
        self.call(self._set(name, value, vtype, status, source_time))

    def value(self, name: str) -> Any:
        """A variable's current value."""
        return self.call(self._nodes[name].read_value())

    def node(self, name: str) -> str:
        """The variable's node id with the namespace index."""
        return f"ns={self.ns};s=dev.{name}"

    def node_id(self, name: str) -> ua.NodeId:
        """The NodeId the server gave a variable."""
        return self._nodes[name].nodeid  # type: ignore[no-any-return]

    def nsu_node(self, name: str) -> str:
        """The variable's node id with the namespace URI (survives index changes)."""
        return f"nsu={self.NS_URI};s=dev.{name}"

    def stop(self) -> None:
        """Stop the server and its thread (again: no-op)."""
        if self._loop.is_closed():
            return
        if self._server is not None:
            self.call(self._server.stop())
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def new_opcua_peer() -> Iterator[Callable[..., OpcUaPeer]]:
    """`new_opcua_peer(port, extra_namespaces=0, fillers=0)`: an OPC UA peer, not started; stopped at teardown."""
    peers: list[OpcUaPeer] = []

    def make(port: int, extra_namespaces: int = 0, fillers: int = 0) -> OpcUaPeer:
        peer = OpcUaPeer(port, extra_namespaces, fillers)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.stop()


@pytest.fixture(scope="session")
def opcua_peer() -> Iterator[OpcUaPeer]:
    """One OPC UA server for the session's read-and-write tests (tests must not stop it)."""
    peer = OpcUaPeer(free_port())
    peer.start()
    yield peer
    peer.stop()


# ---------------------------------------------------------------------- MQTT


@pytest_asyncio.fixture
async def mqtt_publish(mosquitto: Any) -> AsyncIterator[Callable[[str, Any], Awaitable[None]]]:
    """`await mqtt_publish(topic, payload)` on the session broker (QoS 1, so it has arrived there)."""
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, username=mosquitto.username,
                              password=mosquitto.password) as client:

        async def publish(topic: str, payload: Any) -> None:
            await client.publish(topic, payload, qos=1)

        yield publish


@pytest.fixture
def topic_prefix() -> str:
    """A topic root no other test uses (the broker is shared by the whole session)."""
    return f"test/{uuid.uuid4().hex[:12]}"
