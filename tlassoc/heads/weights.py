"""Head scores read from weights alone: copying, full-OV top-k, composition.

All read the model through :func:`~tlassoc.heads.adapter.head_weights` (row convention, see
:mod:`tlassoc.heads.adapter`), direct path only (no LayerNorm); definitions in docs/method.md,
Head metrics.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> full_ov_topk(AssocTransformer(presets.rpe(d_model=16)), k=5).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tlassoc.heads.adapter import HeadWeights, Model, check_layer, head_weights

__all__ = [
    "composition_baseline",
    "composition_frame",
    "composition_scores",
    "copying_scores",
    "full_ov_topk",
    "full_ov_topk_combined",
    "k_composition_top1",
]


def _source_tokens(d_vocab: int, n_tokens: int | None, seed: int, device: Any) -> Tensor:
    """The rows to score: all ids, or ``n_tokens`` of them drawn with ``seed`` (``-1``: all up
    to 4096 ids, 1000 above)."""
    if n_tokens == -1:
        n_tokens = None if d_vocab <= 4096 else 1000
    if n_tokens is None or n_tokens >= d_vocab:
        return torch.arange(d_vocab, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(d_vocab, generator=gen)[:n_tokens].sort().values.to(device)


@torch.no_grad()
def copying_scores(
    model: Model,
    *,
    form: Literal["relu_ratio", "eigen"] = "relu_ratio",
    n_tokens: int | None = -1,
    seed: int = 0,
) -> Float[Tensor, "n_layers n_heads"]:
    """Copying score of every head's full OV circuit ``W_E W_V W_O W_U`` (direct path).

    Definitions:

    * ``"relu_ratio"`` (Olsson et al. 2022): for a source token ``k`` let ``l = W_E[k] W_V W_O
      W_U`` be the head's direct logit contribution when it attends to ``k``; mean-subtract it
      (``l - mean(l)``), apply ReLU, and take the ratio ``relu(l)[k] / sum_j relu(l)[j]`` (0
      when nothing is raised). The score is the mean of that ratio over source tokens: 1 for a
      head that raises only the attended token.
    * ``"eigen"``: ``sum(lambda) / sum(|lambda|)`` over the eigenvalues ``lambda`` of the full
      OV circuit (computed as TransformerLens's ``FactoredMatrix.eigenvalues``, from the small
      ``d_head x d_head`` factor): +1 for pure copying, -1 for anti-copying.

    Args:
        model: Any of the three model kinds.
        form: ``"relu_ratio"`` or ``"eigen"``.
        n_tokens: Source tokens for the ReLU ratio: ``None`` all, an int a random subset
            (``seed``); the default -1 means all up to 4096 tokens and 1000 above (GPT-2).
        seed: Seed of the token subset.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> copying_scores(AssocTransformer(presets.rpe(d_model=16)), form="eigen").shape
        torch.Size([2, 1])
    """
    w = head_weights(model)
    if form == "eigen":
        from tlassoc._tl import FactoredMatrix

        A = w.W_E @ w.W_V  # [L, H, V, d_head] by broadcasting
        B = w.W_O @ w.W_U
        eig = FactoredMatrix(A, B).eigenvalues  # [L, H, d_head]
        return (eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-12)).cpu().float()
    if form != "relu_ratio":
        raise ValueError(f"form={form!r}; expected 'relu_ratio' or 'eigen'")
    src = _source_tokens(w.d_vocab, n_tokens, seed, w.W_E.device)
    rows = torch.arange(len(src), device=src.device)
    out = torch.zeros(w.n_layers, w.n_heads)
    for layer in range(w.n_layers):
        for head in range(w.n_heads):
            logits = w.full_ov(layer, head, src).float()
            raised = (logits - logits.mean(-1, keepdim=True)).relu()
            total = raised.sum(-1)
            ratio = torch.where(total > 0, raised[rows, src] / total.clamp_min(1e-30), 0.0)
            out[layer, head] = ratio.mean().cpu()
    return out


def _topk_hits(logits: Tensor, src: Tensor, k: int) -> Tensor:
    top = logits.topk(k, dim=-1).indices
    return (top == src[:, None]).any(-1).float()


@torch.no_grad()
def full_ov_topk(
    model: Model, k: int = 1, *, n_tokens: int | None = -1, seed: int = 0
) -> Float[Tensor, "n_layers n_heads"]:
    """Full-OV top-k of every head: fraction of source tokens ``i`` whose own logit is among
    the ``k`` largest of row ``i`` of ``W_E W_V W_O W_U``.

    ``n_tokens`` as in :func:`copying_scores` (rows subsampled for big vocabularies; every
    column is always kept).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> full_ov_topk(AssocTransformer(presets.rpe(d_model=16)), k=5).shape
        torch.Size([2, 1])
    """
    w = head_weights(model)
    if not 1 <= k <= w.d_vocab:
        raise ValueError(f"k={k}; expected 1 <= k <= d_vocab={w.d_vocab}")
    src = _source_tokens(w.d_vocab, n_tokens, seed, w.W_E.device)
    out = torch.zeros(w.n_layers, w.n_heads)
    for layer in range(w.n_layers):
        for head in range(w.n_heads):
            out[layer, head] = _topk_hits(w.full_ov(layer, head, src), src, k).mean().cpu()
    return out


@torch.no_grad()
def full_ov_topk_combined(
    model: Model,
    heads: Iterable[tuple[int, int]],
    k: int = 1,
    *,
    n_tokens: int | None = -1,
    seed: int = 0,
) -> float:
    """Full-OV top-k of the *sum* of several heads' OV circuits (e.g. ARENA's 1.4 + 1.10).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16))
        >>> 0.0 <= full_ov_topk_combined(model, [(0, 0), (1, 0)]) <= 1.0
        True
    """
    w = head_weights(model)
    src = _source_tokens(w.d_vocab, n_tokens, seed, w.W_E.device)
    heads = list(heads)
    if not heads:
        raise ValueError("heads=[]; expected at least one (layer, head)")
    total = sum(w.full_ov(layer, head, src) for layer, head in heads)
    return float(_topk_hits(total, src, k).mean())


def _factors(w: HeadWeights, kind: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(A1, A2, B1, B2)`` with ``W_A = A1 A2`` (source OV) and ``W_B = B1 B2`` per kind."""
    A1, A2 = w.W_V, w.W_O
    if kind == "Q":
        B1, B2 = w.W_Q, w.W_K.transpose(-1, -2)  # QK
    elif kind == "K":
        B1, B2 = w.W_K, w.W_Q.transpose(-1, -2)  # QK^T
    elif kind == "V":
        B1, B2 = w.W_V, w.W_O  # OV
    else:
        raise ValueError(f"kind={kind!r}; expected 'Q', 'K' or 'V'")
    return A1, A2, B1, B2


