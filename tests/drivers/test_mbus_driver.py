"""The M-Bus driver against the simulator's M-Bus gateway over real loopback TCP.

Two simulated heat meters share one gateway port (primary addresses 1 and 2); the drivers share one
connection to it, as behind a real transparent gateway. Faults come from the simulator's fault board.
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.config import MbusDevice, MbusPoint
from drivers.mbus import MbusDriver, MeterExchange, read_records
from drivers.mbus_link import MbusLinks
from service.model import Quality
from simulators.config import SimHeatMeter, SimulationConfig
from simulators.runner import Simulation
from simulators.scenario import FaultSpec
from tests.drivers.conftest import RecordingSink, WaitFor

pytestmark = pytest.mark.integration

SERIAL_1, SERIAL_2 = "71234567", "71234568"


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    meters = [SimHeatMeter(id="m1", protocol="mbus", endpoint="127.0.0.1:0", primary_address=1, serial=SERIAL_1,
                           initial_energy_gj=10.0, initial_volume_m3=250.0),
              SimHeatMeter(id="m2", protocol="mbus", endpoint="127.0.0.1:0", primary_address=2, serial=SERIAL_2,
                           initial_energy_gj=20.0)]
    async with Simulation(SimulationConfig(heat_meters=meters), tick_s=None) as simulation:
        yield simulation


def endpoint(sim: Simulation) -> str:
    host, port = sim.mbus_gateways["m1"].address
    return f"{host}:{port}"


def meter(sim: Simulation, device_id: str = "meter1", **keys: Any) -> MbusDevice:
    points = [MbusPoint(id="energy", record="energy", unit="GJ", kind="counter"),
              MbusPoint(id="energy_kwh", record="energy", unit="kWh", kind="counter"),
              MbusPoint(id="volume", record="volume", unit="m3", kind="counter"),
              MbusPoint(id="flow_temperature", record="flow_temperature", unit="degC"),
              MbusPoint(id="energy_due", record="energy", storage=1, unit="GJ"),
              MbusPoint(id="error_flags", record="error_flags", unit="", kind="status")]
    base: dict[str, Any] = {"id": device_id, "protocol": "mbus", "endpoint": endpoint(sim), "primary_address": 1,
                            "poll_interval_s": 0.05, "timeout_s": 0.3, "retries": 1, "backoff_initial_s": 0.05,
                            "backoff_max_s": 0.2, "points": points}
    return MbusDevice(**(base | keys))


def good(sink: RecordingSink, point: str) -> int:
    return len(sink.of(point, Quality.GOOD))


async def test_reads_every_record_it_maps_across_two_telegrams(sim: Simulation, sink: RecordingSink,
                                                              run_driver: Any, wait_for: WaitFor) -> None:
    driver = MbusDriver(meter(sim), sink)
    run_driver(driver)
    await wait_for(lambda: good(sink, "meter1.energy_due") >= 2, 5, "the second telegram read twice")
    state = sim.model.heat_meters["m1"]
    assert sink.value("meter1.energy") == pytest.approx(10.0)  # 10 000 MJ in the telegram
    assert sink.value("meter1.energy_kwh") == pytest.approx(10.0 / 0.0036)
    assert sink.value("meter1.volume") == pytest.approx(250.0)
    assert sink.value("meter1.flow_temperature") == pytest.approx(state.flow_temperature_c, abs=0.006)
    assert sink.value("meter1.energy_due") == pytest.approx(10.0)  # storage 1, from the second telegram
    assert sink.value("meter1.error_flags") == 0
    assert driver.identity is not None
    assert (driver.identity.identification, driver.identity.manufacturer) == (SERIAL_1, "KAM")
    assert driver.frame_errors.total() == 0


async def test_secondary_addressing_selects_the_meter_by_its_number(sim: Simulation, sink: RecordingSink,
                                                                   run_driver: Any, wait_for: WaitFor) -> None:
    driver = MbusDriver(meter(sim, primary_address=None, secondary_address=SERIAL_2), sink)
    run_driver(driver)
    await wait_for(lambda: good(sink, "meter1.energy_due") >= 1, 5, "a read by secondary address")
    assert sink.value("meter1.energy") == pytest.approx(20.0)
    assert driver.identity is not None and driver.identity.identification == SERIAL_2


@pytest.mark.parametrize(("kind", "problem"), [("bad_checksum", "checksum"), ("truncated", "truncated")])
async def test_bad_frames_are_counted_logged_once_and_never_read(
        sim: Simulation, sink: RecordingSink, run_driver: Any, wait_for: WaitFor, caplog: pytest.LogCaptureFixture,
        kind: str, problem: str) -> None:
    driver = MbusDriver(meter(sim), sink)
    run_driver(driver)
    await wait_for(lambda: good(sink, "meter1.energy") >= 1, 5, "a first good read")
    caplog.set_level(logging.WARNING, logger="drivers.mbus")
    fault = await sim.inject(FaultSpec(device="m1", kind=kind))  # type: ignore[arg-type]
    readings = good(sink, "meter1.energy")
    await wait_for(lambda: driver.frame_errors[problem] >= 6, 10, f"six {problem} frames")
    assert good(sink, "meter1.energy") <= readings + 1  # at most the poll under way when the fault came
    assert sink.quality("meter1.energy") is Quality.BAD
    refused = [r for r in caplog.records if "refused (logged once" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    await sim.clear_fault(fault.id)
    await wait_for(lambda: sink.quality("meter1.energy") is Quality.GOOD, 5, "good reads again")


async def test_an_answer_from_another_address_is_refused(sim: Simulation, sink: RecordingSink,
                                                         run_driver: Any, wait_for: WaitFor) -> None:
    driver = MbusDriver(meter(sim, primary_address=2), sink)
    run_driver(driver)
    await wait_for(lambda: good(sink, "meter1.energy") >= 1, 5, "a read of meter 2")
    gateway = sim.mbus_gateways["m1"]
    original = gateway._telegram

    def wrong_address(m: Any, index: int, address: int) -> bytes:
        return original(m, index, 7)  # a well-formed RSP_UD, but from address 7 (a gateway mix-up)

    gateway._telegram = wrong_address  # type: ignore[method-assign]
    await wait_for(lambda: driver.frame_errors["address"] >= 4, 5, "answers from address 7 refused")
    assert sink.quality("meter1.energy") is Quality.BAD


async def test_a_silent_meter_does_not_stall_the_other_on_the_same_connection(
        sim: Simulation, sink: RecordingSink, run_driver: Any, wait_for: WaitFor) -> None:
    links = MbusLinks()
    silent = MbusDriver(meter(sim, "silent", primary_address=1), sink, links=links)
    talking = MbusDriver(meter(sim, "talking", primary_address=2), sink, links=links)
    run_driver(silent)
    run_driver(talking)
    await wait_for(lambda: good(sink, "silent.energy") >= 1 and good(sink, "talking.energy") >= 1, 5, "both read")
    assert len(links) == 1  # one connection to the gateway for both meters
    await sim.inject(FaultSpec(device="m1", kind="no_answer"))
    await wait_for(lambda: sink.quality("silent.energy") is Quality.BAD, 5, "the silent meter BAD")
    silent_good, before = good(sink, "silent.energy"), good(sink, "talking.energy")
    timeouts = silent.stats.failures
    await wait_for(lambda: silent.stats.failures >= timeouts + 3, 10, "three more failed attempts of the silent one")
    assert good(sink, "talking.energy") >= before + 3  # read on meanwhile
    assert good(sink, "silent.energy") == silent_good
    assert not sink.of("talking.energy", Quality.BAD)


async def test_error_flags_make_values_uncertain(sim: Simulation, sink: RecordingSink, run_driver: Any,
                                                 wait_for: WaitFor) -> None:
    run_driver(MbusDriver(meter(sim), sink))
    await wait_for(lambda: good(sink, "meter1.energy") >= 1, 5, "a first good read")
    await sim.inject(FaultSpec(device="m1", kind="meter_error", value=4.0))
    await wait_for(lambda: sink.quality("meter1.energy") is Quality.UNCERTAIN, 5, "values UNCERTAIN")
    assert sink.value("meter1.error_flags") == 4
    assert sink.quality("meter1.error_flags") is Quality.GOOD  # the flags are a valid reading: alarms act on them


async def test_a_meter_exchange_is_reported_with_both_registers(sim: Simulation, sink: RecordingSink,
                                                                run_driver: Any, wait_for: WaitFor) -> None:
    seen: list[MeterExchange] = []
    driver = MbusDriver(meter(sim), sink, on_exchange=seen.append)
    run_driver(driver)
    await wait_for(lambda: good(sink, "meter1.energy") >= 2, 5, "readings of the old meter")
    await sim.inject(FaultSpec(device="m1", kind="replace", serial="72000001"))
    await wait_for(lambda: bool(seen), 5, "the exchange reported")
    exchange = seen[0]
    assert (exchange.old_identification, exchange.new.identification) == (SERIAL_1, "72000001")
    old, new, unit = exchange.registers["energy"]
    assert (old, new, unit) == (pytest.approx(10.0), pytest.approx(0.0), "GJ")
    assert "flow_temperature" not in exchange.registers  # only counters carry over an exchange
    first_new = next(s for s in sink.of("meter1.energy", Quality.GOOD) if s.value == 0.0)
    assert first_new.source_time == exchange.time  # the replacement sits exactly at the new meter's first reading
    await wait_for(lambda: good(sink, "meter1.energy") >= 6, 5, "readings of the new meter")
    assert len(seen) == 1 and driver.exchanges == 1


async def test_read_records_lists_every_record(sim: Simulation) -> None:
    telegrams = await read_records(meter(sim))
    assert [t.more_follows for t in telegrams] == [True, False]
    meanings = [r.meaning for t in telegrams for r in t.records]
    assert meanings[:5] == ["fabrication_number", "energy", "volume", "on_time", "power"]
    assert "error_flags" in meanings and "date" in meanings


async def test_a_serial_master_through_a_pty(sim: Simulation, sink: RecordingSink, run_driver: Any,
                                             wait_for: WaitFor) -> None:
    # The pty's master side is bridged to the simulated gateway: the driver talks to a real tty it set to 2400 8E1.
    master_fd, slave_fd = os.openpty()
    reader, writer = await asyncio.open_connection(*sim.mbus_gateways["m1"].address)
    loop = asyncio.get_running_loop()
    loop.add_reader(master_fd, lambda: writer.write(os.read(master_fd, 4096)))

    async def answers() -> None:
        while data := await reader.read(4096):
            os.write(master_fd, data)

    bridge = asyncio.create_task(answers())
    try:
        driver = MbusDriver(meter(sim, endpoint=os.ttyname(slave_fd)), sink)
        run_driver(driver)
        await wait_for(lambda: good(sink, "meter1.energy_due") >= 2, 5, "reads over the tty")
        assert sink.value("meter1.energy") == pytest.approx(10.0)
        # A pty keeps speed, character size and raw mode (it drops parity bits: tty_attributes' test has those).
        _, _, cflag, lflag, ispeed, ospeed, _ = termios.tcgetattr(slave_fd)
        assert cflag & termios.CSIZE == termios.CS8 and cflag & termios.CREAD
        assert (ispeed, ospeed, lflag & (termios.ECHO | termios.ICANON)) == (termios.B2400, termios.B2400, 0)
    finally:
        loop.remove_reader(master_fd)
        bridge.cancel()
        writer.close()
        os.close(slave_fd)
        os.close(master_fd)


async def test_a_dropped_gateway_connection_is_re_made(sim: Simulation, sink: RecordingSink, run_driver: Any,
                                                       wait_for: WaitFor) -> None:
    driver = MbusDriver(meter(sim), sink)
    run_driver(driver)
    await wait_for(lambda: good(sink, "meter1.energy") >= 1, 5, "a first good read")
    await sim.inject(FaultSpec(device="m1", kind="drop"))
    await wait_for(lambda: driver.stats.reconnects >= 1, 5, "reconnected after the drop")
    before = good(sink, "meter1.energy")
    await wait_for(lambda: good(sink, "meter1.energy") > before, 5, "good reads on the new connection")
