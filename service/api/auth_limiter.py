"""Failed authentication slows its sender down; a valid token always passes.

The token is checked first (service/api/deps.py): only a failure reaches the limiter, so a client
address shared by many people (a reverse proxy, a NAT) never locks the others out, and a valid
operator token from an address someone else is guessing from is still taken at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class FailedAuthLimiter:
    """Per client: up to `max_failures` failed authentications in a sliding `window_s` are answered at once.

    Each further failure is held before its 401: `delay_s`, doubling with every failure, at most
    `max_delay_s`. Guessing in parallel gains nothing: while `max_held` answers of a client (or
    `max_held_total` of all clients) are held, the next failure gets 429 with Retry-After at once, so
    held answers never tie up the server's connections. Memory is bounded (`max_clients`). The start of
    each slow-down is logged once, with the client's address only: tokens never reach a log line.
    """

    def __init__(self, max_failures: int = 10, window_s: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic, max_clients: int = 10_000,
                 delay_s: float = 0.5, max_delay_s: float = 8.0, max_held: int = 4, max_held_total: int = 32) -> None:
        self.max_failures, self.window_s, self._now = max_failures, window_s, monotonic
        self.delay_s, self.max_delay_s = delay_s, max_delay_s
        self.max_held, self.max_held_total = max_held, max_held_total
        self._failures: dict[str, deque[float]] = {}
        self._slowed: set[str] = set()
        self._held: dict[str, int] = {}
        self._held_total = 0
        self._max_clients = max_clients
        self.total_failures = 0
        self.total_delayed = 0
        self.total_refused = 0

    def _prune(self, client: str) -> deque[float]:
        q = self._failures.setdefault(client, deque())
        cutoff = self._now() - self.window_s
        while q and q[0] <= cutoff:
            q.popleft()
        if len(q) <= self.max_failures and client in self._slowed:
            self._slowed.discard(client)
            log.info("failed authentications from %s back below the limit: no longer slowed down", client)
        return q

    def failures(self, client: str) -> int:
        """Failed authentications of `client` within the window."""
        if client not in self._failures:
            return 0
        q = self._prune(client)
        if not q:
            del self._failures[client]
        return len(q)

    def suspect(self, client: str) -> bool:
        """True once `client` has used up its free failures: it is slowed down, and costs no database look-up."""
        return self.failures(client) >= self.max_failures

    def failed(self, client: str) -> float | None:
        """Record one failed authentication: seconds to hold its answer (0: none), or None: answer 429 now."""
        self.total_failures += 1
        if len(self._failures) >= self._max_clients and client not in self._failures:
            # Bounded memory under a spray from many addresses: forget the oldest client.
            self._failures.pop(next(iter(self._failures)))
        q = self._prune(client)
        q.append(self._now())
        beyond = len(q) - self.max_failures
        if beyond <= 0:
            return 0.0
        if client not in self._slowed:
            self._slowed.add(client)
            log.warning("%d failed authentications from %s within %.0f s: its further failed attempts are slowed "
                        "down (valid tokens still pass)", len(q), client, self.window_s)
        if self._held.get(client, 0) >= self.max_held or self._held_total >= self.max_held_total:
            self.total_refused += 1
            return None
        self.total_delayed += 1
        return min(self.max_delay_s, self.delay_s * 2.0 ** min(beyond - 1, 30))

    def retry_after(self, client: str) -> int:
        """Whole seconds until `client`'s next failure would be answered without delay again (at least 1)."""
        q = self._failures.get(client)
        if not q or len(q) < self.max_failures:
            return 1
        oldest_that_counts = q[len(q) - self.max_failures]
        return max(1, math.ceil(oldest_that_counts + self.window_s - self._now()))

    async def hold(self, client: str, seconds: float) -> None:
        """Wait `seconds` before a failed attempt is answered, counted as held for `client`."""
        self._held[client] = self._held.get(client, 0) + 1
        self._held_total += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self._held_total -= 1
            self._held[client] -= 1
            if not self._held[client]:
                del self._held[client]

    @property
    def held(self) -> int:
        """Failed attempts whose answers are being held now."""
        return self._held_total
