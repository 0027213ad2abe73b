"""Matplotlib figures of training runs: per-position curves and probes over training.

Figures are made without pyplot (its backend, e.g. a notebook's inline plots, is left alone) and
written atomically as PNG.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.png"
    >>> _ = plot_per_position({"RPE": [None, 1.0, 1.0]}, p, train_len=2)
    >>> p.exists()
    True
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tlassoc._io import atomic_write_bytes

PROBE_KEYS = ("probe_wo2", "probe_wk2", "probe_wk1", "probe_wf", "acc_ge2", "prev_token_acc")

#: Legend labels of the logged quantities, in the papers' notation (superscript = layer).
LABELS = {
    "probe_wo2": "W_O² recall",
    "probe_wk2": "W_K² recall",
    "probe_wk1": "W_K¹ recall",
    "probe_wk1_first64": "W_K¹ recall (first 64 positions)",
    "probe_wk1_all": "W_K¹ recall (all positions)",
    "probe_wf": "W_F recall",
    "acc_ge2": "in-context acc",
    "acc_global": "global-bigram acc",
    "prev_token_acc": "previous-token attention acc",
    "induction_attn_acc": "induction attention acc",
}


def label(key: str) -> str:
    """The legend label of a logged quantity (``key`` itself when it has none).

    Example:
        >>> label("probe_wk1"), label("loss")
        ('W_K¹ recall', 'loss')
    """
    return LABELS.get(key, key)


def _figure(**kwargs: Any) -> tuple[Any, Any]:
    """A figure and its axes (``Figure.subplots(**kwargs)``), made without pyplot: the figure is
    only written to a file, and pyplot's backend and state (a notebook's inline plots) are left
    alone."""
    from matplotlib.figure import Figure

    size = kwargs.pop("figsize", None)
    fig = Figure(figsize=size)
    return fig, fig.subplots(**kwargs)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _smooth(values: Sequence[float | None], window: int) -> list[float]:
    vals = [float("nan") if v is None else float(v) for v in values]
    if window <= 1:
        return vals
    out = []
    for i in range(len(vals)):
        chunk = [v for v in vals[max(0, i - window + 1) : i + 1] if v == v]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def plot_per_position(
    curves: Mapping[str, Sequence[float | None]],
    path: str | os.PathLike[str],
    train_len: int | None = None,
    ylabel: str = "accuracy",
    title: str = "",
    smooth: int = 1,
) -> Path:
    """One line per model of a per-position quantity, with the training length marked.

    Args:
        curves: Name -> values per position (``None``/NaN where undefined).
        path: PNG file to write.
        train_len: Draw a vertical line at this position.
        ylabel: Y-axis label.
        title: Figure title.
        smooth: Trailing moving-average window.
    """
    fig, ax = _figure(figsize=(7, 3.8))
    for name, values in curves.items():
        ax.plot(range(len(values)), _smooth(values, smooth), label=name, lw=1.2, clip_on=False)
    if train_len is not None:
        ax.axvline(train_len, color="gray", ls="--", lw=1, label=f"T_train = {train_len}")
    ax.set_xlabel("position t")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)  # accuracies: a fixed scale, never auto-zoomed onto a flat line
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, borderaxespad=0)
    return _save(fig, path)


def plot_probes_over_training(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    keys: Sequence[str] = PROBE_KEYS,
) -> Path:
    """Memory recall probes and accuracies against the training step, one panel per model.

    Args:
        histories: Model name -> the ``history`` records of :func:`tlassoc.train.train`.
        path: PNG file to write.
        keys: Record keys to draw (missing ones are skipped); the legend names them in the
            papers' notation (:data:`LABELS`).
    """
    n = max(1, len(histories))
    fig, axes = _figure(nrows=1, ncols=n, figsize=(4.2 * n + 2.2, 3.6), squeeze=False, sharey=True)
    for ax, (name, hist) in zip(axes[0], histories.items(), strict=False):
        steps = [r["step"] for r in hist]
        for key in keys:
            if any(key in r for r in hist):
                values = [r.get(key, float("nan")) for r in hist]
                ax.plot(steps, values, label=label(key), marker=".", ms=3, clip_on=False)
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1)  # recalls and accuracies: a fixed scale
    axes[0][0].set_ylabel("recall / accuracy")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:  # one legend for all panels, outside them so that it covers no curve
        axes[0][-1].legend(
            handles, names, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, borderaxespad=0
        )
    return _save(fig, path)


__all__ = ["LABELS", "PROBE_KEYS", "label", "plot_per_position", "plot_probes_over_training"]
