"""Memory recall probes (Bietti et al. 2023) and attention probes (see docs/method.md, Recall
probes).

Each weight probe asks whether a matrix stores the pairs of the ideal induction circuit: it reads
the matrix through the frozen embeddings and checks that the stored partner wins the argmax.
Weights are read through :func:`tlassoc.heads.adapter.head_weights`, in the row convention
stated there: a token ``k`` enters as the row ``w_E(k) = W_E[k]``, layer ``l``'s value-output
map is ``W_V^l W_O^l`` and its score is ``score(t, s) = (x_t W_Q^l) . (x_s W_K^l) / sqrt(d_head)``.
Every probe takes any of the three model kinds, or their :class:`~tlassoc.heads.HeadWeights`.

* :func:`wo2_probe` (``W_O²``): fraction of tokens ``k`` with
  ``argmax_j [w_E(k) W_V² W_O² W_U]_j = k``.
* :func:`wk2_probe` (``W_K²``): fraction of triggers ``k`` with
  ``argmax_{j in triggers} (w_E(k) W_Q²) . (w_E(j) W_V¹ W_O¹ W_K²) = k``.
* :func:`wk1_probe` (``W_K¹``): ``standard`` positions: fraction of positions ``t >= 1`` with
  ``argmax_{s <= t} (p_t W_Q¹) . (p_s W_K¹) = t - 1``; ``relative`` positions (vector form):
  fraction of tokens ``k`` whose highest-scoring distance ``argmax_j (w_E(k) W_Q¹) . (r_j W_K¹)``
  is 1; ``relative`` (bias form): 1 if ``argmax_j b_rel[j] = 1`` else 0.
* :func:`wf_probe` (``W_F``): mean over non-trigger tokens ``i`` (that have successors) of
  ``KL(π_b(·|i) || softmax(FFN(w_E(i)) W_U))``, in nats (lower is better).
* :func:`previous_token_accuracy`, :func:`induction_attention_accuracy` (defined in
  :mod:`tlassoc.metrics`): attention probes on patterns (layer-0 argmax at ``t`` is ``t - 1``;
  layer-1 argmax lands right after an earlier copy of the current token).

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

from tlassoc.heads.adapter import (
    HeadWeights,
    Model,
    check_head,
    check_layer,
    check_tokens,
    head_weights,
)

# Pattern accuracies live in tlassoc.metrics (one definition); re-exported here.
from tlassoc.metrics import induction_attention_accuracy, previous_token_accuracy

#: Number of leading positions of the "first 64" variant of the ``W_K¹`` probe.
FIRST_POSITIONS = 64


def _weights(model: Model | HeadWeights, layer: int, head: int) -> HeadWeights:
    """The model's weights (read once), with ``layer`` and ``head`` checked."""
    w = head_weights(model)
    check_layer(layer, w.n_layers)
    check_head(head, w.n_heads)
    return w


def _ids(tokens: Any, d_vocab: int, device: Any) -> Tensor:
    if tokens is None:
        return torch.arange(d_vocab, device=device)
    ids = torch.as_tensor(tokens, device=device).long().flatten()
    if ids.numel() == 0:
        raise ValueError("tokens=[]; expected at least one token id")
    return check_tokens(ids, d_vocab)[0]


@torch.no_grad()
def wo2_probe(
    model: Model | HeadWeights,
    layer: int = 1,
    head: int = 0,
    tokens: Int[Tensor, " n"] | None = None,
) -> float:
    """``W_O²`` recall: fraction of tokens ``k`` whose own logit is the largest in the full OV
    circuit ``w_E(k) W_V W_O W_U`` of ``(layer, head)``.

    Args:
        model: Any of the three model kinds (or its ``HeadWeights``).
        layer: The induction layer (default 1).
        head: The head.
        tokens: Tokens to score (default: the whole vocabulary).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> m = AssocTransformer(presets.rpe(d_model=32, n_ctx=16))
        >>> 0.0 <= wo2_probe(m) <= 1.0
        True
    """
    w = _weights(model, layer, head)
    ids = _ids(tokens, w.d_vocab, w.W_E.device)
    logits = w.full_ov(layer, head, ids)
    return float((logits.argmax(-1) == ids).float().mean())


