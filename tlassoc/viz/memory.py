"""Figures of associative memories and of the theory: matplotlib heatmaps, ranked-pair tables
and theory-versus-model scatter (attention patterns: :mod:`tlassoc.viz.attention`).

Example:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from tlassoc.memory import ideal_model, memory_report
    >>> table = memory_report(ideal_model("relative", d_model=128, n_ctx=64))["W_U W_O1"]
    >>> ax = plot_memory_heatmap(table, max_labels=20)
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from tlassoc.heads.adapter import Model
from tlassoc.memory.tables import MemoryTable
from tlassoc.viz.attention import attention_html

__all__ = [
    "attention_circuitsvis",
    "plot_memory_heatmap",
    "plot_ranked_pairs",
    "plot_theory_vs_model",
]


def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_memory_heatmap(
    table: MemoryTable, ax: Any = None, max_labels: int = 40, cmap: str = "RdBu_r"
) -> Any:
    """Heatmap of ``table.scores`` (outputs as rows, inputs as columns), symmetric colour scale,
    expected pairs outlined by dots.

    Args:
        table: a :class:`~tlassoc.memory.MemoryTable`.
        ax: matplotlib axes (default: a new figure).
        max_labels: label the ticks when a side has at most this many entries.
        cmap: colour map.

    Returns:
        The axes.
    """
    if not isinstance(table, MemoryTable):
        raise ValueError(f"table=<{type(table).__name__}>; expected a MemoryTable")
    ax = _axes(ax, (6, 5))
    scores = table.scores.numpy()
    lim = float(abs(scores).max()) or 1.0
    im = ax.imshow(scores, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    rows, cols = torch.nonzero(table.expected, as_tuple=True)
    if 0 < rows.numel() <= 5000:
        ax.scatter(cols.numpy(), rows.numpy(), s=2, c="k", marker=".", alpha=0.4)
    n_out, n_in = scores.shape
    if n_in <= max_labels:
        ax.set_xticks(range(n_in), table.in_basis.labels, rotation=90, fontsize=7)
    if n_out <= max_labels:
        ax.set_yticks(range(n_out), table.out_basis.labels, fontsize=7)
    ax.set_xlabel(f"input ({table.in_basis.name})")
    ax.set_ylabel(f"output ({table.out_basis.name})")
    ax.set_title(f"{table.name}: S/X {table.signal_to_crosstalk:.1f}, recall {table.recall:.2f}")
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="score  v_jᵀ W u_i")
    return ax


def plot_ranked_pairs(table: MemoryTable, ax: Any = None, top: int = 15) -> Any:
    """Horizontal bars of the ``top`` strongest stored pairs (expected pairs in blue).

    Returns:
        The axes.
    """
    if not isinstance(table, MemoryTable):
        raise ValueError(f"table=<{type(table).__name__}>; expected a MemoryTable")
    ax = _axes(ax, (5, 0.3 * top + 1))
    pairs = table.pairs.head(top).iloc[::-1]
    labels = [f"{i} → {o}" for i, o in zip(pairs["input"], pairs["output"], strict=True)]
    colors = ["tab:blue" if e else "tab:gray" for e in pairs["expected"]]
    ax.barh(range(len(pairs)), pairs["strength"], color=colors)
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.set_xlabel("strength  v_jᵀ W u_i")
    ax.set_ylabel("stored pair (input → output)")
    ax.set_title(f"{table.name}: top pairs")
    return ax


def plot_theory_vs_model(frame: pd.DataFrame, ax: Any = None, hue: str = "relation") -> Any:
    """Scatter of predicted vs measured logit differences from :func:`tlassoc.theory.compare`,
    coloured by ``hue``, with the agreement and correlation in the title.

    Returns:
        The axes.
    """
    for col in ("pred_diff", "model_diff", "agree"):
        if col not in frame.columns:
            raise ValueError(f"frame lacks column {col!r}; pass the output of theory.compare")
    ax = _axes(ax, (5, 5))
    groups = frame.groupby(hue) if hue in frame.columns else [("all", frame)]
    for name, grp in groups:
        ax.scatter(grp["pred_diff"], grp["model_diff"], s=12, alpha=0.7, label=str(name))
    lo = float(min(frame["pred_diff"].min(), frame["model_diff"].min()))
    hi = float(max(frame["pred_diff"].max(), frame["model_diff"].max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    s = frame.attrs.get("summary") or {}
    ax.set_title(
        f"agreement {s.get('agreement', frame['agree'].mean()):.2f}, "
        f"r = {s.get('correlation', float('nan')):.2f}"
    )
    ax.set_xlabel("theory: ξ(x) − ξ(y)")
    ax.set_ylabel("model: logit(x) − logit(y)")
    ax.legend(fontsize=8)
    return ax


def attention_circuitsvis(
    model: Model, tokens: Int[Tensor, " pos"] | Int[Tensor, "1 pos"], layer: int
) -> Any:
    """circuitsvis view of one layer's heads on one prompt: :func:`tlassoc.viz.attention.
    attention_html` with ``layers=[layer]`` (kept for existing notebooks; call that instead).

    Example:
        >>> from tlassoc.memory import ideal_model
        >>> html = attention_circuitsvis(ideal_model("relative", d_model=128, n_ctx=64),
        ...                              torch.tensor([1, 2, 3, 1]), layer=0)
    """
    return attention_html(model, tokens, layers=[layer])
