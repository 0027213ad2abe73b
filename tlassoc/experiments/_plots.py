"""Small figure helpers shared by the experiment reports (matplotlib, Agg, atomic PNG writes)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from tlassoc._io import atomic_write_bytes
from tlassoc.experiments.framework import mean_interval


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


def mean_bar(values: Sequence[float | None]) -> tuple[float, float]:
    """Height and upper error of a bar over seeds (``None`` dropped): the mean (0 when there is
    none) and the distance to the top of its 95 % interval (0 when undefined).

    Example:
        >>> mean_bar([None]), mean_bar([0.5])
        ((0.0, 0.0), (0.5, 0.0))
    """
    m, _, hi = mean_interval([v for v in values if v is not None])
    return (m if m == m else 0.0), (0.0 if hi != hi else hi - m)


def bar_positions(n_groups: int, series: int, n_series: int, width: float) -> list[float]:
    """x of the bars of series ``series`` (of ``n_series`` side by side, ``width`` each) in
    groups centred on ``0 .. n_groups - 1``.

    Example:
        >>> bar_positions(2, 0, 2, 0.4)
        [-0.2, 0.8]
    """
    return [k + (series - (n_series - 1) / 2) * width for k in range(n_groups)]


__all__ = ["bar_positions", "mean_bar", "pyplot", "save_png"]