def _frobenius(gram_left: Tensor, gram_right: Tensor) -> Tensor:
    """``||F1 F2||_F = sqrt(trace(F1^T F1 F2 F2^T))`` from the two ``[n, r, r]`` Gram matrices."""
    prod = torch.einsum("art,ats->ars", gram_left, gram_right)
    return prod.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt()


def _composition(A1: Tensor, A2: Tensor, B1: Tensor, B2: Tensor) -> Tensor:
    """``||A1 A2 B1 B2||_F / (||A1 A2||_F ||B1 B2||_F)`` for every (source, destination) pair.

    Inputs ``[nA, d, r]``, ``[nA, r, d]``, ``[nB, d, r']``, ``[nB, r', d]``; output ``[nA, nB]``.
    Computed with Gram matrices of the small factors, never the ``d x d`` products.
    """
    A1, A2, B1, B2 = (x.double() for x in (A1, A2, B1, B2))
    GA = A1.transpose(-1, -2) @ A1  # [nA, r, r]
    HB = B2 @ B2.transpose(-1, -2)  # [nB, r', r']
    M = torch.einsum("ard,bds->abrs", A2, B1)  # A2 B1: [nA, nB, r, r']
    X = torch.einsum("art,abts->abrs", GA, M)
    Y = torch.einsum("abrt,bts->abrs", M, HB)
    num = (X * Y).sum(dim=(-1, -2)).clamp_min(0).sqrt()
    norm_a = _frobenius(GA, A2 @ A2.transpose(-1, -2))
    norm_b = _frobenius(B1.transpose(-1, -2) @ B1, HB)
    return (num / (norm_a[:, None] * norm_b[None, :]).clamp_min(1e-30)).float()


@torch.no_grad()
def composition_scores(
    model: Model, kind: Literal["Q", "K", "V"] = "K"
) -> Float[Tensor, "n_layers n_heads n_layers n_heads"]:
    """Composition scores (Elhage et al. 2021) between every earlier and later head.

    Definition: ``||W_A W_B||_F / (||W_A||_F ||W_B||_F)`` with ``W_A = W_V^A W_O^A`` the source
    head's OV circuit and ``W_B`` the destination head's ``W_Q W_K^T`` (Q-composition),
    ``(W_Q W_K^T)^T`` (K-composition) or ``W_V W_O`` (V-composition), in the row convention
    (same as ``HookedTransformer.all_composition_scores``). Entry ``[l1, h1, l2, h2]`` is
    ``NaN`` unless ``l1 < l2``. Compare with :func:`composition_baseline`.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> s = composition_scores(AssocTransformer(presets.rpe(d_model=16)), "K")
        >>> s.shape, bool(s[0, 0, 1, 0] > 0), bool(s[1, 0, 0, 0].isnan())
        (torch.Size([2, 1, 2, 1]), True, True)
    """
    w = head_weights(model)
    L, H = w.n_layers, w.n_heads
    A1, A2, B1, B2 = (x.reshape(L * H, *x.shape[2:]) for x in _factors(w, kind))
    scores = _composition(A1, A2, B1, B2).reshape(L, H, L, H).cpu()
    layer = torch.arange(L)
    later = (layer[:, None] < layer[None, :])[:, None, :, None].expand(L, H, L, H)
    return scores.masked_fill(~later, float("nan"))


