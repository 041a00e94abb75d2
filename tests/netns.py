"""Private network namespaces for integration tests: one bridge, one veth per namespace, addresses only inside.

`NetnsLab(("central", "site-a"))` makes a namespace per name (its real name starts with `hrt<pid>-`, so
parallel runs never clash), plus one for the bridge, which holds no address. Each namespace gets `lo` and
`eth0` (its veth, the other end a port of the bridge) with 10.231.0.<n>/24. Nothing is added to the root
namespace. Teardown (the context manager's exit, also after a failure) kills what still runs inside the lab's
namespaces and deletes them, every `ip` call bounded in time.

A process runs inside with `lab.exec_argv(name, argv)` (`ip netns exec`); `lab.entered(name)` moves the
calling thread into a namespace for a while (setns(2), what `ip netns exec` does), so the sockets it opens and
the processes it forks live there: that is how the test process talks to servers inside, and how servers whose
classes spawn their own processes (MosquittoServer, PostgresCluster) are started inside.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
SUBNET = "10.231.0"  # private; lives only inside the lab's namespaces
MAX_NAMESPACES = 16
IP_TIMEOUT_S = 10.0
DEVICE = "eth0"  # each namespace's veth end (names are per namespace, so every one may be eth0)

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """An `ip` command failed or a namespace is not usable."""


def ip(*args: str, timeout: float = IP_TIMEOUT_S, check: bool = True) -> str:
    """Run `ip ARGS` (bounded in time); its stdout."""
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete lab namespaces left by test processes that are gone (killed before their teardown)."""
    removed = []
    for ns in ip("netns", "list", check=False).split("\n"):
        m = re.match(r"hrt(\d+)-\S+", ns.strip())
        if m and not _pid_alive(int(m.group(1))):
            name = m.group(0)
            _kill_inside(name)
            ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


def _kill_inside(ns: str) -> None:
    """SIGKILL what still runs inside one of the lab's namespaces (only processes the test started live there)."""
    for pid in ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


class NetnsLab:
    """Namespaces `names` on one private bridge; a context manager (teardown on exit, even after a failure)."""

    def __init__(self, names: Sequence[str]) -> None:
        if not 0 < len(names) <= MAX_NAMESPACES or len(set(names)) != len(names):
            raise NetnsError(f"give 1..{MAX_NAMESPACES} distinct names (got {list(names)})")
        self.names = tuple(names)
        self.prefix = f"hrt{os.getpid()}-"
        self.bridge_ns = self.prefix + "br"
        self._made: list[str] = []

    def ns(self, name: str) -> str:
        """The real namespace name of `name`."""
        if name not in self.names:
            raise KeyError(name)
        return self.prefix + re.sub(r"[^a-z0-9]", "", name.lower())[:8] + str(self.names.index(name))

    def address(self, name: str) -> str:
        """The IPv4 address of `name` (on its eth0)."""
        return f"{SUBNET}.{self.names.index(name) + 1}"

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """argv run inside `name`'s namespace."""
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def __enter__(self) -> NetnsLab:
        remove_stale()
        try:
            self._create()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _create(self) -> None:
        self._add_ns(self.bridge_ns)
        br = self.bridge_ns
        # No STP, no forwarding delay: a port forwards as soon as it is up.
        ip("-n", br, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip("-n", br, "link", "set", "br0", "up")
        for i, name in enumerate(self.names):
            ns = self.ns(name)
            self._add_ns(ns)
            port = f"p{i}"
            ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", DEVICE, "netns", ns)
            ip("-n", br, "link", "set", port, "master", "br0")
            ip("-n", br, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", DEVICE)
            ip("-n", ns, "link", "set", DEVICE, "up")

    def link(self, name: str, up: bool) -> None:
        """Bring `name`'s link to the bridge down or up (its end: to the namespace, the cable is pulled)."""
        ip("-n", self.ns(name), "link", "set", DEVICE, "up" if up else "down")

    @contextlib.contextmanager
    def entered(self, name: str) -> Iterator[None]:
        """The calling thread inside `name`'s namespace until the block ends (then back where it was)."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(str(NETNS_DIR / self.ns(name)))
            try:
                yield
            finally:
                if _libc.setns(back, CLONE_NEWNET) != 0:
                    raise NetnsError(f"setns back: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(back)

    def teardown(self) -> None:
        """Kill what runs inside, delete every namespace made (the veths and the bridge go with them)."""
        for ns in reversed(self._made):
            _kill_inside(ns)
            ip("netns", "delete", ns, check=False)
        self._made.clear()
