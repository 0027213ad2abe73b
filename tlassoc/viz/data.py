"""Figures of the task data: the global bigram matrix, labelled by characters.

Example:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from tlassoc.data import BigramModel
    >>> ax = plot_bigram_heatmap(BigramModel.tiny_shakespeare())
    >>> ax.get_xlabel()
    'next character'
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["plot_bigram_heatmap", "token_label"]


def token_label(token: str) -> str:
    """A visible tick label for a token: ``"␣"`` for a space, escapes for control characters.

    Example:
        >>> [token_label(t) for t in (" ", "\\n", "a")]
        ['␣', '\\\\n', 'a']
    """
    if token == " ":
        return "␣"
    return token if token.isprintable() else repr(token)[1:-1]


def plot_bigram_heatmap(
    bigram: Any, ax: Any = None, top: int | None = None, cmap: str = "viridis"
) -> Any:
    """Heatmap of ``log(1 + count)`` of every bigram, rows the previous token, columns the
    next one, ticks labelled with the tokens themselves.

    Args:
        bigram: A :class:`tlassoc.data.BigramModel`.
        ax: Axes to draw on (default: a new figure).
        top: Show only the ``top`` most frequent tokens (default: all).
        cmap: Colour map.

    Returns:
        The axes.
    """
    counts = torch.as_tensor(bigram.bigram_counts).double()
    vocab = list(bigram.vocab)
    if counts.ndim != 2 or counts.shape != (len(vocab), len(vocab)):
        raise ValueError(
            f"bigram_counts has shape {tuple(counts.shape)}; expected [{len(vocab)}, {len(vocab)}]"
        )
    index = torch.arange(len(vocab))
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"top={top!r}; expected a positive integer")
        index = torch.as_tensor(bigram.unigram_counts).argsort(descending=True)[:top]
        counts = counts[index][:, index]
    if ax is None:
        import matplotlib.pyplot as plt

        n = len(index)
        _, ax = plt.subplots(figsize=(max(4.0, 0.11 * n + 1.5), max(3.5, 0.11 * n + 1)))
    image = ax.imshow(torch.log1p(counts).numpy(), cmap=cmap, interpolation="nearest")
    labels = [token_label(vocab[i]) for i in index.tolist()]
    ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90, family="monospace")
    ax.set_yticks(range(len(labels)), labels, fontsize=6, family="monospace")
    unit = "character" if all(len(t) == 1 for t in vocab) else "token"
    ax.set_xlabel(f"next {unit}")
    ax.set_ylabel(f"previous {unit}")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, label="log(1 + bigram count)")
    return ax