@torch.no_grad()
def composition_baseline(
    model: Model, kind: Literal["Q", "K", "V"] = "K", n_samples: int = 200, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of the composition score of random Gaussian factors with the
    model's factor shapes (``W_A = A1 A2``, ``W_B = B1 B2``), the chance level of
    :func:`composition_scores` (Elhage et al. report scores as a multiple of it).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> mean, std = composition_baseline(AssocTransformer(presets.rpe(d_model=16)), "K", 20)
        >>> 0 < mean < 1
        True
    """
    w = head_weights(model)
    shapes = [x.shape[2:] for x in _factors(w, kind)]
    gen = torch.Generator().manual_seed(seed)
    A1, A2, B1, B2 = (torch.randn(n_samples, *s, generator=gen) for s in shapes)
    vals = torch.stack(
        [
            _composition(A1[j : j + 1], A2[j : j + 1], B1[j : j + 1], B2[j : j + 1])[0, 0]
            for j in range(n_samples)
        ]
    )
    return float(vals.mean()), float(vals.std())


def composition_frame(
    model: Model, kinds: Iterable[str] = ("Q", "K", "V"), n_samples: int = 200, seed: int = 0
) -> pd.DataFrame:
    """All composition scores as a tidy table: one row per (kind, source head, destination head)
    with the random baseline's mean/std and the score's ratio to the baseline mean.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> df = composition_frame(AssocTransformer(presets.rpe(d_model=16)), n_samples=10)
        >>> list(df.columns)[:4], len(df)
        (['kind', 'src_layer', 'src_head', 'dst_layer'], 3)
    """
    rows = []
    for kind in kinds:
        scores = composition_scores(model, kind)  # type: ignore[arg-type]
        mean, std = composition_baseline(model, kind, n_samples, seed)  # type: ignore[arg-type]
        L, H = scores.shape[:2]
        for l1, h1, l2, h2 in itertools.product(range(L), range(H), range(L), range(H)):
            if l1 >= l2:
                continue
            s = float(scores[l1, h1, l2, h2])
            rows.append(
                dict(
                    kind=kind,
                    src_layer=l1,
                    src_head=h1,
                    dst_layer=l2,
                    dst_head=h2,
                    score=s,
                    baseline_mean=mean,
                    baseline_std=std,
                    ratio=s / mean,
                )
            )
    return pd.DataFrame(rows)


@torch.no_grad()
def k_composition_top1(
    model: Model,
    src_layer: int = 0,
    dst_layer: int = 1,
    *,
    n_tokens: int | None = -1,
    seed: int = 0,
) -> Float[Tensor, "n_heads_src n_heads_dst"]:
    """K-composition circuit top-1 for every (source head, destination head) pair.

    Definition: ``M = W_E W_Q^dst (W_E W_V^src W_O^src W_K^dst)^T`` (``[d_vocab, d_vocab]``,
    query token by the token *before* the key); the score is the fraction of tokens ``i`` with
    ``argmax_j M[i, j] = i``: the destination head, reading the source head's output at the
    key, looks for the current token one position back. Direct path only (no LayerNorm);
    ``n_tokens`` as in :func:`copying_scores` (the same subset for rows and columns).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> k_composition_top1(AssocTransformer(presets.rpe(d_model=16))).shape
        torch.Size([1, 1])
    """
    w = head_weights(model)
    check_layer(src_layer, w.n_layers, "src_layer")
    check_layer(dst_layer, w.n_layers, "dst_layer")
    if src_layer >= dst_layer:
        raise ValueError(f"src_layer={src_layer}; expected < dst_layer={dst_layer}")
    tok = _source_tokens(w.d_vocab, n_tokens, seed, w.W_E.device)
    E = w.W_E[tok]
    out = torch.zeros(w.n_heads, w.n_heads)
    diag = torch.arange(len(tok), device=E.device)
    for hs in range(w.n_heads):
        key_in = w.ov_out(src_layer, hs, tok)  # [n, d_model]
        for hd in range(w.n_heads):
            q = E @ w.W_Q[dst_layer, hd]
            k = key_in @ w.W_K[dst_layer, hd]
            out[hs, hd] = ((q @ k.T).argmax(-1) == diag).float().mean().cpu()
    return out
