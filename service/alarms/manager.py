"""Runs the alarm engine on the live plant and persists what changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime

import asyncpg

from service.alarms import store
from service.alarms.engine import AlarmEngine, HeadroomRule
from service.alarms.model import Alarm, AlarmEvent, AlarmState
from service.bus import SampleBus
from service.config import AlarmsConfig
from service.model import utcnow
from service.storage.database import DB_ERRORS, Database
from service.storage.journal import Journal

log = logging.getLogger(__name__)


class AlarmManager:
    """Evaluates alarms every interval; operator actions go through it so they are stored too."""

    def __init__(self, cfg: AlarmsConfig, devices: list[str], bus: SampleBus, pool: Database | asyncpg.Pool,
                 device_states: Callable[[], Mapping[str, str]], now: Callable[[], datetime] = utcnow,
                 journal: Journal | None = None, *, serial_devices: list[str] | None = None,
                 device_faults: Callable[[], Mapping[str, str | None]] | None = None,
                 headroom: list[HeadroomRule] | None = None) -> None:
        self.engine = AlarmEngine(cfg, devices, serial_devices=serial_devices, headroom=headroom)
        self._cfg, self._bus, self._states, self._now = cfg, bus, device_states, now
        self._faults = device_faults  # per device: a serial mismatch its driver saw lately, or None
        self._pool = pool if isinstance(pool, Database) else Database.from_pool(pool)
        self._journal = journal  # with one, every change is durable at once and stored when the database can
        self._lock = asyncio.Lock()  # one writer of alarm rows at a time: events stay in order
        self._listeners: list[asyncio.Queue[dict[str, object]]] = []
        self._observers: list[Callable[[AlarmEvent, Alarm], None]] = []

    def observe(self, callback: Callable[[AlarmEvent, Alarm], None]) -> None:
        """Call `callback(event, alarm)` on every change; it must return at once (e.g. only queue)."""
        self._observers.append(callback)

    def listen(self, maxsize: int = 1000) -> asyncio.Queue[dict[str, object]]:
        """A queue that receives every alarm event as a JSON-ready dict (live streams)."""
        q: asyncio.Queue[dict[str, object]] = asyncio.Queue(maxsize)
        self._listeners.append(q)
        return q

    def unlisten(self, q: asyncio.Queue[dict[str, object]]) -> None:
        """Stop delivering to a listener."""
        if q in self._listeners:
            self._listeners.remove(q)

    def _notify(self, events: list[AlarmEvent]) -> None:
        for ev in events:
            item: dict[str, object] = {"alarm_id": ev.alarm_id, "time": ev.time.isoformat(), "old_state": ev.old.value,
                                       "new_state": ev.new.value, "value": ev.value, "by": ev.by,
                                       "message": ev.message}
            for q in self._listeners:
                if not q.full():  # a slow listener misses events; it never blocks alarm handling
                    q.put_nowait(item)
            for observe in self._observers:
                try:
                    observe(ev, self.engine.alarms[ev.alarm_id])
                except Exception:  # an observer's bug must not stop alarm handling
                    log.exception("alarm observer %r failed", observe)

    async def start(self) -> None:
        """Restore saved states and write the full alarm list.

        With the database away the alarms start from their configuration (an active condition is raised
        again, unacknowledged: the safe side), and the list is stored once the database is back.
        """
        if self._journal is None or self._pool.up:
            try:
                await store.load_states(self._pool, self.engine.alarms)
            except DB_ERRORS as err:
                if self._journal is None:
                    raise
                log.warning("alarm states not restored (%s): alarms start from their configuration", err)
        await self._store(list(self.engine.alarms.values()), [])

    async def run(self) -> None:
        """Evaluate until cancelled."""
        while True:
            await asyncio.sleep(self._cfg.evaluate_interval_s)
            try:
                await self.evaluate_once()
            except DB_ERRORS as err:
                # The state stays in memory; it is saved with the next change once the database answers.
                log.warning("could not store alarm changes: %s", err)

    async def evaluate_once(self) -> list[AlarmEvent]:
        """One evaluation cycle; returns and stores the transitions."""
        events = self.engine.evaluate(self._bus.latest, self._states(), self._now(),
                                      self._faults() if self._faults is not None else None)
        if events:
            for ev in events:
                level = logging.WARNING if ev.new is AlarmState.UNACK_ACTIVE else logging.INFO
                log.log(level, "alarm %s: %s -> %s (%s)", ev.alarm_id, ev.old.value, ev.new.value, ev.message)
            await self._save(events)
        return events

    async def _save(self, events: list[AlarmEvent]) -> None:
        self._notify(events)
        changed = {e.alarm_id for e in events}
        await self._store([self.engine.alarms[i] for i in changed], events)

    async def _store(self, alarms: list[Alarm], events: list[AlarmEvent]) -> None:
        async with self._lock:
            if self._journal is not None:
                await self._journal.append("alarms", store.journal_record(alarms, events))
            else:
                await store.save(self._pool, alarms, events)

    async def acknowledge(self, alarm_id: str, by: str) -> AlarmEvent:
        """Acknowledge and store (AlarmError when it does not apply)."""
        ev = self.engine.acknowledge(alarm_id, by, self._now())
        await self._save([ev])
        return ev

    async def shelve(self, alarm_id: str, by: str, duration_s: float) -> AlarmEvent:
        """Shelve and store."""
        ev = self.engine.shelve(alarm_id, by, duration_s, self._now())
        await self._save([ev])
        return ev

    async def unshelve(self, alarm_id: str, by: str) -> AlarmEvent:
        """Unshelve and store."""
        ev = self.engine.unshelve(alarm_id, by, self._now())
        await self._save([ev])
        return ev
