"""Loopback port helpers."""

from __future__ import annotations

import socket

from service.localservers.errors import LocalServerError


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (we cannot bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports_free(ports: dict[str, tuple[str, int]]) -> None:
    """Raise naming the first port of `{what: (host, port)}` that is already taken."""
    for what, (host, port) in ports.items():
        if port_in_use(host, port):
            raise LocalServerError(
                f"port {port} on {host} ({what}) is already in use: stop what listens there "
                f"(see: ss -ltnp 'sport = :{port}') or change the port in the config")


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on host (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def can_connect(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
