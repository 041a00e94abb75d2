"""Dispatch endpoints: GET /api/v1/dispatch (plan, prices, fallback), PUT /api/v1/dispatch (switch on/off)."""

# No `from __future__ import annotations`: FastAPI must resolve the dependency aliases defined
# inside add_dispatch_routes, which string annotations would hide from it.
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Body, Depends, FastAPI, HTTPException, Request

from service.auth import Principal, Role
from service.dispatch.status import DispatchSetRequest, DispatchStatus, dispatch_status
from service.dispatch.task import DispatchTask

_SET_EXAMPLES = {"off": {"summary": "today's supply-temperature control, no plan", "value": {"enabled": False}},
                 "on": {"summary": "the plan constrains the heat pumps again", "value": {"enabled": True}}}


def add_dispatch_routes(app: FastAPI, require: Callable[[Role], Callable[[Request], Awaitable[Principal]]]) -> None:
    """Register the dispatch endpoints on the app (none needs the database)."""

    def task(request: Request) -> DispatchTask:
        t: DispatchTask | None = getattr(request.app.state.heatrec, "dispatch", None)
        if t is None:
            raise HTTPException(404, "dispatch is not enabled: add a [dispatch] section to the plant config "
                                     "(docs/CONFIG.md, docs/DISPATCH.md)")
        return t

    Viewer = Annotated[Principal, Depends(require("viewer"))]
    Operator = Annotated[Principal, Depends(require("operator"))]
    Task = Annotated[DispatchTask, Depends(task)]

    @app.get("/api/v1/dispatch", response_model=DispatchStatus, tags=["control"])
    async def get_dispatch(_: Viewer, t: Task) -> DispatchStatus:
        """The plan (steps, prices used, expected margin), the fallback in force and why, the switch (viewer)."""
        return dispatch_status(t)

    @app.put("/api/v1/dispatch", response_model=DispatchStatus, tags=["control"])
    async def put_dispatch(who: Operator, t: Task,
                           body: Annotated[DispatchSetRequest, Body(openapi_examples=_SET_EXAMPLES)]
                           ) -> DispatchStatus:
        """Switch dispatch on or off (operator); audited. Off: the controller is exactly today's."""
        await t.set_enabled(body.enabled, who.name, who.role)
        return dispatch_status(t)
