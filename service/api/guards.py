"""What every request meets before a route, and what every answer carries.

`RequestGuard` refuses, before anything reads or parses them, a body larger than `[api] max_body_bytes`
(413, by its Content-Length or, for a streamed body, as soon as the bytes read pass the limit) and a
control character (NUL and the rest of C0, DEL) anywhere in the path or the query (422): such text is
never a valid id or filter, and PostgreSQL cannot hold a NUL. `SecurityHeaders` adds the HTTP hygiene
headers to every answer, errors included.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The pattern the OpenAPI gives every string path and query parameter that has none of its own (JSON Schema's
# regular expressions are ECMA-262: \u escapes, not \x).
NO_CONTROL_PATTERN = r"^[^\u0000-\u001f\u007f]*$"
# Paths whose answers may be cached: the interactive docs, their assets and the schema (no data, no token).
_CACHEABLE = ("/docs", "/redoc", "/openapi.json")
HSTS = "max-age=31536000"  # a year; only ever sent over HTTPS
API_CSP = "default-src 'none'; frame-ancestors 'none'"  # JSON and text answers load nothing and are never framed


class BodyTooLarge(HTTPException):
    """A request body beyond the limit (413); the connection is closed after the answer, unread body and all."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: at most {limit} bytes ([api] max_body_bytes)",
                         headers={"Connection": "close"})


async def _answer(send: Send, status: int, body: dict[str, Any], close: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def control_character_fields(scope: Scope) -> list[str]:
    """The parts of the request target (path, query.NAME) that hold a control character."""
    fields = []
    if CONTROL.search(scope.get("path", "")):
        fields.append("path")
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if CONTROL.search(name) or CONTROL.search(value):
                fields.append("query." + CONTROL.sub("?", name))
    return fields


class RequestGuard:
    """Body size limit and control-character refusal, before routing, authentication or body parsing."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fields = control_character_fields(scope)
        if fields:
            message = "a control character (such as NUL, %00) is not allowed in a path or query parameter"
            await _answer(send, 422, {"error": f"invalid request: {', '.join(fields)}: {message}", "status": 422,
                                      "details": [{"field": f, "message": message} for f in fields]})
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.strip().isdigit():
                    await _answer(send, 400, {"error": "Content-Length is not a number of bytes", "status": 400},
                                  close=True)
                    return
                if int(value) > limit:
                    too_large = BodyTooLarge(limit)
                    await _answer(send, 413, {"error": too_large.detail, "status": 413}, close=True)
                    return
        read = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:  # a streamed (chunked) body: stop at the limit, never hold more
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as err:  # read outside a route (FastAPI's own handler answers those)
            if not started:
                await _answer(send, 413, {"error": err.detail, "status": 413}, close=True)


class SecurityHeaders:
    """nosniff, no framing, no referrer, HSTS over HTTPS, and no-store on everything but the docs.

    A header the answer sets itself (the docs pages' own Content-Security-Policy) is left as it is.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        cacheable = path in _CACHEABLE or path.startswith(("/docs/", "/redoc/"))
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                own_csp = b"content-security-policy" in present
                extra = [(b"x-content-type-options", b"nosniff"),
                         (b"x-frame-options", b"SAMEORIGIN" if own_csp else b"DENY"),
                         (b"referrer-policy", b"no-referrer"),
                         (b"content-security-policy", API_CSP.encode())]
                if not cacheable:
                    extra.append((b"cache-control", b"no-store"))
                if https:
                    extra.append((b"strict-transport-security", HSTS.encode()))
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
