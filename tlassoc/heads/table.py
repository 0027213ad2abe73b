"""Several head scores of every head in one tidy DataFrame.

Example:
    >>> import torch
    >>> scores_frame({"induction": torch.tensor([[0.1], [0.9]])})["head_name"].tolist()
    ['0.0', '1.0']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from tlassoc.heads.adapter import Model, check_model
from tlassoc.heads.patterns import (
    duplicate_token_scores,
    induction_scores,
    prefix_matching_scores,
    previous_token_scores,
    token_pool_size,
)
from tlassoc.heads.weights import copying_scores, full_ov_topk

__all__ = ["SCORE_FUNCTIONS", "head_scores", "scores_frame"]

#: The scores :func:`head_scores` knows, by name.
SCORE_FUNCTIONS: dict[str, Callable[[Model], Tensor]] = {
    "previous_token": lambda m: previous_token_scores(m),
    "induction": lambda m: induction_scores(m, repeat_len=min(50, token_pool_size(m))),
    "prefix_matching": lambda m: prefix_matching_scores(m, block_len=min(25, token_pool_size(m))),
    "duplicate_token": lambda m: duplicate_token_scores(m),
    "copying": lambda m: copying_scores(m),
    "copying_eigen": lambda m: copying_scores(m, form="eigen"),
    "full_ov_top1": lambda m: full_ov_topk(m, 1),
    "full_ov_top5": lambda m: full_ov_topk(m, 5),
}


def scores_frame(scores: Mapping[str, Tensor], model_name: str | None = None) -> pd.DataFrame:
    """Tidy table of ``[n_layers, n_heads]`` scores: columns ``layer, head, head_name`` (``"L.H"``),
    one column per score, and ``model`` when ``model_name`` is given.

    Example:
        >>> scores_frame({"induction": torch.tensor([[0.1], [0.9]])})["head_name"].tolist()
        ['0.0', '1.0']
    """
    if not scores:
        raise ValueError("scores={}; expected at least one [n_layers, n_heads] score")
    shapes = {tuple(v.shape) for v in scores.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"scores have shapes {sorted(shapes)}; expected all [n_layers, n_heads]")
    L, H = next(iter(shapes))
    layer = torch.arange(L).repeat_interleave(H)
    head = torch.arange(H).repeat(L)
    data: dict[str, Any] = {}
    if model_name is not None:
        data["model"] = model_name
    data.update(
        layer=layer.tolist(),
        head=head.tolist(),
        head_name=[f"{a}.{b}" for a, b in zip(layer.tolist(), head.tolist(), strict=True)],
    )
    for name, value in scores.items():
        data[name] = value.detach().float().cpu().flatten().tolist()
    return pd.DataFrame(data)


def head_scores(
    model: Model, which: Iterable[str] | None = None, model_name: str | None = None
) -> pd.DataFrame:
    """Several scores of every head in one tidy DataFrame (see :func:`scores_frame`).

    Args:
        model: Any of the three model kinds.
        which: Names from ``SCORE_FUNCTIONS`` (default all): ``previous_token, induction,
            prefix_matching, duplicate_token, copying, copying_eigen, full_ov_top1,
            full_ov_top5``.
        model_name: Adds a ``model`` column.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> df = head_scores(AssocTransformer(presets.rpe(d_model=16)), ["induction"])
        >>> list(df.columns)
        ['layer', 'head', 'head_name', 'induction']
    """
    check_model(model)
    names = list(SCORE_FUNCTIONS) if which is None else list(which)
    unknown = [n for n in names if n not in SCORE_FUNCTIONS]
    if unknown:
        raise ValueError(f"which={unknown}; expected names from {list(SCORE_FUNCTIONS)}")
    return scores_frame({n: SCORE_FUNCTIONS[n](model) for n in names}, model_name)
