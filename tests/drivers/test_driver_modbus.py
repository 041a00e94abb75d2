"""Modbus driver against a real pymodbus server on loopback: coalescing, quality, reconnect, writes."""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Any

import pytest

from drivers.backoff import Backoff
from drivers.base import ConnectionState
from drivers.modbus import ModbusDriver, ReadBlock, plan_reads, split_block
from service.config import ModbusDevice, ModbusPoint
from service.model import Quality

if TYPE_CHECKING:
    from conftest import ModbusPeer, RecordingSink, WaitFor


def point(id: str, address: int, **kw: Any) -> ModbusPoint:
    return ModbusPoint.model_validate({"id": id, "address": address, **kw})


def device(port: int, points: list[dict[str, Any]], **kw: Any) -> ModbusDevice:
    base: dict[str, Any] = {"id": "hp", "protocol": "modbus", "endpoint": f"127.0.0.1:{port}",
                            "poll_interval_s": 0.1, "timeout_s": 0.5,
                            "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
    return ModbusDevice.model_validate({**base, **kw, "points": points})


def words(fmt: str, value: float) -> list[int]:
    data = struct.pack(fmt, value)
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


# ---------------------------------------------------------------------- the planner


def test_plan_coalesces_per_function_and_bridges_small_gaps() -> None:
    pts = [point("a", 0), point("b", 1, type="float32"), point("c", 10), point("d", 40),
           point("e", 0, function="input"), point("f", 3, function="input"),
           point("g", 0, function="coil", type="bool"), point("h", 100, function="coil", type="bool")]
    plan = plan_reads(pts, max_registers=125, max_gap=8)
    assert [(b.function, b.address, b.count) for b in plan] == [
        ("holding", 0, 11), ("holding", 40, 1), ("input", 0, 4), ("coil", 0, 101)]
    assert [p.id for p in plan[0].points] == ["a", "b", "c"]


def test_plan_respects_the_request_size_limit() -> None:
    pts = [point(f"p{i}", i * 2, type="uint32") for i in range(10)]  # registers 0..19, contiguous
    plan = plan_reads(pts, max_registers=6, max_gap=0)
    assert [(b.address, b.count) for b in plan] == [(0, 6), (6, 6), (12, 6), (18, 2)]


def test_plan_keeps_overlapping_points_in_one_block() -> None:
    pts = [point("word", 5, type="uint32"), point("low", 6, type="uint16")]
    assert [(b.address, b.count) for b in plan_reads(pts, 125, 0)] == [(5, 2)]


def test_split_block_drops_bridges_first_then_goes_per_point() -> None:
    block = plan_reads([point("a", 0), point("b", 1), point("c", 9)], 125, 8)[0]
    gapless = split_block(block, 125)
    assert [(b.address, b.count) for b in gapless] == [(0, 2), (9, 1)]
    assert [(b.address, b.count) for b in split_block(gapless[0], 125)] == [(0, 1), (1, 1)]


# ---------------------------------------------------------------------- reading


def full_map() -> list[dict[str, Any]]:
    return [
        {"id": "supply", "address": 0, "type": "int16", "scale": 0.1},
        {"id": "power", "address": 2, "type": "float32"},
        {"id": "energy", "address": 4, "type": "uint32", "word_order": "little"},
        {"id": "status", "address": 10, "type": "uint16"},
        {"id": "name", "address": 12, "type": "string", "length": 2},
        {"id": "refused", "address": 55, "type": "int16"},  # inside the range the device refuses
        {"id": "edge_low", "address": 48, "type": "int16"},  # bridged across the refused range ...
        {"id": "edge_high", "address": 61, "type": "int16"},  # ... so the coalesced read must be split
        {"id": "cop", "address": 1, "function": "input", "type": "uint16", "scale": 0.01},
        {"id": "pump_on", "address": 3, "function": "coil", "type": "bool"},
    ]


async def test_values_and_quality_arrive(modbus_peer: ModbusPeer, sink: RecordingSink, wait_for: WaitFor,
                                         run_driver: Any, caplog: pytest.LogCaptureFixture) -> None:
    modbus_peer.set_holding(0, [215])
    modbus_peer.set_holding(2, words(">f", 812.5))
    modbus_peer.set_holding(4, [0x5678, 0x1234])  # low word first
    modbus_peer.set_holding(10, [3])
    modbus_peer.set_holding(12, [0x4142, 0x4300])
    modbus_peer.set_holding(48, [48])
    modbus_peer.set_holding(61, [61])
    modbus_peer.set_input(1, [345])
    modbus_peer.set_coil(3, True)
    drv = ModbusDriver(device(modbus_peer.port, full_map(), max_gap_registers=16), sink)
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    run_driver(drv)
    # Input registers and coils are read after the holding blocks of the same poll: wait for them too.
    await wait_for(lambda: all(sink.quality(f"hp.{p}") is Quality.GOOD
                               for p in ("edge_low", "edge_high", "supply", "power", "energy", "status", "cop",
                                         "pump_on")),
                   what="points around the refused range read after the split, and every other point")
    assert sink.value("hp.supply") == pytest.approx(21.5)
    assert sink.value("hp.power") == 812.5
    assert sink.value("hp.energy") == 0x12345678
    assert sink.value("hp.status") == 3
    assert sink.value("hp.cop") == pytest.approx(3.45)
    assert sink.value("hp.pump_on") == 1.0
    assert sink.quality("hp.refused") is Quality.BAD and sink.value("hp.refused") is None
    assert sink.of("hp.name") == []  # text is not a sample
    assert drv.state is ConnectionState.CONNECTED
    # Refused once per poll, but warned about once.
    await wait_for(lambda: len(sink.of("hp.refused", Quality.BAD)) >= 3)
    warnings = [r for r in caplog.records if r.name == "drivers.modbus" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "holding 55..55" in warnings[0].getMessage()


async def test_coalescing_sends_the_planned_number_of_requests(modbus_peer: ModbusPeer, sink: RecordingSink,
                                                              wait_for: WaitFor, run_driver: Any) -> None:
    points = [{"id": f"t{i}", "address": i, "type": "int16"} for i in range(0, 40, 4)]  # 0, 4, ..., 36
    points += [{"id": "far", "address": 70, "type": "float64"},
               {"id": "in0", "address": 0, "function": "input"},
               {"id": "in1", "address": 5, "function": "input", "type": "int32"},
               {"id": "c1", "address": 1, "function": "coil", "type": "bool"},
               {"id": "c9", "address": 9, "function": "coil", "type": "bool"}]
    # A long poll interval: exactly one poll happens while we look.
    drv = ModbusDriver(device(modbus_peer.port, points, poll_interval_s=30, max_gap_registers=8,
                              max_registers_per_read=20), sink)
    assert [(b.function, b.address, b.count) for b in drv.plan] == [
        ("holding", 0, 17), ("holding", 20, 17), ("holding", 70, 4), ("input", 0, 7), ("coil", 1, 9)]
    run_driver(drv)
    await wait_for(lambda: all(sink.latest(f"hp.{p['id']}") for p in points))
    assert modbus_peer.count(3) == 3 and modbus_peer.count(4) == 1 and modbus_peer.count(1) == 1
    assert len(modbus_peer.requests) == 5 == drv.stats.reads


async def test_stopped_server_gives_bad_then_recovers_on_the_same_port(
        modbus_peer: ModbusPeer, start_modbus_peer: Any, sink: RecordingSink, wait_for: WaitFor,
        run_driver: Any, caplog: pytest.LogCaptureFixture) -> None:
    modbus_peer.set_holding(0, [215])
    drv = ModbusDriver(device(modbus_peer.port, [{"id": "supply", "address": 0, "scale": 0.1}]), sink)
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    run_driver(drv)
    await wait_for(lambda: sink.quality("hp.supply") is Quality.GOOD)

    await modbus_peer.stop()
    await wait_for(lambda: sink.quality("hp.supply") is Quality.BAD, what="BAD after the server stopped")
    await wait_for(lambda: drv.stats.failures >= 4, what="several reconnect attempts fail")
    assert drv.state in (ConnectionState.BACKING_OFF, ConnectionState.CONNECTING)
    await wait_for(lambda: drv.state is ConnectionState.BACKING_OFF)
    mine = [r for r in caplog.records if r.name == "drivers.modbus"]
    assert [r.levelno for r in mine].count(logging.WARNING) == 1

    restarted = await start_modbus_peer(modbus_peer.port)
    restarted.set_holding(0, [230])
    await wait_for(lambda: sink.quality("hp.supply") is Quality.GOOD, what="GOOD after the restart")
    assert sink.value("hp.supply") == pytest.approx(23.0)
    assert drv.state is ConnectionState.CONNECTED and drv.stats.reconnects == 1
    recovered = [r for r in caplog.records if r.name == "drivers.modbus" and "recovered" in r.getMessage()]
    assert len(recovered) == 1


async def test_unanswered_requests_time_out_into_bad(silent_peer: Any, sink: RecordingSink,
                                                     wait_for: WaitFor, run_driver: Any) -> None:
    drv = ModbusDriver(device(silent_peer.port, [{"id": "supply", "address": 0}], timeout_s=0.2), sink)
    run_driver(drv)
    await wait_for(lambda: sink.quality("hp.supply") is Quality.BAD)
    assert drv.stats.failures >= 1


async def test_staleness_turns_a_slow_point_stale(modbus_peer: ModbusPeer, sink: RecordingSink,
                                                  wait_for: WaitFor, run_driver: Any) -> None:
    drv = ModbusDriver(device(modbus_peer.port, [{"id": "supply", "address": 0, "stale_after_s": 0.1}],
                              poll_interval_s=0.6), sink)
    run_driver(drv)
    await wait_for(lambda: sink.quality("hp.supply") is Quality.STALE, what="STALE between slow polls")
    stale = sink.latest("hp.supply")
    assert stale is not None and stale.value is None
    await wait_for(lambda: sink.quality("hp.supply") is Quality.GOOD, what="GOOD at the next poll")
    assert len(sink.of("hp.supply", Quality.STALE)) == 1  # announced once per silence, not every tick


# ---------------------------------------------------------------------- writing

WRITE_MAP = [
    {"id": "setpoint", "address": 0, "type": "int16", "scale": 0.1, "writable": True, "min": 40, "max": 85},
    {"id": "limit", "address": 2, "type": "float32", "writable": True, "unbounded_writes": True},
    {"id": "big", "address": 6, "type": "int16", "scale": 0.1, "writable": True, "unbounded_writes": True},
    {"id": "pump_on", "address": 3, "function": "coil", "type": "bool", "writable": True, "min": 0, "max": 1},
    {"id": "measured", "address": 8},
]


async def connected_driver(peer: ModbusPeer, sink: RecordingSink, run_driver: Any) -> ModbusDriver:
    drv = ModbusDriver(device(peer.port, WRITE_MAP, timeout_s=1.0), sink)
    run_driver(drv)
    async with asyncio.timeout(5):
        await drv.wait_for_state(ConnectionState.CONNECTED)
    return drv


async def test_write_then_read_back(modbus_peer: ModbusPeer, sink: RecordingSink, run_driver: Any) -> None:
    drv = await connected_driver(modbus_peer, sink, run_driver)
    result = await drv.write("hp.setpoint", 55.04)
    assert result.status == "ok", result
    assert result.written == pytest.approx(55.0) and result.readback == pytest.approx(55.0)
    assert modbus_peer.holding(0) == [550]
    assert (await drv.write("limit", 12.25)).status == "ok"  # local ids work too
    assert modbus_peer.holding(2, 2) == words(">f", 12.25)
    assert (await drv.write("hp.pump_on", 1)).status == "ok"
    assert modbus_peer.count(6) == 1 and modbus_peer.count(16) == 1 and modbus_peer.count(5) == 1


@pytest.mark.parametrize(("point_id", "value", "reason"), [
    ("hp.setpoint", 90.0, "above the maximum"),
    ("hp.setpoint", 39.9, "below the minimum"),
    ("hp.setpoint", float("nan"), "not a finite number"),
    ("hp.measured", 1.0, "not writable"),
    ("hp.nope", 1.0, "unknown point"),
    ("hp.big", 4000.0, "outside int16"),  # within the (absent) envelope but not representable
    ("hp.pump_on", 0.5, "write 0 or 1"),
])
async def test_rejected_writes_never_reach_the_device(modbus_peer: ModbusPeer, sink: RecordingSink,
                                                      run_driver: Any, point_id: str, value: float,
                                                      reason: str) -> None:
    drv = await connected_driver(modbus_peer, sink, run_driver)
    result = await drv.write(point_id, value)
    assert result.status == "rejected" and reason in result.message, result
    assert modbus_peer.count(5, 6, 15, 16) == 0


async def test_silent_clamping_is_a_mismatch(modbus_peer: ModbusPeer, sink: RecordingSink,
                                             run_driver: Any) -> None:
    modbus_peer.clamp[0] = (0, 800)  # the device caps the setpoint at 80.0 without saying so
    drv = await connected_driver(modbus_peer, sink, run_driver)
    result = await drv.write("hp.setpoint", 84.0)
    assert result.status == "mismatch", result
    assert result.written == pytest.approx(84.0) and result.readback == pytest.approx(80.0)
    assert (await drv.write("hp.setpoint", 79.95)).status == "ok"  # raw 800: within half a step


async def test_write_when_disconnected_is_an_error(sink: RecordingSink) -> None:
    drv = ModbusDriver(device(1, WRITE_MAP), sink, backoff=Backoff(0.05, 0.1))
    result = await drv.write("hp.setpoint", 50.0)
    assert result.status == "error" and "not connected" in result.message


async def test_write_to_a_silent_device_times_out(silent_peer: Any, sink: RecordingSink,
                                                  run_driver: Any) -> None:
    drv = ModbusDriver(device(silent_peer.port, WRITE_MAP, timeout_s=0.3, poll_interval_s=30), sink)
    run_driver(drv)
    async with asyncio.timeout(5):
        await drv.wait_for_state(ConnectionState.CONNECTED)
    # The first poll is under way; the write queues behind it and must still be bounded.
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await drv.write("hp.setpoint", 50.0)
    assert result.status == "timeout", result
    assert loop.time() - started < 1.0


def test_read_block_key_is_stable() -> None:
    b = ReadBlock("holding", 3, 2, ())
    assert b.key == ("holding", 3, 2)
