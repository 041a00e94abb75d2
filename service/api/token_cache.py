"""A short-lived, bounded cache of token hash → principal in front of the database lookup.

Every API request names its token; without the cache each one costs a PostgreSQL round trip.
Only valid tokens are cached (an unknown token is looked up every time, and failed
authentications stay rate-limited), for at most `ttl_s` seconds: a revoked token keeps working
for at most that long. Concurrent requests with the same token share one lookup.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

from service.auth import Principal, hash_token
from service.clock import Clock, RealClock

Lookup = Callable[[str], Awaitable[Principal | None]]


class TokenCache:
    """LRU of at most `max_entries` valid tokens, each trusted for `ttl_s` seconds (0 disables caching)."""

    def __init__(self, ttl_s: float = 2.0, max_entries: int = 1024, clock: Clock | None = None) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._clock = clock or RealClock()
        self._entries: collections.OrderedDict[str, tuple[Principal, float]] = collections.OrderedDict()
        self._inflight: dict[str, asyncio.Future[Principal | None]] = {}
        self.hits = 0
        self.lookups = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def principal(self, token: str, lookup: Lookup) -> Principal | None:
        """The token's principal: from the cache while fresh, else from `lookup(token)`."""
        if self.ttl_s <= 0:
            self.lookups += 1
            return await lookup(token)
        key = hash_token(token)  # the cache never holds a usable token, only its hash
        now = self._clock.monotonic()
        entry = self._entries.get(key)
        if entry is not None:
            if entry[1] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]
            del self._entries[key]
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            try:
                return await asyncio.shield(pending)  # a cancelled waiter must not cancel the shared lookup
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request itself was cancelled
                return await lookup(token)  # the request that was looking it up went away: ask ourselves
        fut: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        self.lookups += 1
        try:
            principal = await lookup(token)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()  # retrieved here, so no waiter-less future is reported as lost
            raise
        finally:
            del self._inflight[key]
        fut.set_result(principal)
        if principal is not None:
            self._entries[key] = (principal, now + self.ttl_s)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return principal

    def clear(self) -> None:
        """Forget every entry (e.g. right after revoking a token in-process)."""
        self._entries.clear()
