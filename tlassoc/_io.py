"""Atomic file writing, and the lock of an output folder.

Files are written to a temporary file in the target folder, then ``os.replace``-d into place: a
reader never sees a half-written file and a crash never replaces a good file with a broken one.
:func:`folder_lock` lets one process at a time write an output folder.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
    >>> atomic_write_json(p, {"a": 1}); p.read_text()
    '{\\n  "a": 1\\n}'
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2))


# ------------------------------------------------------------------------------------------------
# The output-folder lock
# ------------------------------------------------------------------------------------------------

LOCK_FILE = ".tlassoc.lock"
#: Who holds the lock (pid, host, command, since), written next to the lock file.
LOCK_INFO_FILE = ".tlassoc.lock.json"


class FolderLockedError(OSError):
    """Another process (or another thread of this one) holds the lock of an output folder."""


_held: dict[str, list[Any]] = {}  # resolved folder -> [FileLock, depth, thread id]
_held_guard = threading.Lock()


def package_json(name: str) -> dict[str, Any]:
    """The JSON object in ``tlassoc/data/<name>`` (measured times shipped with the package), or
    ``{}`` when the file is not there."""
    from importlib import resources

    try:
        text = resources.files("tlassoc").joinpath(f"data/{name}").read_text()
    except (FileNotFoundError, OSError):
        return {}
    return json.loads(text)


def lock_holder(path: str | os.PathLike[str]) -> str:
    """Who holds (or last held) the lock of folder ``path``, in words, from its sidecar file.

    Example:
        >>> import tempfile
        >>> lock_holder(tempfile.mkdtemp())
        'an unknown process (no .tlassoc.lock.json)'
    """
    info_path = Path(path) / LOCK_INFO_FILE
    try:
        info = json.loads(info_path.read_text())
        return (
            f"pid {info['pid']} on {info['host']} since {info['since']} "
            f"(command: {info['command']})"
        )
    except FileNotFoundError:
        return f"an unknown process (no {LOCK_INFO_FILE})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"an unknown process ({LOCK_INFO_FILE} is unreadable)"


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike[str], command: str | None = None) -> Iterator[Path]:
    """Hold the lock of output folder ``path`` (created if needed) for the ``with`` block.

    One process at a time may write a folder: a second one gets :class:`FolderLockedError`
    at once (no waiting), naming the holder's pid, host, command and start time, which the
    holder writes to ``.tlassoc.lock.json``. The lock is the operating system's (``filelock``),
    so a process that dies, even by ``SIGKILL``, releases it. Re-entrant in the thread that
    holds it (``tlassoc train`` locks the folder, then :func:`tlassoc.training.train` locks it
    again); another thread of the same process is refused like another process.

    Args:
        path: The output folder.
        command: What to record as the holder's command (default: this process's ``argv``).

    Raises:
        FolderLockedError: the folder is locked by someone else.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with folder_lock(folder):
        ...     with folder_lock(folder):  # the same thread may enter again
        ...         (Path(folder) / LOCK_INFO_FILE).is_file()
        True
    """
    from filelock import FileLock, Timeout

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    me = threading.get_ident()
    with _held_guard:
        entry = _held.get(key)
        if entry is not None and entry[2] == me:
            entry[1] += 1
        elif entry is not None:
            raise FolderLockedError(
                f"output folder {str(folder)!r} is in use by another thread of this process "
                f"(pid {os.getpid()}); expected one writer per folder"
            )
        else:
            lock = FileLock(str(folder / LOCK_FILE), thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise FolderLockedError(
                    f"output folder {str(folder)!r} is in use by {lock_holder(folder)}; "
                    "expected a folder no other run writes (wait for it or stop it)"
                ) from None
            entry = _held[key] = [lock, 1, me]
            _write_holder(folder, command)
    try:
        yield folder
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                with contextlib.suppress(OSError):
                    (folder / LOCK_INFO_FILE).unlink()
                entry[0].release()


def _write_holder(folder: Path, command: str | None) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command if command is not None else " ".join([sys.executable, *sys.argv]),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(folder / LOCK_INFO_FILE, info)
