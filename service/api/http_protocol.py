"""uvicorn's h11 protocol with deadlines: a connection that never completes its headers or its body is closed.

uvicorn closes a connection idle between requests after `timeout_keep_alive`, but one that has sent
half a request line, or headers and then a trickle of body, it keeps open for as long as the peer
likes: a few hundred such connections hold the file descriptors and the concurrency limit for
everyone. Here the request line and headers must be complete `header_timeout_s` after the connection
is ready for them (opened, or its previous answer sent), and the body `body_timeout_s` after the
headers. A request being answered (an event stream for hours) has no deadline.

uvicorn warns once per refused request ("Exceeded concurrency limit.", "Invalid HTTP request
received."): under a flood that is a flood of log lines, so each such warning is logged at most once
a minute, with the count of those left out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class ThrottledWarnings:
    """A logger whose warnings of one text are logged at most once per `every_s`; the rest as it is."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self._logger, self._every_s = logger, every_s
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log `msg`, unless the same text was logged within `every_s`: then count it."""
        key, now = str(msg), time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return
        if len(self._last) > 100:  # texts are uvicorn's few constants; bound it all the same
            self._last.clear()
        self._last[key] = now
        left_out = self._left_out.pop(key, 0)
        suffix = f" ({left_out} more like it since the last report, not logged)" if left_out else ""
        self._logger.warning(f"{key}{suffix}", *args, **kwargs)


class DeadlineH11Protocol(H11Protocol):
    """H11Protocol plus the header and body deadlines (class attributes: see `with_deadlines`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    closed_late = 0  # connections closed for a deadline, process-wide (tests and diagnosis)
    throttled_log = ThrottledWarnings(logging.getLogger("uvicorn.error"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = self.throttled_log  # type: ignore[assignment]  # a Logger's interface; warnings throttled
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: Literal["headers", "body"] | None = None

    @classmethod
    def with_deadlines(cls, header_timeout_s: float, body_timeout_s: float) -> type[DeadlineH11Protocol]:
        """The protocol class uvicorn is given (it makes one instance per connection, with no other arguments)."""
        return type("DeadlineH11Protocol", (cls,), {
            "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s, "closed_late": 0,
            "throttled_log": ThrottledWarnings(logging.getLogger("uvicorn.error"))})

    def _arm(self, what: Literal["headers", "body"]) -> None:
        if self._deadline_for == what:
            return  # one deadline for the whole of it, however many pieces arrive
        self._disarm()
        seconds = self.header_timeout_s if what == "headers" else self.body_timeout_s
        self._deadline = self.loop.call_later(seconds, self._expired)
        self._deadline_for = what

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._deadline_for = None

    def _follow_state(self) -> None:
        """Arm or clear the deadline for what the connection waits for from the client now."""
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        theirs = self.conn.their_state
        if theirs is h11.IDLE:
            self._arm("headers")
        elif theirs is h11.SEND_BODY:
            self._arm("body")
        else:
            self._disarm()

    def _expired(self) -> None:
        what = self._deadline_for
        self._deadline = None
        self._deadline_for = None
        if self.transport is None or self.transport.is_closing():
            return
        type(self).closed_late += 1
        log.debug("closing a connection from %s: its request %s took too long", self.client, what)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request's headers are due."""
        super().connection_made(transport)
        self._follow_state()

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: no deadline outlives it."""
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """h11's events as uvicorn handles them, then the deadline for what is still to come."""
        super().handle_events()
        self._follow_state()

    def on_response_complete(self) -> None:
        """An answer sent: the next request's headers are due (uvicorn's keep-alive may close sooner)."""
        super().on_response_complete()
        self._follow_state()
