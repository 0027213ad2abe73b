"""Head scores on token tensors, for any of the three model kinds.

Works unchanged on :class:`~tlassoc.model.AssocTransformer`, TransformerLens 3.x
``HookedTransformer`` and TransformerLens 4.x ``TransformerBridge``: patterns are read with
``run_with_cache(tokens, names_filter=...)`` from ``blocks.{l}.attn.hook_pattern`` and weights
through :func:`head_weights`, the one adapter for the three kinds. No tokenizer is needed.

* :mod:`tlassoc.heads.adapter`: :func:`head_weights` / :class:`HeadWeights`,
  :func:`model_kind`, token and BOS helpers, and the matrix convention of the whole package.
* :mod:`tlassoc.heads.patterns`: pattern scores (previous-token, induction stripe, duplicate
  token, prefix matching, ``detect_head``-style pattern matching).
* :mod:`tlassoc.heads.weights`: weight scores (copying, full-OV top-k, composition,
  K-composition circuit top-1).
* :mod:`tlassoc.heads.table`: :func:`scores_frame`, :func:`head_scores`.

Every score is a ``[n_layers, n_heads]`` tensor (per-position forms add a position axis);
definitions in docs/method.md, Head metrics.

Example:
    >>> import torch
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=128))
    >>> induction_scores(model, repeat_len=20, n_samples=2).shape
    torch.Size([2, 1])
"""

from tlassoc.heads.adapter import HeadWeights, bos_token_id, head_weights, model_kind
from tlassoc.heads.patterns import (
    PATTERN_HOOK as PATTERN_HOOK,
)
from tlassoc.heads.patterns import (
    attention_patterns,
    detection_pattern,
    duplicate_token_scores,
    induction_scores,
    induction_stripe,
    pattern_match_scores,
    prefix_matching_scores,
    previous_token_scores,
    random_block_tokens,
)
from tlassoc.heads.table import SCORE_FUNCTIONS as SCORE_FUNCTIONS
from tlassoc.heads.table import head_scores, scores_frame
from tlassoc.heads.weights import (
    composition_baseline,
    composition_frame,
    composition_scores,
    copying_scores,
    full_ov_topk,
    full_ov_topk_combined,
    k_composition_top1,
)

__all__ = [
    "HeadWeights",
    "attention_patterns",
    "bos_token_id",
    "composition_baseline",
    "composition_frame",
    "composition_scores",
    "copying_scores",
    "detection_pattern",
    "duplicate_token_scores",
    "full_ov_topk",
    "full_ov_topk_combined",
    "head_scores",
    "head_weights",
    "induction_scores",
    "induction_stripe",
    "k_composition_top1",
    "model_kind",
    "pattern_match_scores",
    "prefix_matching_scores",
    "previous_token_scores",
    "random_block_tokens",
    "scores_frame",
]
