"""The simulated M-Bus gateway over real loopback TCP: the link layer, the telegram layout and the faults.

Silence is proven without waiting for luck: a request to the silent meter is followed by one to the other
meter, and the first bytes that come back are the other meter's answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers import mbus_frame as mf
from drivers.mbus_records import Telegram, decode
from simulators.config import SimHeatMeter, SimulationConfig
from simulators.errors import SimulatorError
from simulators.runner import Simulation
from simulators.scenario import FaultSpec

pytestmark = pytest.mark.integration


class Master:
    """A bare M-Bus master on one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(self, frame: bytes) -> mf.Frame:
        self.writer.write(frame)
        await self.writer.drain()
        return await asyncio.wait_for(mf.read_frame(self.reader), 5)

    async def telegram(self, address: int, fcb: bool) -> Telegram:
        answer = await self.ask(mf.req_ud2(address, fcb))
        assert answer.kind == "long" and answer.address == address
        return decode(answer.ci, answer.data)


@pytest.fixture
async def sim() -> AsyncIterator[Simulation]:
    meters = [SimHeatMeter(id="m1", protocol="mbus", endpoint="127.0.0.1:0", primary_address=1, serial="71234567",
                           initial_energy_gj=12.5),
              SimHeatMeter(id="m2", protocol="mbus", endpoint="127.0.0.1:0", primary_address=2, serial="71234568")]
    async with Simulation(SimulationConfig(heat_meters=meters), tick_s=None) as simulation:
        yield simulation


@pytest.fixture
async def master(sim: Simulation) -> AsyncIterator[Master]:
    reader, writer = await asyncio.open_connection(*sim.mbus_gateways["m1"].address)
    yield Master(reader, writer)
    writer.close()


async def test_one_gateway_port_serves_both_meters(sim: Simulation) -> None:
    assert sim.mbus_gateways["m1"] is sim.mbus_gateways["m2"]
    assert "M-Bus gateway, primary address 2" in sim.endpoints()["m2"]


async def test_snd_nke_fcb_and_more_records_follow(master: Master) -> None:
    assert (await master.ask(mf.snd_nke(1))).kind == "ack"
    first = await master.telegram(1, fcb=True)
    assert first.header is not None
    assert (first.header.identification, first.header.manufacturer, first.header.medium) == ("71234567", "KAM", 4)
    assert first.more_follows is True
    energy = next(r for r in first.records if r.meaning == "energy")
    assert (energy.value, energy.unit) == (12500 * 1e6, "J")  # 12.5 GJ as 12 500 MJ
    repeat = await master.telegram(1, fcb=True)  # same FCB: the master missed it, the meter repeats
    assert repeat.more_follows is True and repeat.records[1] == first.records[1]
    second = await master.telegram(1, fcb=False)  # toggled: the next telegram
    assert second.more_follows is False
    assert [(r.meaning, r.storage, r.tariff) for r in second.records] == [
        ("energy", 1, 0), ("volume", 1, 0), ("date", 1, 0), ("energy", 0, 1)]
    assert (await master.ask(mf.snd_nke(1))).kind == "ack"  # a reset starts from the first telegram again
    assert (await master.telegram(1, fcb=True)).more_follows is True


async def test_secondary_addressing(master: Master) -> None:
    assert (await master.ask(mf.select_secondary("71234568"))).kind == "ack"
    answer = await master.telegram(mf.ADDRESS_SECONDARY, fcb=True)
    assert answer.header is not None and answer.header.identification == "71234568"
    assert (await master.ask(mf.select_secondary("7123456*"))).kind == "ack"  # wildcard: the first match


async def test_no_answer_and_offline_are_silent(sim: Simulation, master: Master) -> None:
    for kind in ("no_answer", "offline"):
        fault = await sim.inject(FaultSpec(device="m1", kind=kind))  # type: ignore[arg-type]
        master.writer.write(mf.req_ud2(1, fcb=True))
        answer = await master.ask(mf.snd_nke(2))
        assert answer.kind == "ack"  # the first answer on the wire is meter 2's: meter 1 said nothing
        await sim.clear_fault(fault.id)
    assert (await master.ask(mf.snd_nke(1))).kind == "ack"


async def test_bad_checksum_and_truncated_frames(sim: Simulation, master: Master) -> None:
    fault = await sim.inject(FaultSpec(device="m1", kind="bad_checksum"))
    with pytest.raises(mf.FrameError) as err:
        await master.ask(mf.req_ud2(1, fcb=True))
    assert err.value.problem == "checksum"
    await sim.clear_fault(fault.id)
    await sim.inject(FaultSpec(device="m1", kind="truncated"))
    master.writer.write(mf.req_ud2(1, fcb=False))
    head = await asyncio.wait_for(master.reader.readexactly(4), 5)
    assert head[0] == 0x68 and head[1] == head[2]
    master.writer.write(mf.snd_nke(2))
    # What follows half a frame is meter 2's E5: meter 1's frame was cut short, length field notwithstanding.
    rest = await asyncio.wait_for(master.reader.readuntil(b"\xe5"), 5)
    assert len(rest) < head[1] + 2


async def test_meter_exchange_and_error_flags(sim: Simulation, master: Master) -> None:
    await sim.inject(FaultSpec(device="m1", kind="replace", serial="72000001"))
    await sim.inject(FaultSpec(device="m1", kind="meter_error", value=4.0))
    assert (await master.ask(mf.snd_nke(1))).kind == "ack"
    first = await master.telegram(1, fcb=True)
    assert first.header is not None and first.header.identification == "72000001"
    assert first.header.status_errors == 0x10 and first.error_flags == 4
    assert next(r for r in first.records if r.meaning == "energy").value == 0.0
    second = await master.telegram(1, fcb=False)
    assert next(r for r in second.records if r.meaning == "energy").value == 0.0  # due date register too


async def test_unsupported_fault_and_shared_addresses_are_refused(sim: Simulation) -> None:
    with pytest.raises(SimulatorError, match="cannot have fault 'exception'"):
        await sim.inject(FaultSpec(device="m1", kind="exception"))
    with pytest.raises(ValueError, match="share primary address 1"):
        SimulationConfig(heat_meters=[SimHeatMeter(id=i, protocol="mbus", endpoint="127.0.0.1:1") for i in ("a", "b")])
