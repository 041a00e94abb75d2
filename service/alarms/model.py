"""Alarm states (ISA-18.2) and the transitions operators and conditions cause."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class AlarmState(str, enum.Enum):  # noqa: UP042 - str values are the API and database contract
    """ISA-18.2 alarm states (out-of-service and suppressed-by-design are not modelled)."""

    NORMAL = "normal"  # condition clear, nothing to acknowledge
    UNACK_ACTIVE = "unack_active"  # condition present, not yet acknowledged
    ACKED_ACTIVE = "acked_active"  # condition present, acknowledged
    RTN_UNACK = "rtn_unack"  # condition cleared before anyone acknowledged it
    SHELVED = "shelved"  # temporarily hidden by an operator; returns when the shelf expires


class Severity(str, enum.Enum):  # noqa: UP042 - str values are the API and database contract
    """How urgent an alarm is."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass
class Alarm:
    """One alarm's live state."""

    id: str  # stable: e.g. "hp1.supply_temperature:high", "device:hp1:offline"
    source: str  # point id or device id
    kind: str  # high, low, quality, offline, state
    severity: Severity
    message: str
    state: AlarmState = AlarmState.NORMAL
    active: bool = False
    value: float | None = None
    since: datetime | None = None  # when the current state began
    shelved_until: datetime | None = None
    acked_by: str | None = None
    detail: str | None = None  # what the condition is now, e.g. the vendor text of an active fault code
    # Internal: when the raw condition first appeared (on-delay) and cleared (off-delay).
    pending_since: datetime | None = field(default=None, repr=False)

    @property
    def needs_ack(self) -> bool:
        """True when an operator still has to acknowledge it."""
        return self.state in (AlarmState.UNACK_ACTIVE, AlarmState.RTN_UNACK)


@dataclass(frozen=True)
class AlarmEvent:
    """A state change, for storage, the audit trail and live streams."""

    alarm_id: str
    time: datetime
    old: AlarmState
    new: AlarmState
    value: float | None
    by: str | None  # operator name for ack/shelve, None for condition changes
    message: str
