"""Small figure helpers shared by the experiment reports (matplotlib, Agg, atomic PNG writes)."""

from __future__ import annotations

import io
import os
from typing import Any

from tlassoc._io import atomic_write_bytes


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend when no display is available."""
    import matplotlib

    if not os.environ.get("DISPLAY"):
        try:
            matplotlib.use("Agg")
        except Exception:  # noqa: BLE001 - a backend already in use stays
            pass
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Any) -> None:
    """Write ``fig`` as a PNG atomically and close it.

    Example:
        >>> import tempfile, pathlib
        >>> plt = pyplot()
        >>> fig, ax = plt.subplots()
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.png"
        >>> save_png(fig, p)
        >>> p.read_bytes()[:4]
        b'\\x89PNG'
    """
    plt = pyplot()
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)


__all__ = ["pyplot", "save_png"]
