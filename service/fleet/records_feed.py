"""The site's journal, which also hands its alarm, event and audit records to the uplink (docs/FLEET.md).

A record is appended (fsync'd) to the journal first, as ever, then offered to the uplink, which makes it
durable in its outbox; the journal's caller waits for that (at most `FORWARD_WAIT_S`), so an accepted
operator action has its audit entry on the way to the centre too, whatever the local database does.
Records journaled before the uplink is running wait in memory for it; and at open, every record the
journal still holds (not yet in the local database, so possibly not yet in the outbox when the service
stopped) is offered again. The centre stores each record once by its journal id, so offering one twice
costs nothing but bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from service.fleet.records import KINDS, Record, journaled
from service.storage.journal import Journal

log = logging.getLogger(__name__)

FORWARD_WAIT_S = 2.0
Sink = Callable[[Record], "asyncio.Future[None] | None"]  # None: taken, but not yet being written


class ForwardingJournal(Journal):
    """A Journal whose alarm, event and audit records also go to the uplink's outbox."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink: Sink | None = None
        self._early: list[Record] = []
        self.forwarded = 0

    def open(self) -> None:
        """Open the journal; what it holds from before is offered to the uplink again."""
        super().open()
        for _end, line in self._pending_lines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                rec = json.loads(line)
                self._early += self._records(str(rec["id"]), str(rec["kind"]), rec["data"])
        if self._early:
            log.info("journal %s: %d records from before are offered to the uplink again", self.dir, len(self._early))

    def forward_to(self, sink: Sink) -> None:
        """From now on, hand the records to `sink` (the uplink's `offer_record`), those waiting first."""
        self._sink = sink
        early, self._early = self._early, []
        for rec in early:
            sink(rec)

    async def append(self, kind: str, data: dict[str, Any]) -> str:
        """Append to the journal, then to the uplink's outbox (waited for, briefly); the journal's id."""
        rid = await super().append(kind, data)
        for rec in self._records(rid, kind, data):
            self.forwarded += 1
            if self._sink is None:
                self._early.append(rec)
                continue
            done = self._sink(rec)
            if done is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(done), FORWARD_WAIT_S)
                except TimeoutError:
                    log.warning("journal: the uplink's outbox did not take record %s within %.0f s; it still "
                                "goes when it does", rid, FORWARD_WAIT_S)
                except Exception as err:  # the uplink's failure never fails a journaled action
                    log.error("journal: record %s not in the uplink's outbox: %s", rid, err)
        return rid

    @staticmethod
    def _records(rid: str, kind: str, data: dict[str, Any]) -> list[Record]:
        if kind not in KINDS:
            return []
        try:
            return [journaled(kind, rid, data)]
        except (ValueError, KeyError, TypeError, OverflowError) as err:
            log.error("journal: %s record %s not forwarded to the centre (%s)", kind, rid, err)
            return []
