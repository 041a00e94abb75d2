"""Live stream of samples and alarm events as Server-Sent Events."""

# No `from __future__ import annotations`: FastAPI must resolve the dependency alias defined
# inside add_stream_routes.
import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from service.api.deps import bearer_token
from service.auth import Principal, Role
from service.errors import HeatrecError
from service.model import Sample

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
REVOKED_EVENT = f"event: revoked\ndata: {json.dumps({'reason': 'the token is no longer valid'})}\n\n"


def _sample_event(s: Sample) -> str:
    data = {"point": s.point, "value": s.value, "quality": s.quality.name,
            "source_time": s.source_time.isoformat(), "receive_time": s.receive_time.isoformat()}
    return f"event: sample\ndata: {json.dumps(data)}\n\n"


def add_stream_routes(app: FastAPI, require: Callable[[Role], Callable[[Request], Awaitable[Principal]]]) -> None:
    """Register GET /api/v1/stream."""
    Viewer = Annotated[Principal, Depends(require("viewer"))]

    @app.get("/api/v1/stream", tags=["points"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {"example": (
                 'event: sample\ndata: {"point": "hp1.supply_temperature", "value": 70.2, "quality": "GOOD", '
                 '"source_time": "2026-01-01T00:00:00+00:00", "receive_time": "2026-01-01T00:00:00.05+00:00"}\n\n')}}}})
    async def stream(request: Request, _: Viewer,
                     points: Annotated[str | None, Query(description="comma-separated point ids or device "
                                                                     "prefixes (hp1.); all when omitted")] = None,
                     alarms: bool = True) -> StreamingResponse:
        """Server-Sent Events: `sample` for every new sample, `alarm` for every alarm state change (viewer).

        A client that reads too slowly loses samples (bounded queue); it gets a `dropped` event with
        the count, never a stalled service. The token is checked again with every batch of events and
        at least every `[api] stream_recheck_s`: once it is revoked the stream sends `revoked` and ends.
        """
        state = request.app.state.heatrec
        token = bearer_token(request)  # valid: the dependency has just checked it
        recheck_s = min(state.config.api.stream_recheck_s, KEEPALIVE_S)
        wanted = tuple(p.strip() for p in points.split(",") if p.strip()) if points else ()
        sub = state.bus.subscribe(f"stream-{id(request)}", maxsize=10_000)
        alarm_q = state.alarms.listen() if alarms and state.alarms is not None else None

        def token_valid() -> bool:
            try:
                return token is not None and state.tokens.principal(token) is not None
            except HeatrecError:  # the token store unreadable: nothing can be verified, so nothing is streamed
                return False

        async def events() -> AsyncIterator[str]:
            reported_drops = 0
            loop = asyncio.get_running_loop()
            quiet_since = loop.time()
            try:
                yield ": heatrec live stream\n\n"
                while True:
                    getters = {asyncio.ensure_future(sub.queue.get())}
                    if alarm_q is not None:
                        getters.add(asyncio.ensure_future(alarm_q.get()))
                    try:
                        done, pending = await asyncio.wait(getters, timeout=recheck_s,
                                                           return_when=asyncio.FIRST_COMPLETED)
                    except BaseException:
                        # The client left mid-wait (the generator is closed here): no getter may outlive the
                        # stream ("Task was destroyed but it is pending").
                        for g in getters:
                            g.cancel()
                        raise
                    for p in pending:
                        p.cancel()
                    if not token_valid():  # revoked since: not one more event
                        yield REVOKED_EVENT
                        return
                    if done:
                        quiet_since = loop.time()
                    elif loop.time() - quiet_since >= KEEPALIVE_S:
                        quiet_since = loop.time()
                        yield ": keep-alive\n\n"
                    for d in done:
                        item = d.result()
                        if isinstance(item, Sample):
                            batch = [item, *sub.drain(1000)]
                            out = "".join(_sample_event(s) for s in batch
                                          if not wanted or any(s.point == w or s.point.startswith(w) for w in wanted))
                            if out:
                                yield out
                        else:
                            yield f"event: alarm\ndata: {json.dumps(item)}\n\n"
                    if sub.dropped > reported_drops:
                        yield f"event: dropped\ndata: {json.dumps({'samples': sub.dropped - reported_drops})}\n\n"
                        reported_drops = sub.dropped
            finally:
                state.bus.unsubscribe(sub)
                if alarm_q is not None:
                    state.alarms.unlisten(alarm_q)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
