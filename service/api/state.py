"""What the API sees of the running service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import CollectorRegistry, Histogram

from service.alarms.manager import AlarmManager
from service.bus import SampleBus
from service.config import HeatrecConfig
from service.control.loop import ControlLoop
from service.writes import WriteArbiter


@dataclass
class ServiceState:
    """Shared, read-mostly view of the service for the API."""

    config: HeatrecConfig
    bus: SampleBus
    pool: asyncpg.Pool
    health: Callable[[], dict[str, tuple[str, str]]] = field(default=lambda: {})
    registry: CollectorRegistry | None = None  # /metrics serves it when set
    latency: Histogram | None = None  # API request latency, observed by a middleware
    alarms: AlarmManager | None = None
    control: ControlLoop | None = None  # [control] configured
    arbiter: WriteArbiter | None = None  # every write; made here when the caller (a test) gives none

    def __post_init__(self) -> None:
        if self.arbiter is None:
            self.arbiter = WriteArbiter.for_control(self.control)
