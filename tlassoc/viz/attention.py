"""Attention patterns: interactive circuitsvis views that work offline, and matplotlib heatmaps.

:func:`attention_html` is tlassoc's one circuitsvis renderer. It returns an
:class:`AttentionView`: ``str(view)`` (and :meth:`AttentionView.page`) is a complete HTML page
with circuitsvis's JavaScript bundle (shipped inside the circuitsvis package) inlined, so a saved
view opens in a browser with no network; in Jupyter the view displays itself the same way.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64))
    >>> view = attention_html(model, "To be, or not to be", layers=[0, 1])
    >>> page = str(view)
    >>> page.startswith("<!DOCTYPE html>"), "unpkg" in page, view.head_names
    (True, False, ['L0H0', 'L1H0'])
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc._io import atomic_write_text
from tlassoc.heads.adapter import Model, check_model
from tlassoc.heads.patterns import attention_patterns

__all__ = [
    "AttentionView",
    "attention_html",
    "circuitsvis_js",
    "plot_attention",
    "save_attention_html",
]


@functools.cache
def circuitsvis_js() -> str:
    """circuitsvis's browser bundle (``circuitsvis/dist/cdn/iife.js``, shipped in the package),
    made safe to inline in a ``<script>`` element.

    It defines the global ``CircuitsVis`` (``CircuitsVis.render(id, component, props)``).

    Example:
        >>> circuitsvis_js().startswith('"use strict";var CircuitsVis')
        True
    """
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(
            f"circuitsvis's JavaScript bundle {path} is missing; reinstall circuitsvis (>= 1.43)"
        )
    js = path.read_text(encoding="utf-8")
    js = re.sub(r"\n//# sourceMappingURL=\S*\s*$", "\n", js)
    return _script_safe(js)


def _script_safe(text: str) -> str:
    """``text`` with the sequences that would end or confuse an inline ``<script>`` escaped
    (``</script`` -> ``<\\/script``, ``<!--`` -> ``<\\u0021--``; both mean the same in
    JavaScript strings, template literals, comments and regular expressions)."""
    text = re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)
    return text.replace("<!--", "<\\u0021--")


@dataclass(frozen=True)
class AttentionView:
    """An interactive circuitsvis view (``AttentionHeads``) of attention patterns, offline.

    Attributes:
        tokens: One string per position.
        head_names: One name per head (``"L{layer}H{head}"``).
        attention: Patterns ``[head, query, key]`` (rounded to 4 decimals).
        title: Page title.

    ``str(view)`` and :meth:`page` give a complete HTML page, :meth:`fragment` a ``<div>`` and
    its ``<script>`` for embedding; both inline circuitsvis's JavaScript, so nothing is fetched.
    Jupyter displays the view (``_repr_html_``).

    Example:
        >>> view = AttentionView(["a", "b"], ["L0H0"], torch.tensor([[[1.0, 0], [0.5, 0.5]]]))
        >>> "CircuitsVis.render" in view.fragment(), view.page().rstrip().endswith("</html>")
        (True, True)
    """

    tokens: list[str]
    head_names: list[str]
    attention: Float[Tensor, "head query key"]
    title: str = "attention patterns"
    _id: str = field(default_factory=lambda: f"tlassoc-attention-{uuid.uuid4().hex[:12]}")

    def __post_init__(self) -> None:
        A = self.attention
        if A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[1] != len(self.tokens):
            raise ValueError(
                f"attention has shape {tuple(A.shape)}; expected [head, {len(self.tokens)}, "
                f"{len(self.tokens)}] for {len(self.tokens)} tokens"
            )
        if len(self.head_names) != A.shape[0]:
            raise ValueError(
                f"head_names has {len(self.head_names)} names; expected {A.shape[0]} (one per head)"
            )

    def props(self) -> str:
        """The component's properties as JSON, safe inside a ``<script>`` element."""
        props = {
            "attention": self.attention.tolist(),
            "tokens": list(self.tokens),
            "attentionHeadNames": list(self.head_names),
        }
        text = json.dumps(props, ensure_ascii=False)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")

    def _render_call(self) -> str:
        return f'CircuitsVis.render("{self._id}", CircuitsVis.AttentionHeads, {self.props()});'

    def fragment(self) -> str:
        """A ``<div>`` and the scripts that draw into it (circuitsvis's bundle inlined)."""
        return (
            f'<div id="{self._id}" style="margin: 15px 0;"></div>\n'
            f"<script>\n{circuitsvis_js()}\n</script>\n<script>\n{self._render_call()}\n</script>"
        )

    def page(self) -> str:
        """A complete, self-contained HTML page of the view."""
        title = html.escape(self.title)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n"
            "<style>body { font-family: sans-serif; margin: 16px; }</style>\n"
            f"</head>\n<body>\n<h3>{title}</h3>\n{self.fragment()}\n</body>\n</html>\n"
        )

    def __str__(self) -> str:
        return self.page()

    def __repr__(self) -> str:
        return (
            f"AttentionView({len(self.tokens)} tokens, heads {', '.join(self.head_names)}; "
            "str() is an offline HTML page)"
        )

    def _repr_html_(self) -> str:
        return self.fragment()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`page` to ``path`` atomically; returns the path."""
        atomic_write_text(path, self.page())
        return Path(path)


def _str_tokens(model: Model, tokens: Int[Tensor, " pos"]) -> list[str]:
    """The model's strings for ``tokens`` (the ids as strings when it has no tokenizer)."""
    if getattr(model, "tokenizer", None) is None:
        return [str(t) for t in tokens.tolist()]
    return list(model.to_str_tokens(tokens))


