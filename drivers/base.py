"""What every protocol driver shares: the connection lifecycle, samples, staleness and checked writes.

A subclass supplies four hooks: `_connect` (create a fresh client and register its cleanup),
`_serve` (read or receive until something fails), `_write_and_read_back` and `_tolerance`. The base
class turns any failure into BAD samples, one warning, a jittered backoff and a brand-new connection.
Over 400 lines because that life cycle, staleness and the checked write are one state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from itertools import repeat
from typing import ClassVar, Generic, Literal, TypeVar

from drivers.backoff import Backoff
from drivers.config import MbusDevice, ModbusDevice, MqttDevice, OpcUaDevice, PointBase
from drivers.errors import CodecError, DeviceRefused, DriverError, DriverTimeout, WriteRejected
from service.bus import SampleSink
from service.clock import RealClock, SleepingClock
from service.model import Quality, Sample, utcnow

DeviceT = TypeVar("DeviceT", OpcUaDevice, ModbusDevice, MqttDevice, MbusDevice)
T = TypeVar("T")
# rejected: refused before anything was sent (envelope, type, unknown point); refused: sent, and the device said no.
WriteStatus = Literal["ok", "rejected", "refused", "mismatch", "timeout", "error"]


class ConnectionState(str, Enum):  # noqa: UP042 - the contract names (str, Enum)
    """Where a driver's connection is in its lifecycle."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of one write: what was asked, what went on the wire, what the device reports back."""

    point: str
    status: WriteStatus
    requested: float
    written: float | None = None
    readback: float | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the device holds the written value."""
        return self.status == "ok"


@dataclass(slots=True)
class DriverStats:
    """Counters for metrics; they only ever grow."""

    reads: int = 0  # successful read requests (polled) or received messages (MQTT)
    read_errors: int = 0  # reads answered with an error, or values that could not be decoded
    malformed_messages: int = 0  # MQTT payloads that yielded no value
    failures: int = 0  # connections that failed or were lost
    reconnects: int = 0  # connections re-established after a failure
    samples: int = 0  # samples handed to the sink
    writes: int = 0
    write_failures: int = 0


def describe(err: BaseException) -> str:
    """One line naming an error and, when translated, the library error underneath."""
    text = f"{type(err).__name__}: {err}"
    cause = err.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    Python 3.11's asyncio.wait_for returns the result when the awaited future completes in the same
    loop turn as a cancel, and the cancel is lost (CPython gh-86296); pymodbus, asyncua and aiomqtt
    all use wait_for. Without this check a stopped driver could go on polling forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """Await with a time limit; TimeoutError when it runs out. Same contract as asyncio.timeout.

    For the per-request hot path: Python 3.11's asyncio.timeout costs about 15 µs per use (a context
    object, a state machine and several calls), a sizeable part of a fast Modbus request.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("within() needs a task")
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = loop.call_at(loop.time() + seconds, expire)
    try:
        result = await awaitable
    except asyncio.CancelledError:
        # Our own cancel, and no one else's pending: that is the timeout.
        if expired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        handle.cancel()
    if expired:  # the limit ran out in the very turn the result came: the result stands
        task.uncancel()
    return result


