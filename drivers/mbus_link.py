"""The M-Bus driver's connections: a transparent gateway's TCP port or a serial master's tty.

The meters on one bus share one connection and take turns through its lock. Incoming bytes go to a buffer
that is emptied before each request, so a late answer to a timed-out request is never read as the answer
to the next. A serial master is a tty set raw to the device's baud rate, 8 data bits, its parity and one
stop bit (2400 8E1 by default) with termios, read through the event loop: no extra dependency, POSIX only.
"""

from __future__ import annotations

import asyncio
import os
import termios
from typing import Any, Protocol

from drivers.base import raise_if_cancelled, within
from drivers.config import MbusDevice
from drivers.errors import DriverConnectionError, DriverTimeout
from drivers.mbus_frame import Frame, FrameError, read_frame


class Writer(Protocol):
    """What a link writes frames to and aborts: an asyncio transport or a SerialPort."""

    def write(self, data: bytes) -> None:
        """Send bytes."""

    def abort(self) -> None:
        """Close at once."""


def tty_attributes(attrs: list[Any], baudrate: int, parity: str) -> list[Any]:
    """termios attributes for a raw M-Bus line: the baud rate, 8 data bits, the parity, 1 stop bit.

    Raw: no echo, no line editing, no translation. With parity, a byte that fails it arrives as 0 (INPCK),
    which the frame's checksum then refuses.
    """
    speed = getattr(termios, f"B{baudrate}")
    cflag = termios.CS8 | termios.CREAD | termios.CLOCAL
    if parity != "none":
        cflag |= termios.PARENB | (termios.PARODD if parity == "odd" else 0)
    return [termios.INPCK if parity != "none" else 0, 0, cflag, 0, speed, speed, attrs[6]]


class SerialPort:
    """A tty opened raw at the bus's settings; what it reads goes to the protocol given."""

    def __init__(self, path: str, baudrate: int, parity: str, protocol: asyncio.Protocol) -> None:
        self._loop = asyncio.get_running_loop()
        self._protocol = protocol
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            termios.tcsetattr(self._fd, termios.TCSANOW,
                              tty_attributes(termios.tcgetattr(self._fd), baudrate, parity))
            termios.tcflush(self._fd, termios.TCIOFLUSH)
        except (termios.error, OSError) as err:
            os.close(self._fd)
            raise OSError(f"{path}: cannot set {baudrate} baud, parity {parity}: {err}") from err
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as err:
            self._close(err)
            return
        if not data:
            self._close(None)
            return
        self._protocol.data_received(data)

    def write(self, data: bytes) -> None:
        """Send a frame; a frame is far smaller than the tty's output buffer."""
        if self._fd is None:
            raise OSError("the serial port is closed")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def abort(self) -> None:
        """Close the tty."""
        self._close(None)

    def _close(self, err: Exception | None) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self._loop.remove_reader(fd)
        os.close(fd)
        self._protocol.connection_lost(err)


class _Stream(asyncio.Protocol):
    """The gateway's bytes: a buffer that can be emptied before each request (late or stray bytes)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.received = 0  # bytes since the last discard: a timeout after some of them is a truncated frame
        self.arrived = asyncio.Event()
        self.closed = False
        self.transport: Writer | None = None

    def connection_made(self, transport: asyncio.BaseTransport | Writer) -> None:
        assert isinstance(transport, asyncio.Transport | SerialPort)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.arrived.set()

    def discard(self) -> None:
        """Forget whatever arrived unasked (a late answer to a timed-out request)."""
        self.buffer.clear()
        self.received = 0

    async def readexactly(self, n: int) -> bytes:
        """n bytes; IncompleteReadError when the connection closes first (the contract read_frame expects)."""
        while len(self.buffer) < n:
            if self.closed:
                raise asyncio.IncompleteReadError(bytes(self.buffer), n)
            self.arrived.clear()
            await self.arrived.wait()
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


class MbusLinks:
    """The bus connections of one owner (the service, a probe), one per endpoint (gateway or tty)."""

    def __init__(self) -> None:
        self._links: dict[str, MbusLink] = {}

    def acquire(self, device: MbusDevice) -> MbusLink:
        """The link to the device's endpoint, created on first use; every acquire is matched by a `release`."""
        link = self._links.get(device.endpoint)
        if link is None:
            link = self._links[device.endpoint] = MbusLink(self, device)
        link.users += 1
        return link

    def __len__(self) -> int:
        return len(self._links)

    def _forget(self, link: MbusLink) -> None:
        if self._links.get(link.endpoint) is link:
            del self._links[link.endpoint]


class MbusLink:
    """One connection to a bus (a gateway's TCP port or a serial master), shared by every meter on it."""

    def __init__(self, owner: MbusLinks, device: MbusDevice) -> None:
        self._owner = owner
        self.endpoint = device.endpoint
        self._serial = (device.serial_port, device.baudrate, device.parity) if device.serial_port else None
        self.lock = asyncio.Lock()  # one master on the bus: request and answer are never interleaved
        self.users = 0
        self._stream: _Stream | None = None
        self._connecting = asyncio.Lock()

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        return self._stream is not None and not self._stream.closed

    async def connect(self) -> None:
        """Connect, or re-connect a dropped connection."""
        async with self._connecting:
            if self.connected:
                return
            self.drop()
            loop = asyncio.get_running_loop()
            try:
                if self._serial is not None:
                    stream = _Stream()
                    stream.connection_made(SerialPort(*self._serial, stream))
                else:
                    host, _, port = self.endpoint.rpartition(":")
                    _, stream = await loop.create_connection(_Stream, host.strip("[]"), int(port))
            except OSError as err:
                raise DriverConnectionError(f"cannot open {self.endpoint}: {err}") from err
            self._stream = stream

    async def request(self, frame: bytes, timeout_s: float, *, answer: bool = True) -> Frame | None:
        """Send one frame and read the answer within timeout_s; the caller holds `lock`.

        DriverTimeout when nothing (or only part of a frame) came in time, FrameError for a bad frame,
        DriverConnectionError when the connection is gone.
        """
        stream = self._stream
        if stream is not None and stream.closed:
            raise DriverConnectionError(f"the connection to {self.endpoint} was lost")
        if stream is None or stream.transport is None:
            raise DriverConnectionError(f"not connected to {self.endpoint}")
        stream.discard()
        stream.transport.write(frame)
        if not answer:
            return None
        try:
            result = await within(timeout_s, read_frame(stream))
        except TimeoutError as err:
            if stream.received:
                raise FrameError("truncated", f"only {stream.received} bytes of a frame within {timeout_s} s") \
                    from err
            raise DriverTimeout(f"no answer within {timeout_s} s") from err
        except FrameError as err:
            if stream.closed:
                raise DriverConnectionError(f"{self.endpoint} closed the connection ({err})") from err
            raise
        raise_if_cancelled()
        return result

    def release(self) -> None:
        """A meter stops using the link; the last one closes the connection."""
        self.users -= 1
        if self.users <= 0:
            self._owner._forget(self)
            self.drop()

    def drop(self) -> None:
        """Close a broken connection (the next user re-connects)."""
        if self._stream is not None and self._stream.transport is not None:
            self._stream.transport.abort()
        self._stream = None
