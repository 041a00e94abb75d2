"""What a reported meter exchange becomes in accounting: replacements in GJ, audit entries, nothing guessed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.config import MbusDevice, MbusPoint
from drivers.mbus import MbusDriver, MeterExchange, MeterIdentity
from drivers.mbus_records import Header, Record, Telegram
from drivers.mqtt_serials import SerialFile
from service.accounting.config import AccountingMeter
from service.accounting.meter_exchange import MeterExchangeRecorder
from service.audit import AuditEntry
from service.model import Quality
from tests.drivers.conftest import RecordingSink

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NEW = MeterIdentity("72000001", "KAM", 1, 4)


def accounting_meter(point: str) -> AccountingMeter:
    return AccountingMeter(id="meter1", energy_point=point, qp_m3h=400.0, qi_m3h=4.0, max_power_kw=5000.0)


class Trail:
    def __init__(self) -> None:
        self.journal: list[tuple[str, dict[str, Any]]] = []
        self.audit: list[AuditEntry] = []

    async def append(self, kind: str, data: dict[str, Any]) -> str:
        self.journal.append((kind, data))
        return "id"

    async def record(self, entry: AuditEntry) -> None:
        self.audit.append(entry)


async def test_the_accounting_meters_register_becomes_a_replacement_in_gj() -> None:
    trail = Trail()
    recorder = MeterExchangeRecorder([accounting_meter("m.energy")], trail.append, trail.record)
    exchange = MeterExchange("m", T, MeterIdentity("71234567", "KAM", 1, 4), "71234567", NEW,
                             {"energy": (2500.0, 0.5, "kWh"), "volume": (10.0, 0.0, "m3")})
    assert await recorder.record(exchange) == 1
    [(kind, data)] = trail.journal
    assert kind == "replacement"
    assert (data["meter_id"], data["time"], data["old_serial"], data["new_serial"]) == (
        "meter1", T.isoformat(), "71234567", "72000001")
    assert data["old_final_gj"] == pytest.approx(9.0) and data["new_initial_gj"] == pytest.approx(0.0018)
    [entry] = trail.audit
    assert (entry.principal, entry.action, entry.target, entry.outcome) == ("driver:m", "meter_exchange", "meter1",
                                                                           "recorded")


async def test_an_unknown_old_register_is_audited_not_guessed() -> None:
    trail = Trail()
    recorder = MeterExchangeRecorder([accounting_meter("m.energy")], trail.append, trail.record)
    exchange = MeterExchange("m", T, None, "71234567", NEW, {"energy": (None, 0.0, "GJ")})
    assert await recorder.record(exchange) == 0
    assert trail.journal == []
    assert [e.outcome for e in trail.audit] == ["not_recorded"]


async def test_a_point_no_accounting_meter_bills_is_left_alone() -> None:
    trail = Trail()
    recorder = MeterExchangeRecorder([accounting_meter("other.energy")], trail.append, trail.record)
    assert await recorder.record(MeterExchange("m", T, None, "1", NEW, {"energy": (1.0, 0.0, "GJ")})) == 0
    assert trail.journal == [] and trail.audit == []


def _telegram(identification: str, energy_j: float) -> Telegram:
    header = Header(identification, "KAM", 1, 4, 1, 0, 0)
    record = Record(0, "energy", "instantaneous", 0, 0, 0, "J", energy_j, b"\x04", b"\x0e", b"")
    return Telegram(header, [record])


def test_an_exchange_found_after_a_restart_reports_the_old_register_as_unknown(tmp_path: Path) -> None:
    memory = SerialFile(tmp_path / "ids.json")
    memory.remember("meter1", "71234567")  # what the previous run read
    device = MbusDevice(id="meter1", protocol="mbus", endpoint="127.0.0.1:1", primary_address=1,
                        points=[MbusPoint(id="energy", record="energy", unit="GJ", kind="counter")])
    seen: list[MeterExchange] = []
    sink = RecordingSink()
    driver = MbusDriver(device, sink, identities=memory, on_exchange=seen.append)
    driver._publish_telegrams([_telegram("72000001", 1e6)])
    [exchange] = seen
    assert (exchange.old, exchange.old_identification, exchange.registers) == (None, "71234567",
                                                                              {"energy": (None, 0.001, "GJ")})
    assert SerialFile(tmp_path / "ids.json").get("meter1") == "72000001"  # the new meter is tracked from now on
    driver._publish_telegrams([_telegram("72000001", 2e6)])
    assert len(seen) == 1 and sink.value("meter1.energy") == pytest.approx(0.002)
    assert sink.quality("meter1.energy") is Quality.GOOD


def test_the_configured_identification_is_the_first_meter(tmp_path: Path) -> None:
    device = MbusDevice(id="meter1", protocol="mbus", endpoint="127.0.0.1:1", primary_address=1,
                        identification="71234567",
                        points=[MbusPoint(id="energy", record="energy", unit="GJ", kind="counter")])
    seen: list[MeterExchange] = []
    driver = MbusDriver(device, RecordingSink(), identities=SerialFile(tmp_path / "ids.json"),
                        on_exchange=seen.append)
    driver._publish_telegrams([_telegram("71234567", 5e9)])
    driver._publish_telegrams([_telegram("72000001", 0.0)])
    assert [(e.old_identification, e.registers["energy"]) for e in seen] == [("71234567", (5.0, 0.0, "GJ"))]