class Driver(ABC, Generic[DeviceT]):
    """One device's connection: reads it, publishes Samples, executes checked writes."""

    protocol: ClassVar[str]

    def __init__(self, device: DeviceT, sink: SampleSink, *, backoff: Backoff | None = None,
                 clock: SleepingClock | None = None) -> None:
        self.device: DeviceT = device
        self.stats = DriverStats()
        self._sink = sink
        self._backoff = backoff or Backoff(device.backoff_initial_s, device.backoff_max_s)
        # Polling, backoff and staleness run on this clock (virtual in tests); wire timeouts stay real.
        self._clock: SleepingClock = clock or RealClock()
        self._log = logging.getLogger(type(self).__module__)
        self._points: dict[str, PointBase] = {p.id: p for p in device.points}
        self._state = ConnectionState.STOPPED
        self._state_changed = asyncio.Event()
        self._running = False
        self._healthy = False  # the current connection has delivered data
        self._failing = False  # a failure was logged and no recovery yet
        self._failing_since = 0.0
        self._announced = False  # the first successful connection was logged
        self._deadline: dict[str, float] = {}  # point id -> monotonic time it turns STALE
        self._stale: set[str] = set()
        self._full_ids = {p.id: f"{device.id}.{p.id}" for p in device.points}
        self._stale_periods: dict[str, float | None] | None = None  # point id -> stale_after, per connection
        self._uniform_period: tuple[float | None] | None = None  # (period,) when every point shares it
        self.last_error: str | None = None  # why the latest connection failed, for probing and status

    # ------------------------------------------------------------------ public surface

    @property
    def device_id(self) -> str:
        """The device's configured id."""
        return self.device.id

    @property
    def state(self) -> ConnectionState:
        """The connection's current state."""
        return self._state

    def point_id(self, point: PointBase) -> str:
        """Full point id, `device.point`."""
        return f"{self.device.id}.{point.id}"

    async def run(self) -> None:
        """Connect, read and publish until cancelled; on failure publish BAD, back off and re-create."""
        if self._running:
            raise RuntimeError(f"driver for '{self.device_id}' is already running")
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_staleness(), name=f"{self.device_id}-staleness")
                await self._connection_loop()
        finally:
            self._running = False
            self._set_state(ConnectionState.STOPPED)

    async def wait_for_state(self, state: ConnectionState) -> None:
        """Return once the driver is in `state` (bound it with asyncio.timeout)."""
        while self._state is not state:
            await self._state_changed.wait()

    async def write(self, point_id: str, value: float) -> WriteResult:
        """Check the envelope, write, read back and compare; the device never sees a rejected value."""
        point = self._find_point(point_id)
        if point is None:
            return WriteResult(point_id, "rejected", value, message=f"unknown point '{point_id}'")
        pid = self.point_id(point)
        reason = self._envelope_violation(point, value)
        if reason is not None:
            return WriteResult(pid, "rejected", value, message=reason)
        if self._state is not ConnectionState.CONNECTED:
            return WriteResult(pid, "error", value, message=f"device '{self.device_id}' is not connected "
                               f"(state {self._state.value})")
        self.stats.writes += 1
        try:
            async with asyncio.timeout(self.device.timeout_s):
                written, readback = await self._write_and_read_back(point, value)
        except (TimeoutError, DriverTimeout) as err:
            detail = f" ({err})" if isinstance(err, DriverTimeout) else ""
            result = WriteResult(pid, "timeout", value,
                                 message=f"no answer within {self.device.timeout_s} s{detail}")
        except DeviceRefused as err:
            result = WriteResult(pid, "refused", value, message=str(err))
        except (WriteRejected, CodecError) as err:
            result = WriteResult(pid, "rejected", value, message=str(err))
        except DriverError as err:
            result = WriteResult(pid, "error", value, message=describe(err))
        except Exception as err:  # an untranslated library error must not escape to the arbiter
            self._log.exception("%s: unexpected error writing %s", self.device_id, pid)
            result = WriteResult(pid, "error", value, message=describe(err))
        else:
            self._publish(point, readback, Quality.GOOD)
            if abs(readback - written) <= self._tolerance(point, written):
                return WriteResult(pid, "ok", value, written, readback)
            result = WriteResult(pid, "mismatch", value, written, readback,
                                 message=f"wrote {written}, device reports {readback}")
            self._log.warning("%s: write to %s: %s", self.device_id, pid, result.message)
        self.stats.write_failures += 1
        return result

    # ------------------------------------------------------------------ subclass hooks

    @abstractmethod
    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        """Create a fresh client and connect it; push its cleanup on `stack`. Raise DriverError on failure."""

    @abstractmethod
    async def _serve(self) -> None:
        """Read or receive and publish until the connection fails (raise DriverError); never return."""

    async def _write_and_read_back(self, point: PointBase, value: float) -> tuple[float, float]:
        """Write `value`; return (value as written on the wire, value read back)."""
        raise WriteRejected(f"the {self.protocol} driver does not write")

    def _tolerance(self, point: PointBase, written: float) -> float:
        """Largest difference between written and read-back values that still counts as equal."""
        return 1e-9 * max(1.0, abs(written))

    def _publishes(self, point: PointBase) -> bool:
        """Whether the point's values go to the sample stream (numeric points do)."""
        return True

    def _stale_after(self, point: PointBase) -> float | None:
        """Seconds without a fresh sample after which the point turns STALE (None: never)."""
        return point.stale_after_s or 3 * self.device.poll_interval_s

    # ------------------------------------------------------------------ helpers for subclasses

    def _publish(self, point: PointBase, value: float | None, quality: Quality,
                 source_time: datetime | None = None, receive_time: datetime | None = None) -> None:
        """Hand one sample to the sink and restart the point's staleness clock."""
        if not self._publishes(point):
            return
        received = receive_time or utcnow()
        self._sink.publish(Sample(self.point_id(point), value, quality, source_time or received, received))
        self.stats.samples += 1
        if quality is not Quality.STALE:
            self._refresh(point)

    def _publish_good(self, values: Sequence[tuple[PointBase, float]], source_time: datetime,
                      receive_time: datetime | None = None) -> None:
        """Publish many GOOD values with one source time; same effect as _publish for each."""
        pids = [p.id for p, _ in values]
        ids = self._full_ids
        self._publish_values(pids, [ids[pid] for pid in pids], [v for _, v in values], source_time, receive_time)

    def _publish_values(self, pids: Sequence[str], full_ids: Sequence[str], values: Sequence[float],
                        source_time: datetime, receive_time: datetime | None = None) -> None:
        """The hot path of a poll: GOOD values of points given by id and full id, all three lists aligned.

        Pollers keep the id lists per read block, so a poll costs one small tuple per sample and no more.
        """
        received = receive_time or source_time
        if len(full_ids) != len(values):
            raise ValueError(f"{len(full_ids)} point ids for {len(values)} values")
        # All in C but the sink's publish: tuple.__new__ skips the NamedTuple's Python-level __new__
        # (a third of a sample's cost), and map/deque replace a Python loop.
        fields = zip(full_ids, values, repeat(Quality.GOOD), repeat(source_time), repeat(received))
        self._publish_samples(pids, map(tuple.__new__, repeat(Sample), fields))

    def _publish_samples(self, pids: Sequence[str], samples: Iterable[Sample]) -> None:
        """Hand ready GOOD samples of the points `pids` (same order) to the sink; restart their staleness clocks."""
        deque(map(self._sink.publish, samples), maxlen=0)
        periods = self._stale_periods
        if periods is None:  # once per connection: the period can depend on how the device is read
            periods = self._stale_periods = {p.id: self._stale_after(p) for p in self._points.values()}
            distinct = set(periods.values())
            self._uniform_period = (distinct.pop(),) if len(distinct) == 1 else None
        now = self._clock.monotonic()
        uniform = self._uniform_period
        if uniform is None:  # points differ in their periods
            deadline = self._deadline
            for pid in pids:
                after = periods[pid]
                if after is not None:
                    deadline[pid] = now + after
        elif uniform[0] is not None:
            self._deadline.update(dict.fromkeys(pids, now + uniform[0]))  # one C call for the whole batch
        if self._stale:
            self._stale.difference_update(pids)
        self.stats.samples += len(pids)

    async def _poll_forever(self, poll_once: Callable[[], Awaitable[None]]) -> None:
        """Poll at a fixed rate; a poll that overran skips the missed slots rather than bursting."""
        clock = self._clock
        next_poll = clock.monotonic()
        while True:
            await poll_once()
            raise_if_cancelled()
            self._mark_healthy()
            next_poll = max(next_poll + self.device.poll_interval_s, clock.monotonic())
            await clock.sleep(next_poll - clock.monotonic())

    def _mark_healthy(self) -> None:
        """Called once data flows on a connection: resets the backoff, logs recovery once."""
        if self._healthy:
            return
        self._healthy = True
        self._backoff.reset()
        if self._failing:
            self._failing = False
            self.stats.reconnects += 1
            self._log.info("%s: recovered, values flowing again after %.1f s",
                           self.device_id, self._clock.monotonic() - self._failing_since)
        elif not self._announced:
            self._log.info("%s: connected to %s", self.device_id, self.device.endpoint)
        self._announced = True

    # ------------------------------------------------------------------ lifecycle

    async def _connection_loop(self) -> None:
        while True:
            await self._attempt()
            raise_if_cancelled()
            self._set_state(ConnectionState.BACKING_OFF)
            await self._clock.sleep(self._backoff.next_delay())

    async def _attempt(self) -> None:
        """One connection, from creation to failure; the client is always closed afterwards."""
        self._set_state(ConnectionState.CONNECTING)
        stack = contextlib.AsyncExitStack()
        try:
            try:
                async with asyncio.timeout(self.device.timeout_s):
                    await self._connect(stack)
            except TimeoutError as err:
                raise DriverTimeout(f"no connection to {self.device.endpoint} within "
                                    f"{self.device.timeout_s} s") from err
            self._set_state(ConnectionState.CONNECTED)
            self._stale_periods = None
            self._arm_staleness()
            await self._serve()
            raise DriverError("the connection ended")  # _serve only returns if the peer hung up
        except Exception as err:  # any failure means: BAD, back off, re-create
            self._on_failure(err)
        finally:
            self._healthy = False
            await self._close(stack)

    async def _close(self, stack: contextlib.AsyncExitStack) -> None:
        """Close the client within the device timeout; a close that fails is not news."""
        try:
            async with asyncio.timeout(self.device.timeout_s):
                await stack.aclose()
        except Exception as err:  # a close that fails is not news
            self._log.debug("%s: closing the connection: %s", self.device_id, describe(err))

    def _on_failure(self, err: Exception) -> None:
        self.stats.failures += 1
        self.last_error = describe(err)
        now = utcnow()
        for point in self._points.values():
            self._publish(point, None, Quality.BAD, now, now)
        # BAD already says "invalid": no STALE on top until the next connection.
        self._deadline.clear()
        self._stale.clear()
        if self._failing:
            self._log.debug("%s: still failing: %s", self.device_id, describe(err))
            return
        self._failing = True
        self._failing_since = self._clock.monotonic()
        self._log.warning("%s: %s; points are BAD, reconnecting with backoff (at most %g s apart)",
                          self.device_id, describe(err), self._backoff.cap,
                          exc_info=None if isinstance(err, DriverError) else err)

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self._state = state
        # Wake every waiter, then start a fresh event for the next change.
        changed, self._state_changed = self._state_changed, asyncio.Event()
        changed.set()

    # ------------------------------------------------------------------ staleness

    def _refresh(self, point: PointBase) -> None:
        after = self._stale_after(point)
        if after is not None:
            self._deadline[point.id] = self._clock.monotonic() + after
            self._stale.discard(point.id)

    def _arm_staleness(self) -> None:
        """Start the clock for points not seen yet on this connection, so silence turns them STALE."""
        now = self._clock.monotonic()
        for point in self._points.values():
            after = self._stale_after(point)
            if after is not None and self._publishes(point):
                self._deadline.setdefault(point.id, now + after)

    def _check_staleness(self) -> None:
        now = self._clock.monotonic()
        for pid, deadline in list(self._deadline.items()):
            if now >= deadline and pid not in self._stale:
                self._stale.add(pid)
                self._publish(self._points[pid], None, Quality.STALE)

    async def _watch_staleness(self) -> None:
        periods = [s for p in self._points.values() if (s := self._stale_after(p)) is not None]
        if not periods:
            return
        # A quarter of the shortest period: a point turns STALE at most 25 % late.
        tick = min(1.0, max(0.01, min(periods) / 4))
        while True:
            await self._clock.sleep(tick)
            self._check_staleness()

    # ------------------------------------------------------------------ writes

    def _find_point(self, point_id: str) -> PointBase | None:
        prefix = f"{self.device.id}."
        return self._points.get(point_id.removeprefix(prefix) if point_id.startswith(prefix) else point_id)

    @staticmethod
    def envelope_violation(point: PointBase, value: float) -> str | None:
        """Why `value` must not reach the device (not writable, not finite, below min, above max), or None."""
        return Driver._envelope_violation(point, value)

    @staticmethod
    def _envelope_violation(point: PointBase, value: float) -> str | None:
        """Why the value must not reach the device, or None when it may."""
        if not point.writable:
            return f"point '{point.id}' is not writable"
        if not isinstance(value, int | float) or not math.isfinite(value):
            return f"{value!r} is not a finite number"
        if point.min is not None and value < point.min:
            return f"{value} is below the minimum {point.min}"
        if point.max is not None and value > point.max:
            return f"{value} is above the maximum {point.max}"
        return None