@torch.no_grad()
def wk2_scores(
    model: Model | HeadWeights, triggers: Int[Tensor, " k"], layer: int = 1, head: int = 0
) -> Float[Tensor, "k k"]:
    """``[query trigger, key trigger]`` scores ``(w_E(k) W_Q) . (w_E(j) W_V¹ W_O¹ W_K)`` of the
    induction layer, the key being what layer ``layer - 1`` (all its heads) writes for an
    attended token ``j``.
    """
    w = _weights(model, layer, head)
    if layer < 1:
        raise ValueError(f"layer={layer}; the W_K² probe expected a layer >= 1")
    ids = _ids(triggers, w.d_vocab, w.W_E.device)
    q = w.W_E[ids] @ w.W_Q[layer, head]
    k = w.ov_out(layer - 1, None, ids) @ w.W_K[layer, head]
    return q @ k.T / math.sqrt(w.d_head)


@torch.no_grad()
def wk2_probe(
    model: Model | HeadWeights, triggers: Int[Tensor, " k"], layer: int = 1, head: int = 0
) -> float:
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
    model: Model | HeadWeights, n_positions: int | None = None, layer: int = 0, head: int = 0
) -> Tensor:
    """``standard`` positions: for each position ``t`` in ``[1, n_positions)``, whether
    ``argmax_{s <= t} (p_t W_Q) . (p_s W_K) = t - 1`` (bool tensor of length ``n - 1``)."""
    w = _weights(model, layer, head)
    if w.W_pos is None:
        raise ValueError(
            f"positional_embedding_type={w.positional_embedding_type!r}; wk1_position_hits "
            "expected absolute positions ('standard')"
        )
    n_ctx = w.W_pos.shape[0]
    n = n_ctx if n_positions is None else n_positions
    if not 2 <= n <= n_ctx:
        raise ValueError(f"n_positions={n}; expected 2 <= n <= n_ctx={n_ctx}")
    pos = w.W_pos[:n]
    scores = (pos @ w.W_Q[layer, head]) @ (pos @ w.W_K[layer, head]).T
    causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
    best = scores.masked_fill(causal, float("-inf")).argmax(-1)
    t = torch.arange(n, device=scores.device)
    return (best == t - 1)[1:]


@torch.no_grad()
def wk1_distance_scores(
    model: Model | HeadWeights, layer: int = 0, head: int = 0
) -> Float[Tensor, "vocab n_dist"]:
    """``relative`` positions: ``[token, distance]`` scores of the relative term; vector form
    ``(w_E(k) W_Q) . (r_j W_K) / sqrt(d_head)``, bias form ``b_rel[head, j]`` for every token."""
    w = _weights(model, layer, head)
    rel = w.relative_at(layer)
    if rel is None:
        raise ValueError(f"layer={layer}; expected a layer with a relative-position term")
    if rel.b_rel is not None:
        return rel.b_rel[head].expand(w.d_vocab, -1)
    q = w.W_E @ w.W_Q[layer, head]
    return q @ (rel.W_rel @ w.W_K[layer, head]).T / math.sqrt(w.d_head)


@torch.no_grad()
def wk1_probe(
    model: Model | HeadWeights, n_positions: int | None = None, layer: int = 0, head: int = 0
) -> float:
    """``W_K¹`` recall of the previous-token head.

    ``standard`` positions: fraction of positions ``t`` in ``[1, n_positions)`` (default
    ``n_ctx``) with ``argmax_{s <= t} (p_t W_Q) . (p_s W_K) = t - 1``. ``relative`` positions:
    fraction of tokens whose highest-scoring distance is 1 (see :func:`wk1_distance_scores`).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> m = AssocTransformer(presets.ape(d_model=32, n_ctx=16))
        >>> 0.0 <= wk1_probe(m, n_positions=8) <= 1.0
        True
    """
    w = _weights(model, layer, head)
    if w.relative_at(layer) is not None:
        best = wk1_distance_scores(w, layer, head).argmax(-1)
        return float((best == 1).float().mean())
    return float(wk1_position_hits(w, n_positions, layer, head).float().mean())


