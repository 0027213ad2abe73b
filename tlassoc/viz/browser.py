"""Headless Chromium for HTML views: the DOM after the page's JavaScript ran, and screenshots.

tlassoc's interactive views (:class:`tlassoc.viz.attention.AttentionView`) are pages whose
content is drawn by JavaScript; these helpers run a page in headless Chromium (Debian's
``chromium`` package, or ``google-chrome``; ``TLASSOC_BROWSER`` names another binary) to check
that it draws and to take PNG pictures of it (the screenshots under ``docs/img/``).

Example:
    >>> find_browser() is None or isinstance(find_browser(), str)
    True
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tlassoc._io import atomic_write_bytes

__all__ = ["dump_dom", "find_browser", "rendered_text", "screenshot"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """Path of a headless-capable Chromium (``TLASSOC_BROWSER`` first), or ``None``."""
    named = os.environ.get("TLASSOC_BROWSER")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(
            "no Chromium found; install one (Debian: apt-get install chromium) or set "
            "TLASSOC_BROWSER to its path"
        )
    with tempfile.TemporaryDirectory(prefix="tlassoc-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # needed when running as root (containers, CI)
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",  # let the page's scripts and timers run first
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)


def dump_dom(html_path: str | os.PathLike[str], timeout: float = 120.0) -> str:
    """The page's DOM (serialised HTML) after its scripts ran.

    Raises:
        FileNotFoundError: no browser.
        RuntimeError: the browser failed.
    """
    url = Path(html_path).resolve().as_uri()
    proc = _run(["--dump-dom", url], timeout)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(
            f"chromium --dump-dom {url} failed (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-500:]}"
        )
    return proc.stdout.decode("utf-8", errors="replace")


def rendered_text(dom: str) -> str:
    """The text a reader sees in ``dom``: tags, scripts and styles removed.

    Example:
        >>> rendered_text("<p>a<script>var b = 1;</script><b>c</b></p>")
        'a c'
    """
    body = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", dom)
    text = re.sub(r"(?s)<[^>]*>", " ", body)
    return " ".join(text.split())


def screenshot(
    html_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    width: int = 900,
    height: int = 1100,
    timeout: float = 120.0,
) -> Path:
    """PNG screenshot of the page at ``width`` x ``height`` CSS pixels, after its scripts ran.

    Raises:
        FileNotFoundError: no browser.
        RuntimeError: the browser wrote no picture.
    """
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="tlassoc-shot-") as folder:
        shot = Path(folder) / "shot.png"
        proc = _run([f"--window-size={width},{height}", f"--screenshot={shot}", url], timeout)
        if not shot.is_file() or shot.stat().st_size == 0:
            raise RuntimeError(
                f"chromium wrote no screenshot of {url} (exit {proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')[-500:]}"
            )
        atomic_write_bytes(png_path, shot.read_bytes())
    return Path(png_path)
