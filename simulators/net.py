"""Endpoint parsing and a fast port check, so a taken port fails before a slow server start."""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlsplit

from simulators.errors import PortInUseError, SimulatorError


def split_opcua_endpoint(url: str, owner: str) -> tuple[str, int]:
    """opc.tcp://host:port[/path] → (host, port)."""
    u = urlsplit(url)
    if u.scheme != "opc.tcp" or not u.hostname or u.port is None:
        raise SimulatorError(f"{owner}: '{url}' is not an OPC UA endpoint like opc.tcp://host:port")
    return u.hostname, u.port


def split_host_port(endpoint: str, owner: str) -> tuple[str, int]:
    """host:port → (host, port)."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise SimulatorError(f"{owner}: '{endpoint}' is not an endpoint like host:port")
    return host.strip("[]"), int(port)


def split_mqtt_url(url: str, owner: str) -> tuple[str, int]:
    """mqtt://host:port → (host, port); the port defaults to 1883."""
    u = urlsplit(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise SimulatorError(f"{owner}: '{url}' is not an MQTT broker URL like mqtt://host:port")
    return u.hostname, u.port or 1883


def ensure_port_free(host: str, port: int, owner: str) -> None:
    """Raise PortInUseError if nothing could listen on host:port now (port 0 always passes)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise SimulatorError(f"{owner}: cannot resolve '{host}': {err.strerror}") from err
    family, socktype, proto, _, addr = infos[0]
    with socket.socket(family, socktype, proto) as probe:
        # Same option asyncio's servers use, so a port in TIME_WAIT is not reported as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as err:
            raise listen_error(err, host, port, owner) from err


def listen_error(err: OSError, host: str, port: int, owner: str) -> SimulatorError:
    """Translate a failed bind/listen into the simulators' error."""
    if err.errno == errno.EADDRINUSE:
        return PortInUseError(port, owner)
    return SimulatorError(f"cannot listen on {host}:{port} for {owner}: {err.strerror or err}")
