"""The last net under the API: an error nobody translated is a JSON 500 with an error id, logged once."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

log = logging.getLogger(__name__)
ASGIApp = Any  # (scope, receive, send) -> awaitable; starlette's types would add nothing here


class CatchAllMiddleware:
    """Outermost ASGI middleware: a bug answers JSON, never a bare text/plain 500, and its traceback is logged
    once with the id the client saw (Starlette's own error middleware never sees it, so it logs nothing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the request on; turn an escaping exception into a JSON 500."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            error_id = secrets.token_hex(6)
            log.exception("unhandled error %s in %s %s", error_id, scope.get("method"), scope.get("path"))
            if started:  # the answer is on its way: all that is left is to end it (the server closes it)
                return
            body = json.dumps({"error": f"internal error {error_id}: it is logged on the server with this id; "
                                        "please report it", "status": 500, "error_id": error_id}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
