"""Explicit loader for the raw Tiny Shakespeare text (only needed to recount statistics).

Nothing here runs at import, and the default path of tlassoc never calls it: the statistics the
package needs ship as a derived table (see :meth:`tlassoc.data.BigramModel.tiny_shakespeare`).
:func:`load_tiny_shakespeare` reads a local copy, or a verified copy in the cache folder, or —
only with ``download=True`` — fetches the canonical file, checks its sha256 and stores it
atomically in the cache.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "input.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("First Citizen:\\n")
    >>> load_tiny_shakespeare(path)
    'First Citizen:\\n'
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tlassoc._io import atomic_write_bytes

#: Canonical download address (karpathy/char-rnn).
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
#: sha256 of the canonical file (1,115,394 bytes).
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
#: File name inside the cache folder.
CACHE_FILE_NAME = "tinyshakespeare.txt"


class DataUnavailableError(RuntimeError):
    """The requested data is neither local nor cached, or could not be downloaded."""


class ChecksumMismatchError(DataUnavailableError):
    """Downloaded or cached data does not have the expected sha256."""


def default_cache_dir() -> Path:
    """``$TLASSOC_CACHE`` if set, else ``~/.cache/tlassoc``.

    Example:
        >>> default_cache_dir().name in ("tlassoc", os.environ.get("TLASSOC_CACHE", "tlassoc"))
        True
    """
    env = os.environ.get("TLASSOC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tlassoc"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_tiny_shakespeare(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    url: str = TINY_SHAKESPEARE_URL,
    sha256: str = TINY_SHAKESPEARE_SHA256,
    timeout: float = 10.0,
) -> str:
    """The Tiny Shakespeare text.

    Args:
        path: a local copy; read as is (no checksum), and nothing is cached or downloaded.
        cache_dir: cache folder; default ``$TLASSOC_CACHE`` or ``~/.cache/tlassoc``.
        download: allow fetching ``url`` when the cache holds no verified copy.
        url: where to download from.
        sha256: expected digest of the downloaded or cached file.
        timeout: network timeout in seconds.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataUnavailableError: no cached copy and ``download`` is False, or the download failed
            (e.g. offline). The message says to pass ``path=`` to a local copy.
        ChecksumMismatchError: the download (nothing is written) or the cached copy has the wrong
            sha256.

    Example:
        >>> import tempfile
        >>> load_tiny_shakespeare(cache_dir=tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tlassoc.data.text.DataUnavailableError: Tiny Shakespeare is not in the cache ...
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"Tiny Shakespeare file {str(file)!r} does not exist")
        return file.read_text(encoding="utf-8")

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache / CACHE_FILE_NAME
    if cached.is_file():
        data = cached.read_bytes()
        digest = _sha256(data)
        if digest == sha256:
            return data.decode("utf-8")
        if not download:
            raise ChecksumMismatchError(
                f"cached file {str(cached)!r} has sha256 {digest}, expected {sha256}; delete it, "
                "pass download=True to fetch it again, or pass path= to a local copy"
            )
    elif not download:
        raise DataUnavailableError(
            f"Tiny Shakespeare is not in the cache {str(cache)!r}. Pass path= to a local copy of "
            f"input.txt, or download=True to fetch {url}"
        )
    return _download(url, cached, sha256, timeout).decode("utf-8")


def _download(url: str, target: Path, sha256: str, timeout: float) -> bytes:
    """Fetch ``url``, verify it and move it into ``target`` atomically."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise DataUnavailableError(
            f"could not download {url} ({reason}); if you are offline, pass path= to a local "
            "copy of Tiny Shakespeare's input.txt"
        ) from None
    digest = _sha256(data)
    if digest != sha256:
        raise ChecksumMismatchError(
            f"download from {url} has sha256 {digest}, expected {sha256}; nothing was written"
        )
    atomic_write_bytes(target, data)
    return data
