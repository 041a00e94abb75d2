"""Alarm endpoints: list, events, acknowledge, shelve, unshelve."""

# No `from __future__ import annotations`: FastAPI must resolve the dependency aliases defined
# inside add_alarm_routes, which string annotations would hide from it.
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from service.alarms.engine import AlarmError
from service.alarms.manager import AlarmManager
from service.alarms.model import Alarm, AlarmEvent
from service.alarms.store import recent_events
from service.auth import Principal, Role

StateFilter = Literal["normal", "unack_active", "acked_active", "rtn_unack", "shelved"]


class AlarmOut(BaseModel):
    """One alarm's live state."""

    id: str
    source: str
    kind: str
    severity: str
    message: str
    state: str
    active: bool
    needs_ack: bool
    value: float | None
    since: datetime | None
    shelved_until: datetime | None
    acked_by: str | None

    @classmethod
    def of(cls, a: Alarm) -> "AlarmOut":
        """From the engine's alarm."""
        return cls(id=a.id, source=a.source, kind=a.kind, severity=a.severity.value, message=a.message,
                   state=a.state.value, active=a.active, needs_ack=a.needs_ack, value=a.value, since=a.since,
                   shelved_until=a.shelved_until, acked_by=a.acked_by)


class AlarmList(BaseModel):
    """Alarms matching the filter."""

    alarms: list[AlarmOut]


class EventOut(BaseModel):
    """One alarm state change."""

    time: datetime
    alarm_id: str
    old_state: str
    new_state: str
    value: float | None
    by: str | None
    message: str

    @classmethod
    def of(cls, e: AlarmEvent) -> "EventOut":
        """From an engine event."""
        return cls(time=e.time, alarm_id=e.alarm_id, old_state=e.old.value, new_state=e.new.value, value=e.value,
                   by=e.by, message=e.message)


class EventList(BaseModel):
    """Newest events first."""

    events: list[EventOut]


class ShelveIn(BaseModel):
    """How long to shelve an alarm."""

    model_config = ConfigDict(extra="forbid", strict=True)
    duration_s: float = Field(gt=0, le=7 * 86400, description="seconds, at most a week",
                              json_schema_extra={"examples": [3600]})


def add_alarm_routes(app: FastAPI, require: Callable[[Role], Callable[[Request], Awaitable[Principal]]]) -> None:
    """Register the alarm endpoints on the app."""

    def manager(request: Request) -> AlarmManager:
        m: AlarmManager | None = request.app.state.heatrec.alarms
        if m is None:
            raise HTTPException(404, "alarms are not enabled in this service")
        return m

    Viewer = Annotated[Principal, Depends(require("viewer"))]
    Operator = Annotated[Principal, Depends(require("operator"))]
    Manager = Annotated[AlarmManager, Depends(manager)]

    @app.get("/api/v1/alarms", response_model=AlarmList, tags=["alarms"])
    async def list_alarms(_: Viewer, m: Manager, state: StateFilter | None = None,
                          active: bool | None = None, needs_ack: bool | None = None) -> AlarmList:
        """Alarms, optionally filtered by state, active condition or pending acknowledgement (viewer)."""
        out = [a for a in m.engine.alarms.values()
               if (state is None or a.state.value == state) and (active is None or a.active == active)
               and (needs_ack is None or a.needs_ack == needs_ack)]
        return AlarmList(alarms=[AlarmOut.of(a) for a in sorted(out, key=lambda a: a.id)])

    @app.get("/api/v1/alarms/events", response_model=EventList, tags=["alarms"])
    async def alarm_events(_: Viewer, m: Manager, request: Request,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                           alarm_id: str | None = None) -> EventList:
        """Recent alarm state changes, newest first (viewer)."""
        rows = await recent_events(request.app.state.heatrec.pool, limit, alarm_id)
        return EventList(events=[EventOut(time=r["time"], alarm_id=r["alarm_id"], old_state=r["old_state"],
                                          new_state=r["new_state"], value=r["value"], by=r["by_user"],
                                          message=r["message"]) for r in rows])

    async def act(action: Callable[[], Awaitable[AlarmEvent]]) -> EventOut:
        try:
            return EventOut.of(await action())
        except AlarmError as err:
            status = 404 if str(err).startswith("no alarm") else 409
            raise HTTPException(status, str(err)) from None

    @app.post("/api/v1/alarms/{alarm_id}/acknowledge", response_model=EventOut, tags=["alarms"])
    async def acknowledge(alarm_id: str, who: Operator, m: Manager) -> EventOut:
        """Acknowledge an alarm (operator); 409 when there is nothing to acknowledge."""
        return await act(lambda: m.acknowledge(alarm_id, who.name))

    @app.post("/api/v1/alarms/{alarm_id}/shelve", response_model=EventOut, tags=["alarms"])
    async def shelve(alarm_id: str, body: ShelveIn, who: Operator, m: Manager) -> EventOut:
        """Shelve an alarm for `duration_s` seconds (operator)."""
        return await act(lambda: m.shelve(alarm_id, who.name, body.duration_s))

    @app.post("/api/v1/alarms/{alarm_id}/unshelve", response_model=EventOut, tags=["alarms"])
    async def unshelve(alarm_id: str, who: Operator, m: Manager) -> EventOut:
        """Return a shelved alarm to service (operator)."""
        return await act(lambda: m.unshelve(alarm_id, who.name))
