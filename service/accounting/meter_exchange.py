"""A meter exchange the M-Bus driver saw, recorded in accounting as a replacement, with an audit entry.

The driver notices a new identification number in the meter's fixed header and reports the counter
registers either side: the old meter's last value and the new meter's first. Every accounting meter whose
energy register is one of those points gets a replacement (docs/ACCOUNTING.md), converted to GJ, through
the journal like one an operator enters, so it reaches the database exactly once even during an outage.
Without the old meter's last value (the exchange happened while heatrec was not running) nothing is
guessed: the audit entry says so and an operator records the replacement by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from drivers.mbus import MeterExchange
from service.accounting.config import AccountingMeter
from service.audit import AuditEntry, AuditSink
from service.model import utcnow

log = logging.getLogger(__name__)

_GJ_PER = {"GJ": 1.0, "MJ": 1e-3, "kJ": 1e-6, "J": 1e-9, "MWh": 3.6, "kWh": 3.6e-3, "Wh": 3.6e-6}

JournalAppend = Callable[[str, dict[str, Any]], Awaitable[Any]]


class MeterExchangeRecorder:
    """Turns the drivers' meter exchanges into accounting replacements and audit entries."""

    def __init__(self, meters: Sequence[AccountingMeter], journal: JournalAppend, audit: AuditSink) -> None:
        self._by_point = {m.energy_point: m for m in meters}
        self._journal = journal
        self._audit = audit
        self._tasks: set[asyncio.Task[int]] = set()
        self.recorded = 0

    def offer(self, exchange: MeterExchange) -> None:
        """The drivers' callback: record in the background (the driver never waits on the disk)."""
        task = asyncio.get_running_loop().create_task(self.record(exchange), name=f"exchange-{exchange.device}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def record(self, exchange: MeterExchange) -> int:
        """Journal one replacement per accounting meter the exchange concerns; returns how many."""
        old_serial = exchange.old.identification if exchange.old is not None else exchange.old_identification
        new_serial = exchange.new.identification
        done = 0
        for pid, (old_value, new_value, unit) in exchange.registers.items():
            point = f"{exchange.device}.{pid}"
            meter = self._by_point.get(point)
            if meter is None or unit not in _GJ_PER:
                continue
            requested = {"old_serial": old_serial, "new_serial": new_serial, "point": point,
                         "old_final": old_value, "new_initial": new_value, "unit": unit,
                         "new_meter": str(exchange.new)}
            if old_value is None:
                await self._audit(AuditEntry(f"driver:{exchange.device}", "system", "meter_exchange", meter.id,
                                             requested, None, "not_recorded",
                                             "the old meter's last register is unknown (exchanged while heatrec "
                                             "was not reading it): record the replacement by hand"))
                log.error("meter %s exchanged (%s -> %s) but its last register is unknown: record the "
                          "replacement by hand", meter.id, old_serial, new_serial)
                continue
            factor = _GJ_PER[unit]
            data = {"meter_id": meter.id, "time": exchange.time.isoformat(), "old_serial": old_serial,
                    "new_serial": new_serial, "old_final_gj": old_value * factor,
                    "new_initial_gj": new_value * factor, "entered_by": f"driver:{exchange.device}",
                    "entered_at": utcnow().isoformat()}
            await self._journal("replacement", data)
            await self._audit(AuditEntry(f"driver:{exchange.device}", "system", "meter_exchange", meter.id,
                                         requested, {"old_final_gj": data["old_final_gj"],
                                                     "new_initial_gj": data["new_initial_gj"]},
                                         "recorded", f"meter {old_serial} replaced by {exchange.new}"))
            log.warning("meter %s exchanged: %s -> %s, replacement recorded at %s (old %.6f GJ, new %.6f GJ)",
                        meter.id, old_serial, new_serial, data["time"], data["old_final_gj"], data["new_initial_gj"])
            done += 1
            self.recorded += 1
        return done

    async def wait(self) -> None:
        """Let the recordings in flight finish (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
