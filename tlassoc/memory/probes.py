"""Memory recall probes (Bietti et al. 2023; PAPER.md §4) and attention probes.

Each weight probe asks whether a matrix stores the pairs of the ideal induction circuit: it reads
the matrix through the frozen embeddings and checks that the stored partner wins the argmax.
Row-vector convention (as in the model): a token ``k`` enters as the row ``w_E(k) = W_E[k]``,
layer ``l``'s value-output map is ``W_V^l W_O^l`` and its score is
``score(t, s) = (x_t W_Q^l) . (x_s W_K^l) / sqrt(d_head)``.

* :func:`wo2_probe` (``W_O²``): fraction of tokens ``k`` with
  ``argmax_j [w_E(k) W_V² W_O² W_U]_j = k``.
* :func:`wk2_probe` (``W_K²``): fraction of triggers ``k`` with
  ``argmax_{j in triggers} (w_E(k) W_Q²) . (w_E(j) W_V¹ W_O¹ W_K²) = k``.
* :func:`wk1_probe` (``W_K¹``): APE: fraction of positions ``t >= 1`` with
  ``argmax_{s <= t} (p_t W_Q¹) . (p_s W_K¹) = t - 1``; RPE (vector form): fraction of tokens ``k``
  whose highest-scoring distance ``argmax_j (w_E(k) W_Q¹) . (r_j W_K¹)`` is 1; RPE (bias form):
  1 if ``argmax_j b_rel[j] = 1`` else 0.
* :func:`wf_probe` (``W_F``): mean over non-trigger tokens ``i`` (that have successors) of
  ``KL(π_b(·|i) || softmax(FFN(w_E(i)) W_U))``, in nats (lower is better).
* :func:`previous_token_accuracy`, :func:`induction_attention_accuracy`: attention probes on
  patterns (layer-0 argmax at ``t`` is ``t - 1``; layer-1 argmax lands right after an earlier copy
  of the current token).

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.ape(d_model=32, n_ctx=64))
    >>> 0.0 <= wo2_probe(model) <= 1.0
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: Number of leading positions of the "first 64" variant of the ``W_K¹`` probe.
FIRST_POSITIONS = 64


def _check_layer_head(model: Any, layer: int, head: int) -> None:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} is outside [0, n_layers={model.cfg.n_layers})")
    if not 0 <= head < model.cfg.n_heads:
        raise ValueError(f"head {head} is outside [0, n_heads={model.cfg.n_heads})")


def _layer_ov(model: Any, layer: int) -> Float[Tensor, "d_model d_model"]:
    """``Σ_h W_V^h W_O^h`` of ``layer``: what the whole layer writes for an attended input."""
    attn = model.blocks[layer].attn
    return torch.einsum("hmd,hdn->mn", attn.W_V, attn.W_O)


@torch.no_grad()
def wo2_probe(
    model: Any, layer: int = 1, head: int = 0, tokens: Int[Tensor, " n"] | None = None
) -> float:
    """``W_O²`` recall: fraction of tokens ``k`` whose own logit is the largest in
    ``w_E(k) W_V W_O W_U`` of ``(layer, head)``.

    Args:
        model: An :class:`~tlassoc.model.AssocTransformer` (or anything with its weights).
        layer: The induction layer (default 1).
        head: The head.
        tokens: Tokens to score (default: the whole vocabulary).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> m = AssocTransformer(presets.rpe(d_model=32, n_ctx=16))
        >>> 0.0 <= wo2_probe(m) <= 1.0
        True
    """
    _check_layer_head(model, layer, head)
    attn = model.blocks[layer].attn
    ids = _ids(tokens, model.cfg.d_vocab, model.W_E.device)
    logits = model.W_E[ids] @ attn.W_V[head] @ attn.W_O[head] @ model.W_U
    return float((logits.argmax(-1) == ids).float().mean())


@torch.no_grad()
def wk2_scores(
    model: Any, triggers: Int[Tensor, " k"], layer: int = 1, head: int = 0
) -> Float[Tensor, "k k"]:
    """``[query trigger, key trigger]`` scores ``(w_E(k) W_Q) . (w_E(j) W_V¹ W_O¹ W_K)`` of the
    induction layer, the key being what layer ``layer - 1`` writes for an attended token ``j``.
    """
    _check_layer_head(model, layer, head)
    if layer < 1:
        raise ValueError(f"layer {layer}; the W_K² probe needs a layer >= 1")
    attn = model.blocks[layer].attn
    ids = _ids(triggers, model.cfg.d_vocab, model.W_E.device)
    emb = model.W_E[ids]
    q = emb @ attn.query_weight()[head]
    k = emb @ _layer_ov(model, layer - 1) @ attn.W_K[head]
    return q @ k.T / math.sqrt(model.cfg.d_head)


@torch.no_grad()
def wk2_probe(model: Any, triggers: Int[Tensor, " k"], layer: int = 1, head: int = 0) -> float:
    """``W_K²`` recall: fraction of triggers ``k`` with
    ``argmax_{j in triggers} (w_E(k) W_Q²) . (w_E(j) W_V¹ W_O¹ W_K²) = k``.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> m = AssocTransformer(presets.rpe(d_model=32, n_ctx=16))
        >>> 0.0 <= wk2_probe(m, torch.tensor([1, 2, 3])) <= 1.0
        True
    """
    scores = wk2_scores(model, triggers, layer, head)
    return float(
        (scores.argmax(-1) == torch.arange(len(scores), device=scores.device)).float().mean()
    )


@torch.no_grad()
def wk1_position_hits(
    model: Any, n_positions: int | None = None, layer: int = 0, head: int = 0
) -> Tensor:
    """APE: for each position ``t`` in ``[1, n_positions)``, whether
    ``argmax_{s <= t} (p_t W_Q) . (p_s W_K) = t - 1`` (bool tensor of length ``n - 1``)."""
    _check_layer_head(model, layer, head)
    if model.cfg.positional_embedding_type != "standard":
        raise ValueError(
            "wk1_position_hits needs absolute positions (positional_embedding_type='standard'), "
            f"got {model.cfg.positional_embedding_type!r}"
        )
    n = model.cfg.n_ctx if n_positions is None else n_positions
    if not 2 <= n <= model.cfg.n_ctx:
        raise ValueError(f"n_positions={n}; expected 2 <= n <= n_ctx={model.cfg.n_ctx}")
    attn = model.blocks[layer].attn
    pos = model.W_pos[:n]
    scores = (pos @ attn.query_weight()[head]) @ (pos @ attn.W_K[head]).T
    causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
    best = scores.masked_fill(causal, float("-inf")).argmax(-1)
    t = torch.arange(n, device=scores.device)
    return (best == t - 1)[1:]


@torch.no_grad()
def wk1_distance_scores(model: Any, layer: int = 0, head: int = 0) -> Float[Tensor, "vocab n_dist"]:
    """RPE: ``[token, distance]`` scores of the relative term; vector form
    ``(w_E(k) W_Q) . (r_j W_K) / sqrt(d_head)``, bias form ``b_rel[head, j]`` for every token."""
    _check_layer_head(model, layer, head)
    if not model.cfg.has_relative(layer):
        raise ValueError(f"layer {layer} has no relative-position term")
    attn = model.blocks[layer].attn
    if model.cfg.relative_form == "bias":
        return attn.b_rel[head].expand(model.cfg.d_vocab, -1)
    q = model.W_E @ attn.query_weight()[head]
    return q @ (model.W_rel @ attn.W_K[head]).T / math.sqrt(model.cfg.d_head)


@torch.no_grad()
def wk1_probe(model: Any, n_positions: int | None = None, layer: int = 0, head: int = 0) -> float:
    """``W_K¹`` recall of the previous-token head.

    APE: fraction of positions ``t`` in ``[1, n_positions)`` (default ``n_ctx``) with
    ``argmax_{s <= t} (p_t W_Q) . (p_s W_K) = t - 1``. RPE: fraction of tokens whose
    highest-scoring distance is 1 (see :func:`wk1_distance_scores`).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> m = AssocTransformer(presets.ape(d_model=32, n_ctx=16))
        >>> 0.0 <= wk1_probe(m, n_positions=8) <= 1.0
        True
    """
    if model.cfg.has_relative(layer):
        best = wk1_distance_scores(model, layer, head).argmax(-1)
        return float((best == 1).float().mean())
    return float(wk1_position_hits(model, n_positions, layer, head).float().mean())


@torch.no_grad()
def wf_probe(
    model: Any, bigram: Any, triggers: Int[Tensor, " k"] | None = None, layer: int | None = None
) -> float:
    """``W_F`` recall: mean over non-trigger tokens ``i`` that have successors of
    ``KL(π_b(·|i) || softmax(FFN(w_E(i)) W_U))`` in nats (0 = the bigrams are stored exactly).

    Args:
        model: A model with a feed-forward layer.
        bigram: A :class:`~tlassoc.data.BigramModel` (its ``conditional`` rows are ``π_b``).
        triggers: Tokens to leave out (their next token comes from the context).
        layer: The feed-forward layer (default: the last one that has one).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> from tlassoc.data import BigramModel
        >>> m = AssocTransformer(presets.ape(d_model=32, n_ctx=16, ffn_type="linear"))
        >>> wf_probe(m, BigramModel.tiny_shakespeare()) > 0
        True
    """
    ffn_layers = list(model.cfg.ffn_layers or ())
    if not ffn_layers:
        raise ValueError("wf_probe needs a model with a feed-forward layer (ffn_type is None)")
    layer = ffn_layers[-1] if layer is None else layer
    if layer not in ffn_layers:
        raise ValueError(f"layer {layer} has no feed-forward block; layers with one: {ffn_layers}")
    if bigram.d_vocab != model.cfg.d_vocab:
        raise ValueError(f"bigram d_vocab {bigram.d_vocab} != model d_vocab {model.cfg.d_vocab}")
    dev = model.W_E.device
    keep = bigram.bigram_counts.sum(-1).to(dev) > 0
    if triggers is not None:
        keep[_ids(triggers, model.cfg.d_vocab, dev)] = False
    ids = torch.nonzero(keep).flatten()
    logp_model = (model.blocks[layer].mlp(model.W_E[ids]) @ model.W_U).log_softmax(-1)
    p = bigram.conditional.to(dev)[ids]
    kl = (p * (p.clamp(min=1e-30).log() - logp_model)).sum(-1)
    return float(kl.mean())


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


@torch.no_grad()
def recall_probes(
    model: Any,
    triggers: Int[Tensor, " k"] | None = None,
    bigram: Any = None,
    n_positions: int | None = None,
) -> dict[str, float]:
    """All recall probes that apply to ``model``, as a flat dict.

    Keys: ``probe_wo2``; ``probe_wk2`` (with ``triggers``); ``probe_wk1`` (RPE: distance form;
    APE: over ``n_positions``, default ``n_ctx``) and, for APE, ``probe_wk1_first64`` and
    ``probe_wk1_all`` (all ``n_ctx`` positions); ``probe_wf`` (models with a feed-forward layer,
    given ``bigram``).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> m = AssocTransformer(presets.ape(d_model=32, n_ctx=128))
        >>> sorted(recall_probes(m, triggers=torch.tensor([0, 1])))
        ['probe_wk1', 'probe_wk1_all', 'probe_wk1_first64', 'probe_wk2', 'probe_wo2']
    """
    out: dict[str, float] = {}
    if model.cfg.n_layers >= 2:
        out["probe_wo2"] = wo2_probe(model)
        if triggers is not None:
            out["probe_wk2"] = wk2_probe(model, triggers)
    if model.cfg.has_relative(0):
        out["probe_wk1"] = wk1_probe(model)
    elif model.cfg.positional_embedding_type == "standard":
        n_ctx = model.cfg.n_ctx
        n = min(n_positions or n_ctx, n_ctx)
        if n >= 2:
            out["probe_wk1"] = wk1_probe(model, n)
        out["probe_wk1_first64"] = wk1_probe(model, min(FIRST_POSITIONS, n_ctx))
        out["probe_wk1_all"] = wk1_probe(model, n_ctx)
    if model.cfg.ffn_type is not None and bigram is not None:
        out["probe_wf"] = wf_probe(model, bigram, triggers)
    return out


def _ids(tokens: Any, d_vocab: int, device: Any) -> Tensor:
    if tokens is None:
        return torch.arange(d_vocab, device=device)
    ids = torch.as_tensor(tokens, device=device).long().flatten()
    if ids.numel() == 0:
        raise ValueError("token list is empty; expected at least one token id")
    if int(ids.min()) < 0 or int(ids.max()) >= d_vocab:
        raise ValueError(f"token ids {ids.tolist()} must lie in [0, d_vocab={d_vocab})")
    return ids


__all__ = [
    "FIRST_POSITIONS",
    "induction_attention_accuracy",
    "previous_token_accuracy",
    "recall_probes",
    "wf_probe",
    "wk1_distance_scores",
    "wk1_position_hits",
    "wk1_probe",
    "wk2_probe",
    "wk2_scores",
    "wo2_probe",
]
