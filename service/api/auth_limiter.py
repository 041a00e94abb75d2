"""Rate limit for failed authentication: a client that keeps guessing tokens is slowed, then refused."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class FailedAuthLimiter:
    """At most `max_failures` failed authentications per client in a sliding `window_s`.

    Past the limit the client gets 429 until its oldest failure leaves the window. Each
    lock-out is logged once (client address only: tokens never reach a log line).
    """

    def __init__(self, max_failures: int = 10, window_s: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic, max_clients: int = 10_000) -> None:
        self.max_failures, self.window_s, self._now = max_failures, window_s, monotonic
        self._failures: dict[str, deque[float]] = {}
        self._locked: set[str] = set()
        self._max_clients = max_clients
        self.total_failures = 0
        self.total_refused = 0

    def _prune(self, client: str) -> deque[float]:
        q = self._failures.setdefault(client, deque())
        cutoff = self._now() - self.window_s
        while q and q[0] <= cutoff:
            q.popleft()
        return q

    def retry_after(self, client: str) -> float | None:
        """Seconds the client must wait, or None when it may try."""
        if client not in self._failures:
            return None
        q = self._prune(client)
        if len(q) < self.max_failures:
            if client in self._locked:
                self._locked.discard(client)
                log.info("authentication lock-out ended for %s", client)
            if not q:
                del self._failures[client]
            return None
        self.total_refused += 1
        return max(0.0, q[0] + self.window_s - self._now())

    def failed(self, client: str) -> None:
        """Record one failed authentication from `client`."""
        self.total_failures += 1
        if len(self._failures) >= self._max_clients and client not in self._failures:
            # Bounded memory under a spray from many addresses: forget the oldest client.
            self._failures.pop(next(iter(self._failures)))
        q = self._prune(client)
        q.append(self._now())
        if len(q) >= self.max_failures and client not in self._locked:
            self._locked.add(client)
            log.warning("%d failed authentications from %s within %.0f s: refusing it for a while",
                        len(q), client, self.window_s)
