"""Control and audit endpoints: GET/PUT /api/v1/control, GET /api/v1/audit."""

# No `from __future__ import annotations`: FastAPI must resolve the dependency aliases defined
# inside add_control_routes, which string annotations would hide from it.
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from service.api.deps import NEEDS_DATABASE
from service.api.paging import CURSOR_HELP, LIMIT_HELP, MAX_LIMIT, Page, page_links
from service.api.params import NO_CONTROL
from service.audit import read_audit
from service.auth import Principal, Role
from service.control.loop import ControlLoop
from service.control.model import ControlRequest, ControlStatus
from service.writes import WriteArbiter

_AUDIT_EXAMPLE: JsonDict = {"seq": 1042, "time": "2026-03-01T12:00:00Z", "principal": "shift-operator",
                            "role": "operator", "action": "control.set",
                            "target": "control.supply_temperature_target", "requested": 78.0,
                            "applied": 78.0, "outcome": "accepted", "detail": "old=None new=78"}
_STATUS_EXAMPLE = {"mode": "auto", "supply_temperature_target": 78.0, "target_source": "override",
                   "supply_temperature": 77.6, "constraint": None, "safe_state": False,
                   "heat_pump_setpoints": {"hp1": 78.9}, "outdoor_temperature": 4.5}
_STATUS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": _STATUS_EXAMPLE}}}}


class AuditEntryOut(BaseModel):
    """One audited write request: who, when, what was asked, what was applied, and the outcome."""

    model_config = ConfigDict(json_schema_extra={"examples": [_AUDIT_EXAMPLE]})
    seq: int = Field(description="increasing sequence number")
    time: datetime
    principal: str
    role: str
    action: str
    target: str
    requested: Any
    applied: Any
    outcome: str
    detail: str


class AuditPage(Page):
    """Newest entries first; `next` (or `cursor=next_cursor`) fetches the next, older page."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"entries": [_AUDIT_EXAMPLE], "next_cursor": "1042", "next": "/api/v1/audit?limit=1&cursor=1042"}]})
    entries: list[AuditEntryOut]


_REQUEST_EXAMPLES = {
    "raise target": {"summary": "hold the supply at 78 °C until cleared",
                     "value": {"supply_temperature_target": 78.0}},
    "back to the curve": {"summary": "clear the override", "value": {"supply_temperature_target": None}},
    "manual": {"summary": "manual mode with a fixed heat-pump setpoint",
               "value": {"mode": "manual", "heat_pump_setpoint": 70.0}},
    "auto": {"summary": "automatic control", "value": {"mode": "auto"}},
}


def add_control_routes(app: FastAPI, require: Callable[[Role], Callable[[Request], Awaitable[Principal]]]) -> None:
    """Register the control and audit endpoints on the app."""

    def loop(request: Request) -> ControlLoop:
        c: ControlLoop | None = request.app.state.heatrec.control
        if c is None:
            raise HTTPException(404, "control is not enabled: add a [control] section to the plant config "
                                     "(docs/CONFIG.md)")
        return c

    Viewer = Annotated[Principal, Depends(require("viewer"))]
    Operator = Annotated[Principal, Depends(require("operator"))]
    Loop = Annotated[ControlLoop, Depends(loop)]

    @app.get("/api/v1/control", response_model=ControlStatus, tags=["control"], responses=_STATUS_RESPONSE)
    async def get_control(_: Viewer, c: Loop) -> ControlStatus:
        """Mode, supply-temperature target and measurement, heat-pump setpoints, active constraint (viewer)."""
        return c.status()

    @app.put("/api/v1/control", response_model=ControlStatus, tags=["control"], responses=_STATUS_RESPONSE)
    async def put_control(who: Operator, _: Loop, request: Request,
                          body: Annotated[ControlRequest, Body(openapi_examples=_REQUEST_EXAMPLES)]) -> ControlStatus:
        """Change mode, target override (null returns to the curve) or, in manual, the heat-pump setpoint (operator).

        Only the fields present change; every change is audited with the old and new value.
        """
        if not body.model_fields_set:
            raise HTTPException(422, "empty request: give at least one of mode, supply_temperature_target, "
                                     "heat_pump_setpoint")
        # Through the plant's write arbiter, like every writer; ControlRequestError: 422 or 409 (service/errors.py).
        arbiter: WriteArbiter = request.app.state.heatrec.arbiter
        return await arbiter.request_control(body, who.name, who.role)

    @app.get("/api/v1/audit", response_model=AuditPage, tags=["control"], responses=NEEDS_DATABASE)
    async def audit(_: Viewer, request: Request,
                    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=LIMIT_HELP)] = 100,
                    cursor: Annotated[str | None, Query(pattern=r"^[1-9][0-9]{0,17}$", description=CURSOR_HELP)]
                    = None,
                    target: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL,
                                                        description="only entries for this target")] = None,
                    ) -> AuditPage:
        """Audited write requests (API, SCADA), newest first, one page at a time (viewer)."""
        rows = await read_audit(request.app.state.heatrec.pool, limit=limit,
                                before=int(cursor) if cursor else None, target=target)
        entries = [AuditEntryOut(**r) for r in rows]
        last = str(entries[-1].seq) if len(entries) == limit else None
        return AuditPage(entries=entries, **page_links(request, last))
