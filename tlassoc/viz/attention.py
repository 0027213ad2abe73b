"""Attention patterns: interactive circuitsvis views and static matplotlib heatmaps.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64))
    >>> html = attention_html(model, "To be, or not to be", layers=[0, 1])
    >>> "<div" in str(html)
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc._io import atomic_write_text
from tlassoc.heads.adapter import Model, check_model
from tlassoc.heads.patterns import attention_patterns


def _str_tokens(model: Model, tokens: Int[Tensor, " pos"]) -> list[str]:
    """The model's strings for ``tokens`` (the ids as strings when it has no tokenizer)."""
    if getattr(model, "tokenizer", None) is None:
        return [str(t) for t in tokens.tolist()]
    return model.to_str_tokens(tokens)


def attention_html(
    model: Model,
    input: str | Int[Tensor, " pos"] | Int[Tensor, "1 pos"],
    layers: Sequence[int] | None = None,
) -> Any:
    """circuitsvis view of every head's attention in ``layers`` (default: all) on one sequence.

    The one circuitsvis renderer of tlassoc. Works on the three model kinds; patterns come from
    :func:`tlassoc.heads.attention_patterns`. Returns circuitsvis's ``RenderedHTML`` (displays
    itself in Jupyter; ``str()`` is the HTML).
    """
    import circuitsvis

    check_model(model)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    tokens = model.to_tokens(input) if isinstance(input, str) else torch.as_tensor(input)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"input has shape {tuple(tokens.shape)}; expected one sequence [pos]")
    A = attention_patterns(model, tokens, layers)[0]  # [layer, head, q, k]
    head_names = [f"L{layer}H{h}" for layer in layers for h in range(A.shape[1])]
    return circuitsvis.attention.attention_heads(
        attention=A.flatten(0, 1).cpu(),
        tokens=_str_tokens(model, tokens[0].cpu()),
        attention_head_names=head_names,
    )


def save_attention_html(
    model: Model,
    input: str | Int[Tensor, "pos"],
    path: str | os.PathLike[str],
    layers: Sequence[int] | None = None,
) -> None:
    """Write :func:`attention_html` to ``path`` (atomically) as a stand-alone page."""
    atomic_write_text(path, str(attention_html(model, input, layers)))


def plot_attention(
    pattern: Float[Tensor, "query key"],
    str_tokens: Sequence[str] | None = None,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Heatmap of one head's pattern (rows: queries, columns: keys); returns the axes.

    Example:
        >>> ax = plot_attention(torch.eye(4))
    """
    import matplotlib.pyplot as plt

    pattern = torch.as_tensor(pattern).detach().cpu()
    if pattern.ndim != 2:
        raise ValueError(f"pattern has shape {tuple(pattern.shape)}; expected [query, key]")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(pattern.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    if str_tokens is not None and len(str_tokens) <= 40:
        labels = [repr(t)[1:-1] for t in str_tokens]
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=90)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if title:
        ax.set_title(title)
    return ax
