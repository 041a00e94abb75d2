"""The unit guard of `make unit` refuses what a unit test may not do, and says what was tried."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.isolation import UnitGuard, UnitIsolationError


def test_the_guard_refuses_listening_connecting_and_spawning_and_records_each() -> None:
    """listen(), a TCP connect and a child process are refused; local socket pairs still work."""
    before = (socket.socket.listen, socket.socket.connect, subprocess.Popen._execute_child)
    guard = UnitGuard()
    guard.current = "this test"
    guard.install()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))  # binding alone (free_port, port checks) is allowed
            with pytest.raises(UnitIsolationError, match=r"listen\(\) on \('127.0.0.1', \d+\)"):
                sock.listen()
            with pytest.raises(UnitIsolationError, match=r"connect\(\) to \('127.0.0.1', 9\)"):
                sock.connect(("127.0.0.1", 9))
        with pytest.raises(UnitIsolationError, match=r"subprocess\.Popen"):
            subprocess.run(["true"], check=False)
        a, b = socket.socketpair()  # what asyncio's event loop uses to wake itself
        with a, b:
            a.sendall(b"x")
            assert b.recv(1) == b"x"
    finally:
        guard.uninstall()
    assert (socket.socket.listen, socket.socket.connect, subprocess.Popen._execute_child) == before
    tried = guard.take("this test")
    assert [t.split(" ")[0] for t in tried] == ["listen()", "connect()", "subprocess.Popen"]
    assert guard.take("this test") == []
