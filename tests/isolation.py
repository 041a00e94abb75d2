"""Unit versus integration tests: which tests need servers, and a guard that proves the others start none.

A test is an integration test when it starts a server (PostgreSQL, Mosquitto, a protocol peer, a
simulator, the service), a child process, or opens a network connection. Tests that reach those
through the shared fixtures are marked automatically (`mark_integration`, by fixture name); test
modules that start them themselves say `pytestmark = pytest.mark.integration`.

`make unit` sets HEATREC_UNIT_ONLY=1, which installs `UnitGuard`: a test that listens on a socket,
connects one to a network address or spawns a process fails, naming what it did. So a test that
starts a server without being marked cannot hide in the unit selection.
"""

from __future__ import annotations

import _posixsubprocess
import os
import socket
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

import pytest

UNIT_ONLY_ENV = "HEATREC_UNIT_ONLY"

# Fixtures that start a real server or peer (directly or through the fixtures they request); a test
# whose fixture closure names one of them is an integration test.
SERVER_FIXTURES = frozenset({
    "server_root", "postgres", "mosquitto",  # tests/conftest.py: the session's PostgreSQL and Mosquitto
    "opcua_peer", "new_opcua_peer", "start_modbus_peer", "modbus_peer",  # tests/drivers/conftest.py: peers
    "silent_peer", "hanging_up_peer",
    "busy_port", "broker_proxy",  # tests/simulators/conftest.py: a listening socket, a TCP proxy
})


def is_integration(item: pytest.Item) -> bool:
    """True when the test is marked integration or uses a server fixture."""
    if item.get_closest_marker("integration") is not None:
        return True
    return not SERVER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def mark_integration(items: Iterable[pytest.Item]) -> None:
    """Add the integration marker to every test that uses a server fixture."""
    for item in items:
        if item.get_closest_marker("integration") is None and is_integration(item):
            item.add_marker(pytest.mark.integration)


class UnitIsolationError(RuntimeError):
    """A unit test tried to start a server, spawn a process or use the network.

    Not an OSError on purpose: the code under test must not mistake it for a refused connection and
    retry quietly.
    """


_NETWORK_FAMILIES = {socket.AF_INET, socket.AF_INET6}


class UnitGuard:
    """Refuses listen(), network connect() and process creation while installed, and records each attempt."""

    def __init__(self) -> None:
        self.current: str | None = None  # node id of the running test
        self.violations: dict[str, list[str]] = {}
        self._undo: list[Callable[[], None]] = []

    def _refuse(self, what: str) -> UnitIsolationError:
        where = self.current or "outside any test"
        self.violations.setdefault(where, []).append(what)
        return UnitIsolationError(f"{what}: a unit test may not start servers, processes or use the network "
                                  "(mark it integration, see tests/isolation.py)")

    def _patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        setattr(owner, name, make(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self) -> None:
        """Patch the few places every server, client and child process goes through."""
        guard = self

        def listen(original: Any) -> Any:
            def guarded(sock: socket.socket, *args: Any) -> Any:
                raise guard._refuse(f"listen() on {sock.getsockname()}")
            return guarded

        def connect(original: Any) -> Any:
            def guarded(sock: socket.socket, address: Any) -> Any:
                if sock.family in _NETWORK_FAMILIES:
                    raise guard._refuse(f"connect() to {address}")
                return original(sock, address)
            return guarded

        def spawn(label: str) -> Callable[[Any], Any]:
            def wrap(original: Any) -> Any:
                def guarded(*args: Any, **kwargs: Any) -> Any:
                    raise guard._refuse(f"{label} (a child process)")
                return guarded
            return wrap

        self._patch(socket.socket, "listen", listen)
        self._patch(socket.socket, "connect", connect)
        self._patch(socket.socket, "connect_ex", connect)
        # Every Popen (subprocess.run, asyncio's subprocesses) goes through _execute_child; multiprocessing
        # through fork_exec (spawn) or os.fork (fork); os.system and posix_spawn for the rest.
        self._patch(subprocess.Popen, "_execute_child", spawn("subprocess.Popen"))
        self._patch(_posixsubprocess, "fork_exec", spawn("fork_exec"))
        for name in ("fork", "posix_spawn", "posix_spawnp", "system"):
            self._patch(os, name, spawn(f"os.{name}"))

    def uninstall(self) -> None:
        """Undo every patch, last first."""
        while self._undo:
            self._undo.pop()()

    def take(self, nodeid: str) -> list[str]:
        """What the test did that a unit test may not (and forget it)."""
        return self.violations.pop(nodeid, [])


def failure_text(violations: list[str], original: str) -> str:
    """The report of a test that broke isolation: what it did first, then its own outcome."""
    lines = [f"unit test broke isolation ({UNIT_ONLY_ENV}=1): it must be marked integration", *violations]
    return "\n  ".join(lines) + (f"\n\n{original}" if original else "")
