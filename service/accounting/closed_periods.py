"""Closed settlement periods are closed to readings too: a late sample dated inside one is refused at ingest.

A settlement is computed from the samples of its month; a closed version never changes, and a correction
recomputes the month from the samples then stored. A reading that arrives after the close but is dated
inside the month (a back-dated telegram, a gateway's buffer replayed weeks later) would slip into the
next correction unseen. So the drivers of devices with billing points publish through this guard: a
sample of a contract's point whose source time lies in a month closed for that contract is refused
(counted per point, logged once per point and month) and never reaches the bus, the database or the
live values. What really happened in a closed month is entered by an operator as a manual reading and
settled by a correction (docs/ACCOUNTING.md).

The closed periods come from the settlements table, re-read whenever it changed (every `refresh_s`), and
are kept in a small local file so the guard also knows them when the service starts without its database.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import asyncpg

from service.bus import SampleSink
from service.config import HeatrecConfig
from service.model import Sample
from service.private_files import write_private
from service.storage.database import DB_ERRORS, Database, DatabaseDown

log = logging.getLogger(__name__)
REFRESH_S = 5.0  # how soon a settlement closed elsewhere (another process, the API) closes its readings too

Interval = tuple[datetime, datetime]


def contract_points(cfg: HeatrecConfig) -> dict[str, list[str]]:
    """Per contract, every point its settlement reads: meter registers and sensors, heat-pump electricity."""
    acc = cfg.accounting
    if acc is None:
        return {}
    meters = {m.id: m for m in acc.meters}
    pumps = {h.id: h for h in acc.heat_pumps}
    out: dict[str, list[str]] = {}
    for c in acc.contracts:
        points: list[str] = []
        for mid in c.meters:
            m = meters[mid]
            points += [p for p in (m.energy_point, m.flow_point, m.flow_temperature_point,
                                   m.return_temperature_point) if p]
        points += [pumps[h].electricity_point for h in c.heat_pumps if h in pumps]
        out[c.id] = list(dict.fromkeys(points))
    return out


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class ClosedPeriods:
    """A SampleSink in front of the bus that refuses readings dated inside closed settlement periods."""

    def __init__(self, cfg: HeatrecConfig, sink: SampleSink, *, state_file: Path | None = None,
                 refresh_s: float = REFRESH_S) -> None:
        self._sink = sink
        self._contracts = contract_points(cfg)
        self.points: frozenset[str] = frozenset(p for ps in self._contracts.values() for p in ps)
        self._state_file = state_file
        self._refresh_s = refresh_s
        self._periods: dict[str, set[Interval]] = {}  # contract -> closed [start, end)
        self._closed: dict[str, list[Interval]] = {}  # point -> merged closed intervals, sorted
        self._starts: dict[str, list[datetime]] = {}  # point -> their starts, for bisect
        self._horizon: dict[str, datetime] = {}  # point -> end of its latest closed period
        self._stamp: tuple[int, int] | None = None  # (rows, max id) of the settlements table as last read
        self._logged: set[tuple[str, datetime]] = set()  # (point, period start) refusals already logged
        self.refused: dict[str, int] = {}  # point -> samples refused
        self._load_file()

    # ------------------------------------------------------------------ the sink

    def publish(self, sample: Sample) -> None:
        """Forward a sample, unless it is a late reading for a closed period of one of its contracts."""
        horizon = self._horizon.get(sample.point)
        if horizon is None or sample.source_time >= horizon:  # the usual case: a live reading
            self._sink.publish(sample)
            return
        period = self._inside(sample.point, sample.source_time)
        if period is None:
            self._sink.publish(sample)
            return
        self.refused[sample.point] = self.refused.get(sample.point, 0) + 1
        if (sample.point, period[0]) not in self._logged:
            self._logged.add((sample.point, period[0]))
            log.warning("%s: a reading dated %s arrived for a closed settlement period (%s .. %s): refused; "
                        "enter what really happened as a manual reading and correct the settlement",
                        sample.point, sample.source_time.isoformat(), period[0].isoformat(), period[1].isoformat())

    def _inside(self, point: str, t: datetime) -> Interval | None:
        starts = self._starts.get(point)
        if not starts:
            return None
        i = bisect.bisect_right(starts, t) - 1
        if i < 0:
            return None
        a, b = self._closed[point][i]
        return (a, b) if a <= t < b else None

    def is_closed(self, point: str, t: datetime) -> bool:
        """Whether a reading of `point` dated `t` would be refused."""
        return self._inside(point, t) is not None

    # ------------------------------------------------------------------ what is closed

    def close(self, contract: str, start: datetime, end: datetime) -> None:
        """Mark one contract's period closed now (the database's list is re-read too, every refresh)."""
        if contract in self._contracts:
            self._periods.setdefault(contract, set()).add((start, end))
            self._rebuild()

    def _set(self, rows: Iterable[tuple[str, datetime, datetime]]) -> bool:
        periods: dict[str, set[Interval]] = {}
        for contract, start, end in rows:
            if contract in self._contracts:
                periods.setdefault(contract, set()).add((start, end))
        # Closed stays closed: a period this process saw closed is not reopened by a shorter list (a restore).
        for contract, known in self._periods.items():
            periods.setdefault(contract, set()).update(known)
        changed = periods != self._periods
        self._periods = periods
        self._rebuild()
        return changed

    def _rebuild(self) -> None:
        per_point: dict[str, list[Interval]] = {}
        for contract, intervals in self._periods.items():
            for p in self._contracts.get(contract, []):
                per_point.setdefault(p, []).extend(intervals)
        closed = {p: _merge(iv) for p, iv in per_point.items() if iv}
        # Swapped in whole: publish() runs on the same loop, but never sees half a table.
        self._closed = closed
        self._starts = {p: [a for a, _ in iv] for p, iv in closed.items()}
        self._horizon = {p: iv[-1][1] for p, iv in closed.items()}

    async def refresh(self, db: Database | asyncpg.Pool) -> bool:
        """Re-read the closed periods if the settlements table changed; True when they changed."""
        stamp_row = await db.fetchrow("SELECT count(*) AS n, coalesce(max(id), 0) AS top FROM settlements")
        assert stamp_row is not None
        stamp = (int(stamp_row["n"]), int(stamp_row["top"]))
        if stamp == self._stamp:
            return False
        rows = await db.fetch("SELECT DISTINCT contract_id, period_start, period_end FROM settlements")
        changed = self._set((r["contract_id"], r["period_start"], r["period_end"]) for r in rows)
        self._stamp = stamp
        if changed:
            self._save_file()
        return changed

    async def run(self, db: Database) -> None:
        """Follow the settlements table until cancelled; an absent database keeps the periods known so far."""
        while True:
            if db.up:
                try:
                    await self.refresh(db)
                except DatabaseDown:
                    pass  # its supervisor reports the loss; the periods known so far keep guarding
                except DB_ERRORS as err:
                    log.warning("closed settlement periods not re-read (%s); retrying in %.0f s", err,
                                self._refresh_s)
            await asyncio.sleep(self._refresh_s)

    # ------------------------------------------------------------------ the local copy

    def _load_file(self) -> None:
        if self._state_file is None:
            return
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
            rows = [(str(c), datetime.fromisoformat(a), datetime.fromisoformat(b))
                    for c, intervals in data.get("closed", {}).items() for a, b in intervals]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as err:
            log.error("closed settlement periods %s unreadable (%s): known again once the database answers",
                      self._state_file, err)
            return
        self._set(rows)

    def _save_file(self) -> None:
        if self._state_file is None:
            return
        data = {"closed": {c: sorted([a.isoformat(), b.isoformat()] for a, b in iv)
                           for c, iv in sorted(self._periods.items())}}
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            write_private(self._state_file, json.dumps(data, indent=2))
        except OSError as err:  # the guard holds in memory; only a start without the database would miss it
            log.error("closed settlement periods not saved to %s: %s", self._state_file, err)
