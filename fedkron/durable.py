"""Files that survive a crash or a full disk: one atomic writer and one directory sync, shared by
the results folder, the checkpoints and the deploy key files (a leaf module: it imports nothing
of fedkron)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """``path`` replaced by ``data`` in one step: a temporary file beside it (created with ``mode``,
    O_EXCL, never through a symlink), flushed to disk, renamed over ``path``, the rename synced. On
    failure (a full disk) the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have removed bits; the mode is exact either way
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent, files=False)
    return path


def fsync_dir(folder: Path, files: bool = True) -> None:
    """``folder``'s files (unless not ``files``) and its own entry list flushed to disk; a folder
    that cannot be opened (some platforms) is skipped."""
    if files:
        for path in folder.iterdir():
            if path.is_file():
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
