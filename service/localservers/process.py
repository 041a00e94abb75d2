"""Child processes that die with us: run as a given system user, parent-death signal set."""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> None:
    # Set after the uid change (preexec runs after setuid), so the kernel keeps it across exec:
    # if heatrec is killed with SIGKILL, its servers still stop instead of lingering as orphans.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def system_user(name: str) -> pwd.struct_passwd | None:
    """The passwd entry of a system user, or None."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    """Give a directory tree to a system user (a server running as that user must own it)."""
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for n in dirs + files:
            os.chown(os.path.join(root, n), user.pw_uid, user.pw_gid, follow_symlinks=False)


def spawn(argv: list[str], log: IO[bytes], user: pwd.struct_passwd | None, term_signal: int,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own session (Ctrl-C reaches only us; we stop it in order)."""
    as_other = user is not None and os.geteuid() == 0
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    env.setdefault("LANG", "C.UTF-8")
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
        start_new_session=True, preexec_fn=lambda: _die_with_parent(term_signal),
        user=user.pw_uid if as_other and user else None, group=user.pw_gid if as_other and user else None,
        extra_groups=[] if as_other else None,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signal a child and wait; kill it if it does not stop in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
