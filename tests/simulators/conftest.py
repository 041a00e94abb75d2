"""Fixtures for the simulator tests: plant configs, a virtual clock, a cuttable TCP proxy, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from service.clock import VirtualClock
from service.config import SimCdu, SimHeatMeter, SimHeatPump, SimulationConfig

Eventually = Callable[..., Awaitable[Any]]


@pytest.fixture
def clock() -> VirtualClock:
    """Virtual time starting 2025-01-01T00:00:00Z."""
    return VirtualClock()


@pytest.fixture
def plant_config() -> Callable[..., SimulationConfig]:
    """Factory: one CDU, one heat pump, one meter on ephemeral loopback ports; keyword overrides."""

    def make(*, cdus: bool = True, heat_pumps: bool = True, meters: bool = True,
             broker: str = "mqtt://127.0.0.1:1", cdu: dict[str, Any] | None = None,
             heat_pump: dict[str, Any] | None = None, meter: dict[str, Any] | None = None,
             **top: Any) -> SimulationConfig:
        cdu_keys = {"id": "cdu1", "endpoint": "opc.tcp://127.0.0.1:0", **(cdu or {})}
        hp_keys = {"id": "hp1", "endpoint": "127.0.0.1:0", **(heat_pump or {})}
        return SimulationConfig(
            mqtt_broker=broker,
            cdus=[SimCdu(**cdu_keys)] if cdus else [],
            heat_pumps=[SimHeatPump(**hp_keys)] if heat_pumps else [],
            heat_meters=[SimHeatMeter(id="meter1", **(meter or {}))] if meters else [],
            **top,
        )

    return make


@pytest.fixture
def eventually() -> Eventually:
    """`await eventually(check, within=5)`: poll a (possibly async) predicate until true or fail."""

    async def wait(check: Callable[[], Any], within: float = 5.0, interval: float = 0.02,
                   message: str = "condition") -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if loop.time() > deadline:
                pytest.fail(f"{message} not reached within {within} s")
            await asyncio.sleep(interval)

    return wait


def listening_socket() -> socket.socket:
    """A socket listening on a free loopback port, to make that port 'already in use'."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.fixture
def busy_port() -> Any:
    """A loopback port some other process is listening on for the duration of the test."""
    s = listening_socket()
    yield s.getsockname()[1]
    s.close()


class TcpProxy:
    """Forwards a loopback port to a target; `cut()` drops the listener and every connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (again on the same port after a cut, so the client sees the 'broker come back')."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and reset every forwarded connection, like a broker that died."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()


@pytest.fixture
async def broker_proxy(mosquitto: Any) -> AsyncIterator[TcpProxy]:
    """A started TcpProxy in front of the session Mosquitto."""
    proxy = TcpProxy(mosquitto.host, mosquitto.port)
    await proxy.start()
    yield proxy
    await proxy.cut()
