"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, the token kept only on the server.

The token a person pastes is checked once at sign-in; the session then holds it in this process's
memory (never in the cookie, a URL or a page), so each request re-checks it against the local token
store and a revoked token ends its sessions at once. Every session has its own CSRF token, which
every write must carry in a hidden field (or the X-CSRF-Token header).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from service.auth import Role

SESSION_COOKIE = "heatrec_session"
LOGIN_COOKIE = "heatrec_login"  # the sign-in form's own CSRF token, before there is a session
COOKIE_PATH = "/ui"
IDLE_S = 8 * 3600.0  # one shift without a request ends the session
MAX_SESSIONS = 1000  # the oldest is forgotten beyond this: memory stays bounded whatever clients do


@dataclass
class Session:
    """One signed-in browser."""

    sid: str
    token: str
    name: str
    role: Role
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    seen: float = field(default_factory=time.monotonic)
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) shown once on the next page

    def say(self, kind: str, text: str) -> None:
        """Queue a message for the next page (kind: ok or error)."""
        self.flash.append((kind, text))

    def take_flash(self) -> list[tuple[str, str]]:
        """The queued messages, once."""
        out, self.flash = self.flash, []
        return out

    def csrf_ok(self, sent: str | None) -> bool:
        """Whether `sent` is this session's CSRF token (constant-time)."""
        return sent is not None and secrets.compare_digest(sent.encode(), self.csrf.encode())


class Sessions:
    """The signed-in sessions of this process (memory only: a restart signs everyone out)."""

    def __init__(self, idle_s: float = IDLE_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.idle_s, self.max_sessions = idle_s, max_sessions
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self, token: str, name: str, role: Role) -> Session:
        """A new session with a fresh id (never one the browser brought: no fixation)."""
        s = Session(secrets.token_urlsafe(32), token, name, role)
        self._by_id[s.sid] = s
        while len(self._by_id) > self.max_sessions:
            self._by_id.popitem(last=False)
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of this id, touched; None when unknown or idle too long."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        now = time.monotonic()
        if now - s.seen > self.idle_s:
            self.drop(sid)
            return None
        s.seen = now
        self._by_id.move_to_end(sid)
        return s

    def drop(self, sid: str) -> None:
        """End one session."""
        self._by_id.pop(sid, None)

    def __len__(self) -> int:
        return len(self._by_id)
