"""Writing key and certificate files safely: new inode, owner-only for secrets, never through a symlink.

``open(path, O_TRUNC)`` over an existing file keeps that file's mode (a 0644 key stays world
readable) and follows a symlink planted at the path. Here every file is written to a fresh temporary
file in the same folder (``O_CREAT|O_EXCL``, so nothing can be waiting there), fsynced and renamed
over the target: the result has exactly the mode asked for, readers never see half a key, and a
symlink at the path is refused before anything is written. Existing files are only replaced when
the caller says so (``force``), because a new CA silently invalidates every deployed ``ca.crt``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fedkron.durable import atomic_write as durable_write

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


class KeyFileError(ValueError):
    """A key or certificate path is unsafe (a symlink) or would replace a file without ``--force``."""


def check_targets(paths: Iterable[str | Path], *, force: bool, what: str, hint: str = "") -> None:
    """Refuse symlinks always and existing files unless ``force``; check all before writing any.

    ``what`` prefixes the message (the module), ``hint`` says what replacing would break.
    """
    paths = [Path(p) for p in paths]
    links = [str(p) for p in paths if p.is_symlink()]
    if links:
        raise KeyFileError(
            f"{what}: refusing to write through a symlink: {', '.join(links)} "
            "(remove the link or choose another folder)"
        )
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise KeyFileError(
            f"{what}: {', '.join(existing)} already {verb}; not replaced without --force "
            f"(pass --force to replace{'; ' + hint if hint else ''})"
        )
    not_files = [str(p) for p in paths if p.exists() and not p.is_file()]
    if not_files:
        raise KeyFileError(f"{what}: {', '.join(not_files)} is not a regular file")


def target_folder(folder: str | Path, what: str) -> Path:
    """``folder`` resolved; a file in its place is one KeyFileError line (mkdir later raised a
    FileExistsError traceback). Checked before anything is generated or written."""
    path = Path(folder).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise KeyFileError(f"{what}: {path} exists and is not a folder (give a folder for the files)")
    return path


def make_folder(path: Path, what: str) -> None:
    """Create ``path``; a folder that cannot be made (no permission, a file above it) is one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KeyFileError(f"{what}: cannot create the folder {path}: {err.strerror or err}") from None


def write_private(path: str | Path, data: bytes) -> None:
    """A secret: mode 0600 whatever existed before."""
    atomic_write(path, data, PRIVATE_MODE)


def write_public(path: str | Path, data: bytes) -> None:
    atomic_write(path, data, PUBLIC_MODE)


def atomic_write(path: str | Path, data: bytes, mode: int) -> None:
    """:func:`fedkron.durable.atomic_write`, refusing a symlink at ``path`` with a clear message."""
    path = Path(path)
    if path.is_symlink():  # os.replace would swap the link itself; say so instead
        raise KeyFileError(f"refusing to write through a symlink: {path}")
    durable_write(path, data, mode)
