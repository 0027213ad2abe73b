"""Matplotlib heatmaps of head scores and patching results.

Example:
    >>> import torch
    >>> fig = plot_head_scores(torch.tensor([[0.1, 0.2], [0.9, 0.0]]), title="induction")
    >>> len(fig.axes)
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

__all__ = ["plot_head_scores", "plot_model_comparison", "plot_patching", "text_color"]


def text_color(rgba: Sequence[float]) -> str:
    """``"black"`` or ``"white"``: the text colour that reads better on background ``rgba``
    (relative luminance, WCAG's formula, against the 0.179 crossover where both contrast ratios
    are equal).

    Example:
        >>> text_color((0.4, 0.0, 0.12, 1.0)), text_color((0.97, 0.97, 0.97, 1.0))
        ('white', 'black')
    """

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if luminance > 0.179 else "white"


def _figure(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    return fig, ax


def plot_head_scores(
    scores: Tensor,
    *,
    title: str = "",
    ax: Any = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
    colorbar_label: str = "score",
) -> Any:
    """Heatmap of a ``[n_layers, n_heads]`` score tensor (layers down, heads across).

    Args:
        scores: The scores.
        title: Axes title.
        ax: Axes to draw on (default: a new figure).
        cmap: Colormap.
        vmin, vmax: Colour limits.
        annotate: Write the values in the cells (default when there are at most 64 cells), in
            black or white, whichever reads better on the cell's colour (:func:`text_color`).
        colorbar_label: Label of the colour bar.

    Returns:
        The matplotlib figure.
    """
    values = torch.as_tensor(scores).detach().float().cpu()
    if values.ndim != 2:
        raise ValueError(f"scores has shape {tuple(values.shape)}; expected [n_layers, n_heads]")
    L, H = values.shape
    fig, ax = _figure(ax, (max(3.0, 0.5 * H + 2), max(2.0, 0.4 * L + 1.2)))
    im = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_title(title)
    if annotate if annotate is not None else L * H <= 64:
        for i in range(L):
            for j in range(H):
                value = float(values[i, j])
                if value != value:  # NaN: an empty cell
                    continue
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=text_color(im.cmap(im.norm(value))),
                )
    fig.colorbar(im, ax=ax, label=colorbar_label)
    return fig


def plot_patching(result: Any, *, title: str | None = None, ax: Any = None) -> Any:
    """Heatmap of a :class:`tlassoc.patching.PatchingResult`'s normalised effect.

    ``[layer, head]`` results are drawn as :func:`plot_head_scores` (colour scale [-1, 1]);
    per-position results ``[layer, pos, head]`` as one row per head (``"L.H"``) against
    position, on a colour scale symmetric around 0 up to the largest effect of one position.

    Returns:
        The matplotlib figure.
    """
    effect = result.normalized.detach().float().cpu()
    name = title if title is not None else f"{result.direction} {result.act}: normalised effect"
    if effect.ndim == 2:
        fig = plot_head_scores(
            effect,
            title=name,
            ax=ax,
            cmap="RdBu_r",
            vmin=-1,
            vmax=1,
            colorbar_label="normalised effect",
        )
        ax_ = fig.axes[0] if ax is None else ax
        if result.axis_names[:2] != ["layer", "head"]:
            ax_.set_ylabel(result.axis_names[0])
            ax_.set_xlabel(result.axis_names[1])
        return fig
    if effect.ndim != 3:
        raise ValueError(f"cannot draw a result with {effect.ndim} axes")
    L, P, H = effect.shape
    rows = effect.permute(0, 2, 1).reshape(L * H, P)
    fig, ax = _figure(ax, (min(14.0, 3 + 0.05 * P), max(2.0, 0.35 * L * H + 1.2)))
    # one position carries a share of the effect: scale to the largest one, symmetric around 0
    finite = rows[torch.isfinite(rows)].abs()
    lim = float(finite.max()) if finite.numel() and float(finite.max()) > 0 else 1.0
    im = ax.imshow(
        rows.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest"
    )
    ax.set_yticks(range(L * H))
    ax.set_yticklabels([f"{ly}.{h}" for ly in range(L) for h in range(H)])
    ax.set_xlabel("position")
    ax.set_ylabel("head (layer.head)")
    ax.set_title(name)
    fig.colorbar(im, ax=ax, label="normalised effect")
    return fig


def plot_model_comparison(table: pd.DataFrame, scores: Sequence[str]) -> Any:
    """One heatmap per (model, score) from a :func:`tlassoc.heads.scores_frame` table with a
    ``model`` column.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(
        len(scores), len(models), figsize=(4.0 * len(models), 3.0 * len(scores)), squeeze=False
    )
    for j, model in enumerate(models):
        sub = table[table["model"] == model]
        L, H = int(sub["layer"].max()) + 1, int(sub["head"].max()) + 1
        for i, score in enumerate(scores):
            grid = torch.full((L, H), float("nan"))
            rows = torch.tensor(sub["layer"].to_numpy(copy=True), dtype=torch.long)
            cols = torch.tensor(sub["head"].to_numpy(copy=True), dtype=torch.long)
            grid[rows, cols] = torch.tensor(sub[score].to_numpy(copy=True), dtype=torch.float32)
            plot_head_scores(
                grid, title=f"{model}: {score}", ax=axes[i][j], vmin=0, vmax=1, annotate=L * H <= 16
            )
    fig.tight_layout()
    return fig
