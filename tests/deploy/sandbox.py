"""What systemd does to heatrec.service before exec, done without systemd, so the test runs the service as confined.

There is no systemd PID 1 where the tests run. This script, started as root inside `unshare --mount`, applies what
the unit asks for and can be had from the kernel directly, then execs ExecStart:

- ProtectSystem=strict with StateDirectory: the root file system read-only, the working directory writable;
- ProtectProc=invisible, ProcSubset=pid: a /proc of its own that shows only its processes and no system files;
- LimitNOFILE, UMask;
- User/Group, CapabilityBoundingSet= (every capability dropped), NoNewPrivileges;
- the seccomp filters: SystemCallFilter (+ SystemCallArchitectures=native: libseccomp's native-only filter),
  RestrictAddressFamilies, MemoryDenyWriteExecute and RestrictNamespaces, built as systemd builds them, with
  libseccomp. The calls the unit removes on purpose (`SystemCallFilter=~…`) fail with EPERM, as the unit's
  SystemCallErrorNumber= makes them (OpenBLAS, under numpy, asks mbind() for NUMA placement and carries on
  without it); any other call outside the filter kills the process, stricter than the unit, so that a call
  nobody thought about cannot go unnoticed.

Run as `python3 sandbox.py SPEC.json -- PROGRAM ARGS…`; the spec is made by `sandbox_spec` (tests side, from the
unit file and `systemd-analyze syscall-filter`). Standard library only: it runs under Debian's python3.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 4, 6, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
CLONE_NEW = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
             "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
             "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080}
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class Seccomp:
    """One seccomp filter, built with libseccomp (native architecture only) and loaded into this process."""

    lib: Any = None

    def __init__(self, default_action: int) -> None:
        if Seccomp.lib is None:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
            lib.seccomp_init.restype = ctypes.c_void_p
            lib.seccomp_init.argtypes = [ctypes.c_uint32]
            lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
            lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
            lib.seccomp_rule_add_array.restype = ctypes.c_int
            lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                   ctypes.POINTER(ArgCmp)]
            lib.seccomp_load.argtypes = [ctypes.c_void_p]
            lib.seccomp_release.argtypes = [ctypes.c_void_p]
            Seccomp.lib = lib
        self.ctx = Seccomp.lib.seccomp_init(default_action)
        assert self.ctx, "seccomp_init failed"

    @staticmethod
    def number(name: str) -> int | None:
        nr = Seccomp.lib.seccomp_syscall_resolve_name(name.encode())
        return nr if nr >= 0 else None  # not a system call of this architecture (e.g. *32, arm_*): systemd skips it

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.number(name)
        if nr is None:
            return
        array = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
        rc = Seccomp.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), array)
        if rc != 0 and rc != -errno.EEXIST:
            raise OSError(-rc, f"seccomp_rule_add({name}) failed")

    def load(self) -> None:
        rc = Seccomp.lib.seccomp_load(self.ctx)
        Seccomp.lib.seccomp_release(self.ctx)
        if rc != 0:
            raise OSError(-rc, "seccomp_load failed")


def syscall_filter(allowed: list[str], denied: list[str], default_action: int) -> None:
    f = Seccomp(default_action)
    for name in allowed:
        f.rule(SCMP_ACT_ALLOW, name)
    for name in denied:
        f.rule(scmp_act_errno(errno.EPERM), name)
    f.load()


def address_families(allowed: list[int]) -> None:
    """RestrictAddressFamilies= as systemd does it: socket() of any other family fails with EAFNOSUPPORT."""
    f = Seccomp(SCMP_ACT_ALLOW)
    deny = scmp_act_errno(errno.EAFNOSUPPORT)
    low, high = min(allowed), max(allowed)
    for af in range(0, high):
        if af not in allowed:
            f.rule(deny, "socket", (0, SCMP_CMP_EQ, af, 0))
    f.rule(deny, "socket", (0, SCMP_CMP_GT, high, 0))
    assert low >= 0
    f.load()


def memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute= as systemd does it: no mapping both writable and executable, none made executable."""
    f = Seccomp(SCMP_ACT_ALLOW)
    deny = scmp_act_errno(errno.EPERM)
    f.rule(deny, "mmap", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC | PROT_WRITE, PROT_EXEC | PROT_WRITE))
    f.rule(deny, "mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    f.rule(deny, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    f.rule(deny, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    f.load()


def restrict_namespaces() -> None:
    """RestrictNamespaces=true: no new namespaces; clone3 answers ENOSYS (its flags cannot be inspected), so
    glibc falls back to clone, whose flags can."""
    f = Seccomp(SCMP_ACT_ALLOW)
    deny = scmp_act_errno(errno.EPERM)
    f.rule(deny, "setns")
    f.rule(scmp_act_errno(errno.ENOSYS), "clone3")
    for flag in CLONE_NEW.values():
        f.rule(deny, "unshare", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        f.rule(deny, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
    f.load()


def mounts(spec: dict[str, Any]) -> None:
    """In this (new) mount namespace: a private /proc, the root read-only, the writable paths bound back."""
    options = "nosuid,nodev,noexec"
    if spec.get("proc_hidepid"):
        options += f",hidepid={spec['proc_hidepid']}"
    if spec.get("proc_subset"):
        options += f",subset={spec['proc_subset']}"
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "-t", "proc", "-o", options, "proc", "/proc"], check=True)
    if spec.get("read_only_root"):
        for path in spec["writable"]:
            subprocess.run(["mount", "--bind", path, path], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", "/"], check=True)


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    assert argv[2] == "--", argv
    program = argv[3:]
    cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())  # before /proc loses its system files
    mounts(spec)
    os.chdir(spec["workdir"])  # again: the old working directory is on the now read-only root mount
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec["nofile"], spec["nofile"]))
    os.umask(spec["umask"])
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(cap_last + 1):  # CapabilityBoundingSet= (empty): none can ever come back
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
    os.initgroups(spec["user"], spec["gid"])
    os.setresgid(spec["gid"], spec["gid"], spec["gid"])
    os.setresuid(spec["uid"], spec["uid"], spec["uid"])  # effective and permitted capabilities go with root
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if spec.get("namespaces"):
        restrict_namespaces()
    if spec.get("mdwe"):
        memory_deny_write_execute()
    address_families(spec["families"])
    # Last: it allows execve, but little else of ours.
    syscall_filter(spec["syscalls"], spec["denied_syscalls"], SCMP_ACT_KILL_PROCESS)
    os.execve(program[0], program, os.environ)


if __name__ == "__main__":
    main(sys.argv)