def attention_html(
    model: Model,
    input: str | Int[Tensor, " pos"] | Int[Tensor, "1 pos"],
    layers: Sequence[int] | None = None,
    title: str | None = None,
) -> AttentionView:
    """Interactive view of every head's attention in ``layers`` (default: all) on one sequence.

    The one circuitsvis renderer of tlassoc. Works on the three model kinds; patterns come from
    :func:`tlassoc.heads.attention_patterns`.

    Args:
        model: A tlassoc model, a ``HookedTransformer`` or a ``TransformerBridge``.
        input: Text, or the token ids of one sequence.
        layers: Layers to show.
        title: Page title (default: the model's name and the layers).

    Returns:
        An :class:`AttentionView`: ``str()`` of it is a complete, offline HTML page.
    """
    check_model(model)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    tokens = model.to_tokens(input) if isinstance(input, str) else torch.as_tensor(input)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"input has shape {tuple(tokens.shape)}; expected one sequence [pos]")
    A = attention_patterns(model, tokens, layers)[0]  # [layer, head, q, k]
    head_names = [f"L{layer}H{h}" for layer in layers for h in range(A.shape[1])]
    name = getattr(model.cfg, "model_name", None) or type(model).__name__
    return AttentionView(
        tokens=_str_tokens(model, tokens[0].cpu()),
        head_names=head_names,
        attention=A.flatten(0, 1).detach().float().cpu().round(decimals=4),
        title=title or f"{name}: attention, layers {', '.join(map(str, layers))}",
    )


def save_attention_html(
    model: Model,
    input: str | Int[Tensor, " pos"],
    path: str | os.PathLike[str],
    layers: Sequence[int] | None = None,
) -> Path:
    """Write :func:`attention_html` to ``path`` (atomically) as a self-contained page.

    Example:
        >>> import tempfile
        >>> from tlassoc import AssocTransformer, presets
        >>> path = save_attention_html(AssocTransformer(presets.rpe(d_model=16)), "abc",
        ...                            Path(tempfile.mkdtemp()) / "a.html")
        >>> path.read_text().startswith("<!DOCTYPE html>")
        True
    """
    return attention_html(model, input, layers).save(path)


def plot_attention(
    pattern: Float[Tensor, "query key"],
    str_tokens: Sequence[str] | None = None,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Heatmap of one head's pattern (rows: queries, columns: keys); returns the axes.

    Example:
        >>> ax = plot_attention(torch.eye(4))
        >>> ax.get_xlabel()
        'key position'
    """
    import matplotlib.pyplot as plt

    pattern = torch.as_tensor(pattern).detach().cpu()
    if pattern.ndim != 2:
        raise ValueError(f"pattern has shape {tuple(pattern.shape)}; expected [query, key]")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(pattern.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, label="attention weight")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    if str_tokens is not None and len(str_tokens) <= 40:
        labels = [repr(t)[1:-1] for t in str_tokens]
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=90)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if title:
        ax.set_title(title)
    return ax
