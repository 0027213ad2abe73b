"""Measurements on plain tensors: accuracy over a label mask and attention-pattern accuracies.

These are the only definitions of these numbers in tlassoc: training, the analyses and the
experiments all call them. The module sits at the bottom of the import graph (it imports torch
only), so training can log them without importing any analysis code.

Example:
    >>> logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    >>> masked_accuracy(logits, torch.tensor([[1, 1]]), torch.tensor([[True, True]]))
    0.5
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor) -> float:
    """Mean of ``values`` over the ``True`` entries of ``mask`` (NaN when there is none).

    Example:
        >>> masked_mean(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([True, True, False]))
        2.0
    """
    n = int(mask.sum())
    return float((values * mask).sum() / n) if n else float("nan")


def masked_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"],
    targets: Int[Tensor, "batch pos"],
    mask: Bool[Tensor, "batch pos"],
) -> float:
    """Argmax accuracy over the ``True`` positions of ``mask`` (NaN when there is none).

    With the trigger task's labels, ``mask = labels >= 2`` is the in-context accuracy (a
    trigger whose output was already seen in the sequence) and ``labels >= 1`` counts every
    trigger.

    Example:
        >>> lg = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
        >>> masked_accuracy(lg, torch.tensor([[1, 0]]), torch.tensor([[True, False]]))
        1.0
    """
    correct = (logits.argmax(-1) == targets).to(logits.dtype)
    return masked_mean(correct, mask)


def label_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"],
    targets: Int[Tensor, "batch pos"],
    labels: Int[Tensor, "batch pos"],
    min_label: int,
    start: int = 0,
) -> float:
    """Accuracy on the targets with ``label >= min_label`` at positions ``>= start``.

    Example:
        >>> lg = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
        >>> label_accuracy(lg, torch.tensor([[1, 0]]), torch.tensor([[2, 2]]), min_label=2)
        0.5
    """
    mask = labels >= min_label
    if start:
        mask = mask.clone()
        mask[:, :start] = False
    return masked_accuracy(logits, targets, mask)


def previous_token_accuracy(
    pattern: Float[Tensor, "batch query key"] | Float[Tensor, "query key"],
) -> Float[Tensor, " query"]:
    """Per query position ``t``, the fraction of sequences whose attention argmax is ``t - 1``
    (position 0 has no previous token and gives NaN).

    Example:
        >>> A = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.1, 0.8, 0.1]])
        >>> previous_token_accuracy(A).tolist()[1:]
        [1.0, 1.0]
    """
    if pattern.ndim == 2:
        pattern = pattern[None]
    if pattern.ndim != 3 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern shape {tuple(pattern.shape)}; expected [batch, query, key]")
    n = pattern.shape[-1]
    t = torch.arange(n, device=pattern.device)
    hits = (pattern.argmax(-1) == (t - 1)).float().mean(0)
    hits[0] = float("nan")
    return hits


def induction_attention_accuracy(
    pattern: Float[Tensor, "batch query key"],
    tokens: Int[Tensor, "batch pos"],
    mask: Tensor | None = None,
) -> float:
    """Fraction of query positions whose attention argmax ``s`` lands right after an earlier copy
    of the current token (``tokens[s - 1] == tokens[t]``, ``1 <= s <= t``).

    Scored on the positions where such an ``s`` exists (and, with ``mask``, where ``mask`` is
    True, e.g. triggers); NaN if there is none.

    Example:
        >>> toks = torch.tensor([[3, 7, 3]])
        >>> A = torch.tensor([[[1.0, 0, 0], [0.5, 0.5, 0], [0.0, 1.0, 0.0]]])
        >>> induction_attention_accuracy(A, toks)
        1.0
    """
    if pattern.ndim != 3 or pattern.shape[:2] != tokens.shape:
        raise ValueError(
            f"pattern shape {tuple(pattern.shape)} does not fit tokens {tuple(tokens.shape)}; "
            "expected [batch, query, key] and [batch, pos]"
        )
    n = tokens.shape[1]
    prev = torch.full_like(tokens, -1)
    prev[:, 1:] = tokens[:, :-1]
    # good[b, t, s]: key s follows a copy of the token at t, and s <= t.
    good = prev[:, None, :] == tokens[:, :, None]
    good &= torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()[None]
    has = good.any(-1)
    if mask is not None:
        has &= mask.to(has.device)
    best = pattern.argmax(-1, keepdim=True)
    hit = good.gather(-1, best)[..., 0]
    total = int(has.sum())
    return float((hit & has).sum() / total) if total else float("nan")


__all__ = [
    "induction_attention_accuracy",
    "label_accuracy",
    "masked_accuracy",
    "masked_mean",
    "previous_token_accuracy",
]
