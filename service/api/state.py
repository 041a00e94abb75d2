"""What the API sees of the running service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import CollectorRegistry, Histogram

from service.accounting.closed_periods import ClosedPeriods
from service.alarms.manager import AlarmManager
from service.audit import AuditLog, AuditSink
from service.bus import SampleBus
from service.config import HeatrecConfig
from service.control.loop import ControlLoop
from service.dispatch.task import DispatchTask
from service.storage.database import Database
from service.storage.journal import Journal
from service.token_store import TokenStore
from service.writes import WriteArbiter


@dataclass
class ServiceState:
    """Shared, read-mostly view of the service for the API."""

    config: HeatrecConfig
    bus: SampleBus
    pool: Database | asyncpg.Pool | None  # a bare pool (tests, tools) is wrapped as a Database that is up
    health: Callable[[], dict[str, tuple[str, str]]] = field(default=lambda: {})
    registry: CollectorRegistry | None = None  # /metrics serves it when set
    latency: Histogram | None = None  # API request latency, observed by a middleware
    alarms: AlarmManager | None = None
    control: ControlLoop | None = None  # [control] configured
    arbiter: WriteArbiter | None = None  # every write; made here when the caller (a test) gives none
    tokens: TokenStore = field(default_factory=lambda: TokenStore(None))  # in memory unless the service gives one
    audit: AuditSink | None = None  # where audit entries go (the journal); straight to the database if unset
    journal: Journal | None = None  # records (manual readings) that must outlive a database outage
    closed_periods: ClosedPeriods | None = None  # told at once when a month is closed: no late reading slips in
    dispatch: DispatchTask | None = None  # [dispatch] configured
    db: Database = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.pool, Database):
            self.db = self.pool
        elif self.pool is not None:
            self.db = Database.from_pool(self.pool, self.config.database)
        else:
            self.db = Database(self.config.database)  # never run: always away
        self.pool = self.db  # the routes' queries all go through the gate
        if self.audit is None:
            self.audit = AuditLog(self.db).record
        if self.arbiter is None:
            self.arbiter = WriteArbiter.for_control(self.control)
