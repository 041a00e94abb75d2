"""The shared driver lifecycle, with a fake protocol: states, logging once, backoff, staleness, writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from drivers import create_driver
from drivers.backoff import Backoff
from drivers.base import ConnectionState, Driver, WriteResult
from drivers.errors import DeviceRefused, DriverConnectionError
from drivers.modbus import ModbusDriver
from drivers.mqtt import MqttDriver
from drivers.opcua import OpcUaDriver
from service.config import ModbusDevice, MqttDevice, OpcUaDevice, PointBase, load_config
from service.model import Quality

if TYPE_CHECKING:
    from conftest import RecordingSink, WaitFor


# ---------------------------------------------------------------------- backoff


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 4.0, rand=lambda: 0.0)  # no jitter drawn: the bare schedule
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_within_its_band() -> None:
    b = Backoff(1.0, 8.0, jitter=0.5, rand=lambda: 0.999)
    assert b.next_delay() == pytest.approx(0.5005)
    delays = [Backoff(1.0, 8.0).next_delay() for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays) and len(set(delays)) > 1


def test_backoff_survives_very_long_outages() -> None:
    b = Backoff(0.1, 30.0, rand=lambda: 0.0)
    b.attempt = 10_000
    assert b.next_delay() == 30.0


@pytest.mark.parametrize("kw", [{"initial": 0}, {"initial": 2, "cap": 1}, {"factor": 0.5}, {"jitter": 1.5}])
def test_backoff_rejects_nonsense(kw: dict[str, float]) -> None:
    args = {"initial": 0.5, "cap": 1.0, **kw}
    with pytest.raises(ValueError):
        Backoff(args.pop("initial"), args.pop("cap"), **args)


# ---------------------------------------------------------------------- a fake protocol


class FakeDriver(Driver[ModbusDevice]):
    """Connects when `up` is set; serves by publishing `value` every poll until `up` clears."""

    protocol = "fake"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.up = True
        self.value = 1.0
        self.connects = 0
        self.closes = 0
        self.device_value = 0.0
        self.device_clamp = 1e9
        self.write_delay = 0.0
        self.writes_seen: list[float] = []

    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        self.connects += 1
        stack.callback(self._closed)
        if not self.up:
            raise DriverConnectionError("connection refused")

    def _closed(self) -> None:
        self.closes += 1

    def _publishes(self, point: PointBase) -> bool:
        return point.id != "text"

    async def _serve(self) -> None:
        while self.up:
            for p in self.device.points:
                self._publish(p, self.value, Quality.GOOD)
            self._mark_healthy()
            await asyncio.sleep(self.device.poll_interval_s)
        raise DriverConnectionError("peer went away")

    async def _write_and_read_back(self, point: PointBase, value: float) -> tuple[float, float]:
        self.writes_seen.append(value)
        await asyncio.sleep(self.write_delay)
        if value == 13:
            raise DeviceRefused("the device refuses 13")
        self.device_value = min(value, self.device_clamp)
        return value, self.device_value


def fake_device(a_stale_after: float | None = None, **kw: Any) -> ModbusDevice:
    points = [{"id": "a", "address": 0, "stale_after_s": a_stale_after},
              {"id": "sp", "address": 1, "writable": True, "min": 0, "max": 100},
              {"id": "text", "address": 2, "type": "string", "length": 2}]
    return ModbusDevice.model_validate({"id": "dev", "protocol": "modbus", "endpoint": "127.0.0.1:1",
                                        "poll_interval_s": 0.02, "timeout_s": 0.3, "backoff_initial_s": 0.01,
                                        "backoff_max_s": 0.05, **kw, "points": points})


async def test_lifecycle_logs_once_per_state_change(sink: RecordingSink, wait_for: WaitFor, run_driver: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=__name__)
    drv = FakeDriver(fake_device(), sink)
    assert drv.state is ConnectionState.STOPPED and drv.device_id == "dev"
    task = run_driver(drv)
    await wait_for(lambda: sink.quality("dev.a") is Quality.GOOD)
    assert drv.state is ConnectionState.CONNECTED

    drv.up = False
    await wait_for(lambda: drv.stats.failures >= 5, what="many failed attempts")
    assert sink.quality("dev.a") is Quality.BAD and sink.quality("dev.sp") is Quality.BAD
    assert drv.closes >= drv.connects - 1  # every attempt's connection was closed (the last maybe not yet)
    logged = [r for r in caplog.records if r.name == __name__]
    assert [r.levelname for r in logged if r.levelno >= logging.INFO] == ["INFO", "WARNING"]

    drv.up = True
    await wait_for(lambda: sink.quality("dev.a") is Quality.GOOD)
    logged = [r for r in caplog.records if r.name == __name__ and r.levelno >= logging.INFO]
    assert [r.levelname for r in logged] == ["INFO", "WARNING", "INFO"]
    assert "recovered" in logged[-1].getMessage() and drv.stats.reconnects == 1
    assert drv._backoff.attempt == 0  # a healthy connection resets the backoff

    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert drv.state is ConnectionState.STOPPED and drv.closes == drv.connects
    assert sink.of("dev.text") == []  # string points never reach the stream


async def test_bad_is_published_even_if_the_first_connection_fails(sink: RecordingSink, wait_for: WaitFor,
                                                                   run_driver: Any) -> None:
    drv = FakeDriver(fake_device(), sink)
    drv.up = False
    run_driver(drv)
    await wait_for(lambda: drv.state is ConnectionState.BACKING_OFF)
    assert sink.quality("dev.a") is Quality.BAD


async def test_an_unexpected_exception_does_not_kill_the_driver(sink: RecordingSink, wait_for: WaitFor,
                                                                run_driver: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    class Buggy(FakeDriver):
        async def _serve(self) -> None:
            raise KeyError("a bug")

    drv = Buggy(fake_device(), sink)
    run_driver(drv)
    await wait_for(lambda: drv.stats.failures >= 3)
    warning = next(r for r in caplog.records if r.name == __name__ and r.levelno == logging.WARNING)
    assert warning.exc_info is not None  # a traceback for what nobody translated


async def test_running_twice_is_refused(sink: RecordingSink, run_driver: Any, wait_for: WaitFor) -> None:
    drv = FakeDriver(fake_device(), sink)
    run_driver(drv)
    await wait_for(lambda: drv.state is ConnectionState.CONNECTED)
    with pytest.raises(RuntimeError):
        await drv.run()


async def test_staleness_is_announced_once_and_cleared_by_data(sink: RecordingSink, wait_for: WaitFor,
                                                               run_driver: Any) -> None:
    # Point a turns stale after 0.05 s; the others keep the default of 3 polls (1.5 s).
    drv = FakeDriver(fake_device(a_stale_after=0.05, poll_interval_s=0.5), sink)
    run_driver(drv)
    await wait_for(lambda: sink.quality("dev.a") is Quality.STALE)
    assert sink.quality("dev.sp") is Quality.GOOD
    await wait_for(lambda: sink.quality("dev.a") is Quality.GOOD, what="the next poll refreshes it")
    assert len(sink.of("dev.a", Quality.STALE)) == 1


# ---------------------------------------------------------------------- writes


async def connected(sink: RecordingSink, run_driver: Any, **kw: Any) -> FakeDriver:
    drv = FakeDriver(fake_device(**kw), sink)
    run_driver(drv)
    async with asyncio.timeout(5):
        await drv.wait_for_state(ConnectionState.CONNECTED)
    return drv


async def test_write_outcomes(sink: RecordingSink, run_driver: Any) -> None:
    drv = await connected(sink, run_driver)
    assert await drv.write("dev.sp", 42) == WriteResult("dev.sp", "ok", 42, 42, 42)
    assert sink.quality("dev.sp") is Quality.GOOD and sink.value("dev.sp") == 42  # read-back is a sample
    drv.device_clamp = 50
    mismatch = await drv.write("sp", 60)
    assert mismatch.status == "mismatch" and mismatch.readback == 50 and not mismatch.ok
    refused = await drv.write("dev.sp", 13)
    assert refused.status == "refused" and "refuses 13" in refused.message  # sent, and refused there
    drv.write_delay = 1.0
    timeout = await drv.write("dev.sp", 5)
    assert timeout.status == "timeout"
    assert drv.stats.writes == 4 and drv.stats.write_failures == 3


@pytest.mark.parametrize(("point_id", "value"), [("dev.sp", 100.5), ("dev.sp", -1), ("dev.sp", float("inf")),
                                                 ("dev.a", 1), ("other.sp", 1), ("dev.text", 1)])
async def test_envelope_rejections_never_reach_the_device(sink: RecordingSink, run_driver: Any,
                                                          point_id: str, value: float) -> None:
    drv = await connected(sink, run_driver)
    result = await drv.write(point_id, value)
    assert result.status == "rejected" and drv.writes_seen == []


# ---------------------------------------------------------------------- factory


def test_factory_picks_the_protocol_driver(sink: RecordingSink) -> None:
    cfg = load_config(Path(__file__).parents[2] / "config" / "demo.toml")
    drivers = [create_driver(d, sink) for d in cfg.devices]
    assert [type(d) for d in drivers] == [OpcUaDriver, ModbusDriver, MqttDriver]
    assert [type(d.device) for d in drivers] == [OpcUaDevice, ModbusDevice, MqttDevice]
    assert all(d.state is ConnectionState.STOPPED for d in drivers)
    with pytest.raises(TypeError):
        create_driver(object(), sink)  # type: ignore[arg-type]