@torch.no_grad()
def wf_probe(
    model: Model | HeadWeights,
    bigram: Any,
    triggers: Int[Tensor, " k"] | None = None,
    layer: int | None = None,
) -> float:
    """``W_F`` recall: mean over non-trigger tokens ``i`` that have successors of
    ``KL(π_b(·|i) || softmax(FFN(w_E(i)) W_U))`` in nats (0 = the bigrams are stored exactly).

    Args:
        model: A model with a feed-forward layer (or its ``HeadWeights``).
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
    w = head_weights(model)
    ffn_layers = list(w.ffn_layers)
    if not ffn_layers:
        raise ValueError("wf_probe expected a model with a feed-forward layer; it has none")
    layer = ffn_layers[-1] if layer is None else layer
    if layer not in ffn_layers:
        raise ValueError(f"layer={layer}; expected a layer with a feed-forward block {ffn_layers}")
    if bigram.d_vocab != w.d_vocab:
        raise ValueError(f"bigram.d_vocab={bigram.d_vocab}; expected the model's {w.d_vocab}")
    dev = w.W_E.device
    keep = bigram.bigram_counts.sum(-1).to(dev) > 0
    if triggers is not None:
        keep[_ids(triggers, w.d_vocab, dev)] = False
    ids = torch.nonzero(keep).flatten()
    logp_model = (w.ffn[layer](w.W_E[ids]) @ w.W_U).log_softmax(-1)
    p = bigram.conditional.to(dev)[ids]
    kl = (p * (p.clamp(min=1e-30).log() - logp_model)).sum(-1)
    return float(kl.mean())


@torch.no_grad()
def recall_probes(
    model: Model | HeadWeights,
    triggers: Int[Tensor, " k"] | None = None,
    bigram: Any = None,
    n_positions: int | None = None,
) -> dict[str, float]:
    """All recall probes that apply to ``model``, as a flat dict (the weights are read once).

    Keys: ``probe_wo2``; ``probe_wk2`` (with ``triggers``); ``probe_wk1`` (``relative``
    positions: distance form; ``standard``: over ``n_positions``, default ``n_ctx``) and, for
    ``standard`` positions, ``probe_wk1_first64`` and ``probe_wk1_all`` (all ``n_ctx``
    positions); ``probe_wf`` (models with a feed-forward layer, given ``bigram``).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> m = AssocTransformer(presets.ape(d_model=32, n_ctx=128))
        >>> sorted(recall_probes(m, triggers=torch.tensor([0, 1])))
        ['probe_wk1', 'probe_wk1_all', 'probe_wk1_first64', 'probe_wk2', 'probe_wo2']
    """
    w = head_weights(model)
    out: dict[str, float] = {}
    if w.n_layers >= 2:
        out["probe_wo2"] = wo2_probe(w)
        if triggers is not None:
            out["probe_wk2"] = wk2_probe(w, triggers)
    if w.relative_at(0) is not None:
        out["probe_wk1"] = wk1_probe(w)
    elif w.W_pos is not None:
        n_ctx = w.W_pos.shape[0]
        n = min(n_positions or n_ctx, n_ctx)
        if n >= 2:
            out["probe_wk1"] = wk1_probe(w, n)
        out["probe_wk1_first64"] = wk1_probe(w, min(FIRST_POSITIONS, n_ctx))
        out["probe_wk1_all"] = wk1_probe(w, n_ctx)
    if w.ffn_layers and bigram is not None:
        out["probe_wf"] = wf_probe(w, bigram, triggers)
    return out


def probe_evaluator(task: Any, bigram: Any = None) -> Any:
    """An evaluator for :func:`tlassoc.training.train` that logs :func:`recall_probes`.

    Uses the task's fixed triggers (for ``probe_wk2``), its bigram model (for ``probe_wf``) and
    its sequence length (the positions of the absolute ``W_K¹`` probe).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> from tlassoc.data import BigramModel, TriggerBigramTask
        >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=2)
        >>> sorted(probe_evaluator(task)(AssocTransformer(presets.rpe(d_model=16, n_ctx=16))))
        ['probe_wk1', 'probe_wk2', 'probe_wo2']
    """
    triggers = task.fixed_triggers if getattr(task, "trigger_mode", None) == "fixed" else None
    bigram = bigram if bigram is not None else getattr(task, "bigram", None)

    def evaluator(model: Any) -> dict[str, float]:
        return recall_probes(model, triggers=triggers, bigram=bigram, n_positions=task.seq_len)

    return evaluator


__all__ = [
    "FIRST_POSITIONS",
    "induction_attention_accuracy",
    "previous_token_accuracy",
    "probe_evaluator",
    "recall_probes",
    "wf_probe",
    "wk1_distance_scores",
    "wk1_position_hits",
    "wk1_probe",
    "wk2_probe",
    "wk2_scores",
    "wo2_probe",
]
