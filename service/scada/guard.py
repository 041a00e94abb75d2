"""Failed SCADA logins: counted per user name and per client address, answered ever later, then locked out.

A failed user-name login is answered after a delay that doubles with each failure of that user or
address within the window (`[scada.login]` backoff_initial_s up to backoff_max_s). When one user name
collects `lockout_failures` failures within `lockout_window_s`, or one address
`lockout_failures_per_address`, it is locked for `lockout_s`: every user-name login of that user, or from
that address, is refused meanwhile (after the longest delay), with the correct password too, and the
password is not even looked at. Each lockout is logged once, with the user name and the address; a
password never is. The guard is pure bookkeeping on an injectable monotonic clock; service/scada/channel.py
applies it to the OPC UA ActivateSession requests.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from service.scada.config import ScadaLogin

log = logging.getLogger(__name__)

MAX_TRACKED = 10_000  # user names and addresses remembered at once (a stranger may try any number of names)
_NAME_CHARS = 64  # of a user name kept and logged


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)  # monotonic times within the window
    locked_until: float = 0.0


@dataclass
class LoginStats:
    """What the guard did, for tests and metrics; the counters only grow."""

    failures: int = 0  # failed logins (wrong user or password)
    delayed: int = 0  # answers the guard delayed
    delay_s: float = 0.0  # the sum of those delays
    lockouts: int = 0  # lockouts engaged (users and addresses)
    refused_locked: int = 0  # logins refused because the user or the address was locked


class LoginGuard:
    """Per-user and per-address failure counting with exponential backoff and lockout."""

    def __init__(self, cfg: ScadaLogin, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self._clock = cfg, clock
        self._users: OrderedDict[str, _Record] = OrderedDict()
        self._addresses: OrderedDict[str, _Record] = OrderedDict()
        self.stats = LoginStats()

    def locked(self, user: str, address: str) -> float:
        """Seconds left of a lockout of this user or this address; 0 when neither is locked."""
        now = self._clock()
        left = 0.0
        for table, key in ((self._users, user[:_NAME_CHARS]), (self._addresses, address)):
            rec = table.get(key)
            if rec is not None and rec.locked_until > now:
                left = max(left, rec.locked_until - now)
        return left

    def refuse_locked(self) -> float:
        """A login refused during a lockout: how long to delay its answer."""
        self.stats.refused_locked += 1
        return self._delayed(self.cfg.backoff_max_s)

    def failed(self, user: str, address: str) -> float:
        """Record a failed login; how long to delay its answer."""
        now = self._clock()
        self.stats.failures += 1
        name = user[:_NAME_CHARS]
        u, a = self._record(self._users, name, now), self._record(self._addresses, address, now)
        for rec in (u, a):
            rec.failures.append(now)
        streak = max(len(u.failures), len(a.failures))
        delay = min(self.cfg.backoff_initial_s * 2 ** (streak - 1), self.cfg.backoff_max_s)
        if len(u.failures) >= self.cfg.lockout_failures:
            self._lock(u, now)
            log.warning("SCADA OPC UA: user %r locked out for %g s after %d failed logins within %g s "
                        "(the last from %s)", name, self.cfg.lockout_s, self.cfg.lockout_failures,
                        self.cfg.lockout_window_s, address)
        if len(a.failures) >= self.cfg.lockout_failures_per_address:
            self._lock(a, now)
            log.warning("SCADA OPC UA: client address %s locked out for %g s after %d failed logins within %g s "
                        "(the last as user %r)", address, self.cfg.lockout_s, self.cfg.lockout_failures_per_address,
                        self.cfg.lockout_window_s, name)
        return self._delayed(delay)

    def succeeded(self, user: str) -> None:
        """A correct login: that user name starts afresh (the address keeps its count until the window ends)."""
        self._users.pop(user[:_NAME_CHARS], None)

    def _lock(self, rec: _Record, now: float) -> None:
        rec.locked_until = now + self.cfg.lockout_s
        rec.failures.clear()  # after the lockout the count starts anew
        self.stats.lockouts += 1

    def _delayed(self, delay: float) -> float:
        if delay > 0:
            self.stats.delayed += 1
            self.stats.delay_s += delay
        return delay

    def _record(self, table: OrderedDict[str, _Record], key: str, now: float) -> _Record:
        rec = table.get(key)
        if rec is None:
            if len(table) >= MAX_TRACKED:
                self._prune(table, now)
            rec = table[key] = _Record()
        table.move_to_end(key)
        while rec.failures and rec.failures[0] <= now - self.cfg.lockout_window_s:
            rec.failures.popleft()
        return rec

    def _prune(self, table: OrderedDict[str, _Record], now: float) -> None:
        """Forget what no longer counts; if still full, the unlocked entries least recently seen (a flood of
        new names must not wipe out a lockout), and only then the oldest lockouts."""
        horizon = now - self.cfg.lockout_window_s
        for key in [k for k, r in table.items()
                    if r.locked_until <= now and (not r.failures or r.failures[-1] <= horizon)]:
            del table[key]
        unlocked = (k for k, r in list(table.items()) if r.locked_until <= now)
        while len(table) >= MAX_TRACKED:
            oldest = next(unlocked, None)
            if oldest is None:
                table.popitem(last=False)
            else:
                del table[oldest]
