"""Alarm endpoints: list, events, acknowledge, shelve, unshelve."""

# No `from __future__ import annotations`: FastAPI must resolve the dependency aliases defined
# inside add_alarm_routes, which string annotations would hide from it.
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from service.alarms.manager import AlarmManager
from service.alarms.model import Alarm, AlarmEvent
from service.alarms.store import recent_events
from service.api.deps import NEEDS_DATABASE
from service.api.paging import CURSOR_HELP, LIMIT_HELP, MAX_LIMIT, Page, page_links
from service.api.params import operation_ref as _op
from service.auth import Principal, Role

_ALARM_EXAMPLE: JsonDict = {
    "id": "hp1.supply_temperature:high", "source": "hp1.supply_temperature", "kind": "high", "severity": "high",
    "message": "hp1.supply_temperature above 90.0", "state": "unack_active", "active": True, "needs_ack": True,
    "value": 93.2, "since": "2026-03-01T12:00:00Z", "shelved_until": None, "acked_by": None}
_EVENT_EXAMPLE: JsonDict = {
    "time": "2026-03-01T12:05:00Z", "alarm_id": "hp1.supply_temperature:high", "old_state": "unack_active",
    "new_state": "acked_active", "value": 93.2, "by": "operator-anna", "message": "acknowledged"}


_BY_EVENT = {"alarm_id": "$response.body#/alarm_id"}
# OpenAPI links: an alarm listed can be acknowledged; an acknowledged one shelved; a shelved one unshelved.
_LIST_LINKS = {"AcknowledgeFirst": {"operationRef": _op("/api/v1/alarms/{alarm_id}/acknowledge"),
                                    "parameters": {"alarm_id": "$response.body#/alarms/0/id"},
                                    "description": "acknowledge the first alarm listed"}}
_ACK_LINKS = {"Shelve": {"operationRef": _op("/api/v1/alarms/{alarm_id}/shelve"), "parameters": _BY_EVENT,
                         "description": "shelve the alarm just acknowledged"}}
_SHELVE_LINKS = {"Unshelve": {"operationRef": _op("/api/v1/alarms/{alarm_id}/unshelve"), "parameters": _BY_EVENT,
                              "description": "return the shelved alarm to service"},
                 "Acknowledge": {"operationRef": _op("/api/v1/alarms/{alarm_id}/acknowledge"),
                                 "parameters": _BY_EVENT, "description": "acknowledge it (409 when not needed)"}}
StateFilter = Literal["normal", "unack_active", "acked_active", "rtn_unack", "shelved"]


class AlarmOut(BaseModel):
    """One alarm's live state."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ALARM_EXAMPLE]})
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
    detail: str | None = Field(default=None, description="what is active now, e.g. a vendor fault code's text")

    @classmethod
    def of(cls, a: Alarm) -> "AlarmOut":
        """From the engine's alarm."""
        return cls(id=a.id, source=a.source, kind=a.kind, severity=a.severity.value, message=a.message,
                   state=a.state.value, active=a.active, needs_ack=a.needs_ack, value=a.value, since=a.since,
                   shelved_until=a.shelved_until, acked_by=a.acked_by, detail=a.detail if a.active else None)


class AlarmList(Page):
    """Alarms matching the filter, by id; `next` links the following page when `limit` cut the list."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"next_cursor": "hp1.supply_temperature:high",
         "next": "/api/v1/alarms?limit=1&cursor=hp1.supply_temperature%3Ahigh", "alarms": [_ALARM_EXAMPLE]}]})
    alarms: list[AlarmOut]


class EventOut(BaseModel):
    """One alarm state change."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT_EXAMPLE]})
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


class EventList(Page):
    """Newest events first; `next` links the older events when there are more."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"next_cursor": "4711", "next": "/api/v1/alarms/events?limit=1&cursor=4711", "events": [_EVENT_EXAMPLE]}]})
    events: list[EventOut]


class ShelveIn(BaseModel):
    """How long to shelve an alarm."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"duration_s": 3600}]})
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

    @app.get("/api/v1/alarms", response_model=AlarmList, tags=["alarms"],
             responses={200: {"description": "alarms", "links": _LIST_LINKS}})
    async def list_alarms(_: Viewer, m: Manager, request: Request, state: StateFilter | None = None,
                          active: bool | None = None, needs_ack: bool | None = None,
                          limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=LIMIT_HELP)] = MAX_LIMIT,
                          cursor: Annotated[str | None, Query(max_length=256, description=CURSOR_HELP)] = None,
                          ) -> AlarmList:
        """Alarms by id, optionally filtered by state, active condition or pending acknowledgement (viewer)."""
        # The cursor is the last id returned: ids are unique and sorted, so any string is a valid position.
        out = sorted((a for a in m.engine.alarms.values()
                      if (state is None or a.state.value == state) and (active is None or a.active == active)
                      and (needs_ack is None or a.needs_ack == needs_ack) and (cursor is None or a.id > cursor)),
                     key=lambda a: a.id)
        page = out[:limit]
        more = page[-1].id if len(out) > limit else None
        return AlarmList(alarms=[AlarmOut.of(a) for a in page], **page_links(request, more))

    @app.get("/api/v1/alarms/events", response_model=EventList, tags=["alarms"], responses=NEEDS_DATABASE)
    async def alarm_events(_: Viewer, m: Manager, request: Request,
                           limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=LIMIT_HELP)] = 100,
                           alarm_id: str | None = None,
                           cursor: Annotated[str | None, Query(pattern=r"^[1-9][0-9]{0,17}$",
                                                               description=CURSOR_HELP)] = None) -> EventList:
        """Alarm state changes, newest first, `limit` per page (viewer); 404 for a cursor to a deleted event."""
        # One row more than asked tells whether another page follows (UnknownCursor: 404).
        rows = await recent_events(request.app.state.heatrec.pool, limit + 1, alarm_id,
                                   int(cursor) if cursor else None)
        more = str(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return EventList(events=[EventOut(time=r["time"], alarm_id=r["alarm_id"], old_state=r["old_state"],
                                          new_state=r["new_state"], value=r["value"], by=r["by_user"],
                                          message=r["message"]) for r in rows[:limit]],
                         **page_links(request, more))

    async def act(action: Callable[[], Awaitable[AlarmEvent]]) -> EventOut:
        return EventOut.of(await action())  # UnknownAlarm: 404, another AlarmError: 409

    @app.post("/api/v1/alarms/{alarm_id}/acknowledge", response_model=EventOut, tags=["alarms"],
              responses={200: {"description": "the transition", "links": _ACK_LINKS}})
    async def acknowledge(alarm_id: str, who: Operator, m: Manager) -> EventOut:
        """Acknowledge an alarm (operator); 409 when there is nothing to acknowledge."""
        return await act(lambda: m.acknowledge(alarm_id, who.name))

    @app.post("/api/v1/alarms/{alarm_id}/shelve", response_model=EventOut, tags=["alarms"],
              responses={200: {"description": "the transition", "links": _SHELVE_LINKS}})
    async def shelve(alarm_id: str, body: ShelveIn, who: Operator, m: Manager) -> EventOut:
        """Shelve an alarm for `duration_s` seconds (operator)."""
        return await act(lambda: m.shelve(alarm_id, who.name, body.duration_s))

    @app.post("/api/v1/alarms/{alarm_id}/unshelve", response_model=EventOut, tags=["alarms"])
    async def unshelve(alarm_id: str, who: Operator, m: Manager) -> EventOut:
        """Return a shelved alarm to service (operator)."""
        return await act(lambda: m.unshelve(alarm_id, who.name))
