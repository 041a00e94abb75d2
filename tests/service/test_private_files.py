"""Secrets are created 0600 and never exist under a wider mode, not for a moment, whatever the umask.

Each test runs the code that writes a secret under umask 0 (the worst a process can inherit) while a watcher
looks at every file of the directory before and after each system call the writer makes: a temporary file
created with the default mode and chmod'ed afterwards would be caught between its open and its chmod.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

import service.private_files as private_files
from service import demo
from service.localservers.postgres import PostgresCluster
from service.private_files import ensure_private_key, write_private
from service.scada.server import ScadaServer

SECRET = "s3cret-" + "x" * 16
# The calls a file writer makes between creating a file and putting it in place.
WATCHED = ("open", "fchmod", "chmod", "fchown", "write", "fsync", "close", "replace", "rename", "unlink")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class Watcher:
    """Snapshots (inode, mode, content) of every file in `directory` around each watched os call."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: list[tuple[int, str, int, bytes]] = []

    def look(self) -> None:
        for entry in os.scandir(self.directory):
            try:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue
                with open(entry.path, "rb") as f:
                    content = f.read(1 << 16)
            except (FileNotFoundError, PermissionError):
                continue
            self.seen.append((st.st_ino, entry.name, st.st_mode & 0o777, content))

    def wrap(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in WATCHED:
            original = getattr(os, name)

            def watched(*args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
                self.look()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.look()

            monkeypatch.setattr(os, name, watched)


def assert_never_wider_than_0600(watcher: Watcher, secret: bytes) -> None:
    """Every file (inode) that ever held `secret` was 0600 or narrower in every snapshot, also while still empty:
    a reader who opened it while it was wider could have read the secret through that descriptor later."""
    inodes = {ino for ino, _, _, content in watcher.seen if secret in content}
    assert inodes, "the watcher never saw the secret: the writer no longer goes through the os calls it watches"
    wide = sorted({(name, oct(mode)) for ino, name, mode, _ in watcher.seen if ino in inodes and mode & 0o177})
    assert not wide, f"a file that holds the secret was open to others at some moment: {wide}"


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Watcher]:
    def start(directory: Path) -> Watcher:
        w = Watcher(directory)
        w.wrap(monkeypatch)
        return w
    return start


def test_write_private_replaces_a_wide_file_and_is_never_wider_than_0600(
        tmp_path: Path, watch: Callable[[Path], Watcher], monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "credentials.json"
    target.write_text("old, public")
    target.chmod(0o644)
    w = watch(tmp_path)
    with umask(0):
        write_private(target, SECRET)
    monkeypatch.undo()
    assert_never_wider_than_0600(w, SECRET.encode())
    assert target.read_text() == SECRET
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # the old file's 0644 did not carry over
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]  # no temporary file left


def test_write_private_under_a_strict_umask_is_still_owner_rw(tmp_path: Path) -> None:
    with umask(0o277):
        write_private(tmp_path / "key", b"k")
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "heatrec.env"
    write_private(target, "A=1\n")

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(private_files.os, "write", full)
    with pytest.raises(OSError, match="No space"):
        write_private(target, "A=2\n")
    monkeypatch.undo()
    assert target.read_text() == "A=1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["heatrec.env"]


def test_write_private_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    """The temporary name is random and opened O_EXCL|O_NOFOLLOW: a link planted in the directory is not written."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    (tmp_path / "link").symlink_to(elsewhere)
    write_private(tmp_path / "link", SECRET)  # replaces the link itself, never writes through it
    assert elsewhere.read_text() == "untouched"
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_text() == SECRET


def test_demo_credentials_and_env_file_are_private_from_the_start(
        tmp_path: Path, watch: Callable[[Path], Watcher], monkeypatch: pytest.MonkeyPatch) -> None:
    class Credentials(dict[str, Any]):
        """Whatever accounts the demo has (database, MQTT users, SCADA …), each with the secret as password."""

        def __missing__(self, key: str) -> dict[str, str]:
            self[key] = {"username": key, "password": SECRET}
            return self[key]

    creds = Credentials()
    w = watch(tmp_path)
    with umask(0):
        demo._save_env_file(tmp_path / "heatrec.env", creds)
        demo._save_credentials(tmp_path / "credentials.json", creds)
    monkeypatch.undo()
    assert_never_wider_than_0600(w, SECRET.encode())
    assert json.loads((tmp_path / "credentials.json").read_text()) == creds
    assert f"HEATREC_DB_PASSWORD={SECRET}" in (tmp_path / "heatrec.env").read_text()
    for name in ("credentials.json", "heatrec.env"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


async def test_scada_server_key_is_private_from_its_first_byte(
        tmp_path: Path, watch: Callable[[Path], Watcher], monkeypatch: pytest.MonkeyPatch) -> None:
    """The SCADA server's own _certificate: the key is made 0600 first, asyncua then adds the certificate."""
    pki = tmp_path / "pki"
    pki.mkdir()
    w = watch(pki)
    server = SimpleNamespace(_cert_dir=pki, cfg=SimpleNamespace(endpoint="opc.tcp://127.0.0.1:4840"))
    with umask(0):
        key, cert = await ScadaServer._certificate(server)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert_never_wider_than_0600(w, b"PRIVATE KEY")
    assert {key.name, cert.name} == {p.name for p in pki.iterdir()}
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    serialization.load_pem_private_key(key.read_bytes(), password=None)  # a key asyncua could load
    assert cert.stat().st_size > 0


def test_ensure_private_key_keeps_an_existing_key(tmp_path: Path) -> None:
    key = tmp_path / "client.key.pem"
    assert ensure_private_key(key) is True
    first = key.read_bytes()
    assert ensure_private_key(key) is False and key.read_bytes() == first


def test_local_cluster_admin_password_file_is_private(tmp_path: Path,
                                                      watch: Callable[[Path], Watcher],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The private PostgreSQL's superuser password, kept beside its data directory (no server is started)."""
    pg = PostgresCluster(tmp_path / "pg", 1, "owner-password")
    w = watch(tmp_path)
    with umask(0):
        password = pg.admin_password
    monkeypatch.undo()
    assert_never_wider_than_0600(w, password.encode())
    assert pg.admin_password_file.read_text().strip() == password and len(password) >= 24
    assert stat.S_IMODE(pg.admin_password_file.stat().st_mode) == 0o600
    assert PostgresCluster(tmp_path / "pg", 1, "owner-password").admin_password == password  # kept, not remade
