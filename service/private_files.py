"""Files only their owner may read (passwords, tokens, private keys): created 0600, replaced atomically.

`write_private` never lets the data exist under a wider mode, not even for a moment and whatever the
process umask: the temporary file is created by `os.open(..., O_CREAT | O_EXCL, 0o600)` (a umask can
only narrow that), filled, fsync'd and renamed over the target, then the directory is fsync'd. A reader
sees the old content or the new, never half a file; the old file's mode does not carry over.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_MODE = 0o600


def write_private(path: Path | str, data: bytes | str, *, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` with `data` (str is written as UTF-8), mode 0600; `owner` (uid, gid) chowns it first."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_MODE)
    try:
        try:
            os.fchmod(fd, PRIVATE_MODE)  # exactly 0600 even if a strict umask narrowed it (never wider)
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (a crash right after returns the new file, not the old or none)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def ensure_private_key(path: Path | str) -> bool:
    """Make an RSA 2048 key (PKCS#8 PEM, as asyncua makes them) at `path`, 0600, unless a file is there; True if made.

    asyncua's `setup_self_signed_certificate` writes a missing key with the umask's mode and only then could it
    be chmod'ed: making the key first, here, means it is never readable by others. asyncua then finds the key and
    issues the certificate for it.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    target = Path(path)
    if target.is_file():
        return False
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private(target, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return True
