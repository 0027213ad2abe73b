"""Head scores on token tensors, for any TransformerLens model.

Works unchanged on :class:`~tlassoc.model.AssocTransformer`, TransformerLens 3.x
``HookedTransformer`` and TransformerLens 4.x ``TransformerBridge``: patterns are read with
``run_with_cache(tokens, names_filter=...)`` from ``blocks.{l}.attn.hook_pattern`` and weights
through :func:`head_weights`, the one adapter for the three model kinds. No tokenizer is needed.

Every score is a ``[n_layers, n_heads]`` tensor (per-position forms add a position axis);
:func:`scores_frame` turns a dict of them into one tidy DataFrame. Definitions (``A`` = one
head's attention pattern of one sequence, rows are queries ``t``, columns keys ``s``):

* previous-token: mean over ``t >= 1`` of ``A[t, t-1]`` (argmax form: fraction of ``t`` with
  ``argmax_s A[t, s] = t - 1``);
* induction (stripe): on a random block of length ``L`` repeated twice, mean over the queries of
  the second block of ``A[t, t-L+1]``;
* prefix matching (Olsson et al. 2022): random block repeated 4 times, attention to the
  positions right after earlier copies of the current token;
* duplicate token: attention to earlier copies of the current token;
* copying (ReLU-ratio and eigenvalue forms), full-OV top-k, composition scores with a random
  baseline, and the K-composition circuit top-1 (weights only).

Example:
    >>> import torch
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=128))
    >>> induction_scores(model, repeat_len=20, n_samples=2).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

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

PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"


# ------------------------------------------------------------------------------------------------
# Model access: one adapter for AssocTransformer, HookedTransformer and TransformerBridge
# ------------------------------------------------------------------------------------------------


def model_kind(model: Any) -> Literal["assoc", "hooked_transformer", "bridge", "other"]:
    """Which kind of TransformerLens model ``model`` is.

    Example:
        >>> from tlassoc import AssocTransformer, AssocConfig
        >>> model_kind(AssocTransformer(AssocConfig(d_model=16)))
        'assoc'
    """
    name = type(model).__name__
    if name == "AssocTransformer":
        return "assoc"
    if name == "HookedTransformer":
        return "hooked_transformer"
    if "Bridge" in name:
        return "bridge"
    return "other"


@dataclass
class HeadWeights:
    """A model's weights in TransformerLens's layout, detached.

    Attributes:
        W_E: ``[d_vocab, d_model]``.
        W_U: ``[d_model, d_vocab]``.
        W_Q, W_K, W_V: ``[n_layers, n_heads, d_model, d_head]`` (``W_Q`` is the identity for an
            ``identity_query`` AssocTransformer; grouped key/value heads are expanded).
        W_O: ``[n_layers, n_heads, d_head, d_model]``.
    """

    W_E: Float[Tensor, "d_vocab d_model"]
    W_U: Float[Tensor, "d_model d_vocab"]
    W_Q: Float[Tensor, "n_layers n_heads d_model d_qk"]
    W_K: Float[Tensor, "n_layers n_heads d_model d_qk"]
    W_V: Float[Tensor, "n_layers n_heads d_model d_head"]
    W_O: Float[Tensor, "n_layers n_heads d_head d_model"]

    @property
    def n_layers(self) -> int:
        return self.W_K.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_K.shape[1]

    @property
    def d_vocab(self) -> int:
        return self.W_E.shape[0]


def _expand_kv(w: Tensor, n_heads: int) -> Tensor:
    if w.shape[1] == n_heads:
        return w
    return w.repeat_interleave(n_heads // w.shape[1], dim=1)


@torch.no_grad()
def head_weights(model: Any) -> HeadWeights:
    """Read ``W_E, W_U, W_Q, W_K, W_V, W_O`` from any of the three model kinds.

    AssocTransformer, ``HookedTransformer`` and ``TransformerBridge`` all expose the stacked
    TransformerLens properties; this adapter detaches them, expands grouped key/value heads to
    ``n_heads`` and checks the shapes, so every weight-based score reads one layout. A
    ``TransformerBridge`` reports the weights as currently processed: load it through
    :func:`tlassoc.pretrained.load_model` (compatibility mode, LayerNorm folded) to compare with
    ``HookedTransformer``.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> w = head_weights(AssocTransformer(presets.rpe(d_model=16)))
        >>> tuple(w.W_Q.shape)
        (2, 1, 16, 16)
    """
    try:
        W_E, W_U = model.W_E, model.W_U
        W_Q, W_K, W_V, W_O = model.W_Q, model.W_K, model.W_V, model.W_O
    except AttributeError as err:  # pragma: no cover - depends on foreign model classes
        raise ValueError(
            f"{type(model).__name__} does not expose TransformerLens weights (W_E, W_U, W_Q, W_K, "
            f"W_V, W_O): {err}"
        ) from None
    n_heads = model.cfg.n_heads
    w = HeadWeights(
        W_E=W_E.detach(),
        W_U=W_U.detach(),
        W_Q=W_Q.detach(),
        W_K=_expand_kv(W_K.detach(), n_heads),
        W_V=_expand_kv(W_V.detach(), n_heads),
        W_O=W_O.detach(),
    )
    if w.W_Q.shape[:2] != (model.cfg.n_layers, n_heads):
        raise ValueError(
            f"W_Q has shape {tuple(w.W_Q.shape)}; expected [n_layers={model.cfg.n_layers}, "
            f"n_heads={n_heads}, d_model, d_head]"
        )
    return w


def bos_token_id(model: Any) -> int | None:
    """The BOS id TransformerLens would prepend to text for ``model`` (``None``: none).

    AssocTransformer's character vocabulary has no BOS; GPT-2 prepends ``<|endoftext|>`` (50256).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> bos_token_id(AssocTransformer(presets.rpe(d_model=16))) is None
        True
    """
    if model_kind(model) == "assoc":
        return None
    tok = getattr(model, "tokenizer", None)
    if not getattr(model.cfg, "default_prepend_bos", False) or tok is None:
        return None
    bos = getattr(tok, "bos_token_id", None)
    return int(bos) if bos is not None and bos < model.cfg.d_vocab else None


def _special_ids(model: Any) -> set[int]:
    tok = getattr(model, "tokenizer", None)
    if tok is None or model_kind(model) == "assoc":
        return set()
    ids = {getattr(tok, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {int(i) for i in ids if i is not None}


def _device(model: Any) -> torch.device:
    return next(iter(model.parameters())).device


def random_block_tokens(
    model: Any,
    block_len: int,
    n_repeats: int = 2,
    n_samples: int = 10,
    *,
    seed: int = 0,
    prepend_bos: bool | None = None,
    token_pool: Int[Tensor, " pool"] | None = None,
) -> tuple[Int[Tensor, "batch pos"], int]:
    """Random blocks of ``block_len`` distinct tokens, each repeated ``n_repeats`` times.

    Args:
        model: The model (for ``d_vocab``, BOS and device).
        block_len: Tokens per block (distinct within a block, so every repeat is unambiguous).
        n_repeats: Copies of the block.
        n_samples: Number of sequences.
        seed: Seed of the private generator (same seed, same tokens).
        prepend_bos: Put the model's BOS first; default: when TransformerLens would
            (:func:`bos_token_id`).
        token_pool: Ids to draw from; default every id except the tokenizer's special tokens.

    Returns:
        ``(tokens [n_samples, offset + n_repeats * block_len], offset)``, ``offset`` 1 with a BOS
        and 0 without.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> tokens, offset = random_block_tokens(AssocTransformer(presets.rpe(d_model=16)), 5)
        >>> tokens.shape, offset, bool((tokens[:, :5] == tokens[:, 5:]).all())
        (torch.Size([10, 10]), 0, True)
    """
    if block_len < 1 or n_repeats < 1 or n_samples < 1:
        raise ValueError(
            f"block_len={block_len}, n_repeats={n_repeats}, n_samples={n_samples}; expected >= 1"
        )
    d_vocab = model.cfg.d_vocab
    if token_pool is None:
        special = _special_ids(model)
        token_pool = torch.tensor([i for i in range(d_vocab) if i not in special])
    token_pool = torch.as_tensor(token_pool, dtype=torch.long).cpu()
    if len(token_pool) < block_len:
        raise ValueError(
            f"block_len {block_len} > {len(token_pool)} tokens in the pool; blocks hold distinct "
            "tokens"
        )
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(n_samples, len(token_pool), generator=gen).argsort(dim=-1)[:, :block_len]
    block = token_pool[order]
    tokens = block.repeat(1, n_repeats)
    bos = bos_token_id(model)
    use_bos = (bos is not None) if prepend_bos is None else prepend_bos
    if use_bos:
        if bos is None:
            raise ValueError("prepend_bos=True but the model has no BOS token")
        tokens = torch.cat([torch.full((n_samples, 1), bos), tokens], dim=1)
    return tokens.to(_device(model)), int(use_bos)


# ------------------------------------------------------------------------------------------------
# Patterns
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_patterns(
    model: Any, tokens: Int[Tensor, "batch pos"], layers: Iterable[int] | None = None
) -> Float[Tensor, "batch n_layers n_heads query key"]:
    """Every head's attention pattern, read from ``blocks.{l}.attn.hook_pattern``.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16))
        >>> attention_patterns(model, torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 2, 1, 3, 3])
    """
    tokens = _check_tokens(model, tokens)
    layer_list = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    for layer in layer_list:
        if not 0 <= layer < model.cfg.n_layers:
            raise ValueError(f"layer {layer} is outside [0, n_layers={model.cfg.n_layers})")
    names = {PATTERN_HOOK.format(layer=layer) for layer in layer_list}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return torch.stack(
        [cache[PATTERN_HOOK.format(layer=layer)].float() for layer in layer_list], dim=1
    )


def _check_tokens(model: Any, tokens: Any) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point:
        raise ValueError(f"expected an integer token tensor, got {type(tokens).__name__}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise ValueError(f"token tensor has shape {tuple(tokens.shape)}; expected [batch, pos]")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab):
        raise ValueError(f"token ids must lie in [0, d_vocab={model.cfg.d_vocab})")
    return tokens.to(_device(model))


def _patterns(model: Any, tokens: Tensor | None, patterns: Tensor | None) -> Tensor:
    if patterns is not None:
        if patterns.ndim != 5:
            raise ValueError(
                f"patterns has shape {tuple(patterns.shape)}; expected "
                "[batch, n_layers, n_heads, query, key]"
            )
        return patterns.float()
    if tokens is None:
        raise ValueError("pass tokens or precomputed patterns")
    return attention_patterns(model, tokens)


def previous_token_scores(
    model: Any,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    form: Literal["mean", "argmax"] = "mean",
    per_position: bool = False,
    patterns: Tensor | None = None,
) -> Tensor:
    """Previous-token score of every head.

    Definition: ``mean`` form, the mean over sequences and query positions ``t >= 1`` of
    ``A[t, t-1]``; ``argmax`` form, the fraction of ``(sequence, t >= 1)`` with
    ``argmax_s A[t, s] = t - 1``. With ``per_position=True`` the mean is over sequences only and
    the result is ``[n_layers, n_heads, pos]`` with ``NaN`` at ``t = 0`` (the length-
    generalisation curve).

    Args:
        model: Any TransformerLens model.
        tokens: ``[batch, pos]``; default 10 random sequences of 64 tokens (seed 0).
        form: ``"mean"`` or ``"argmax"``.
        per_position: Keep the query-position axis.
        patterns: Precomputed ``[batch, n_layers, n_heads, q, k]`` patterns (skips the run).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> previous_token_scores(AssocTransformer(presets.rpe(d_model=16))).shape
        torch.Size([2, 1])
    """
    if tokens is None and patterns is None:
        tokens = _random_tokens(model, 10, 64, seed=0)
    A = _patterns(model, tokens, patterns)
    n = A.shape[-1]
    if n < 2:
        raise ValueError("previous-token scores need at least 2 positions")
    t = torch.arange(1, n, device=A.device)
    if form == "mean":
        per = A[..., t, t - 1]  # [b, L, H, n-1]
    elif form == "argmax":
        per = (A[..., 1:, :].argmax(-1) == (t - 1)).float()
    else:
        raise ValueError(f"form={form!r}; expected 'mean' or 'argmax'")
    if per_position:
        nan = torch.full(per.shape[1:-1] + (1,), float("nan"), device=A.device)
        return torch.cat([nan, per.mean(0)], dim=-1)
    return per.mean(dim=(0, -1))


def _random_tokens(model: Any, batch: int, length: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (batch, length), generator=gen).to(_device(model))


def induction_stripe(
    patterns: Float[Tensor, "batch n_layers n_heads query key"], repeat_len: int, offset: int = 0
) -> Float[Tensor, "n_layers n_heads"]:
    """Stripe score from patterns of ``offset`` leading tokens followed by a block of
    ``repeat_len`` tokens repeated twice: mean over sequences and over the queries ``t`` of the
    second block of ``A[t, t - repeat_len + 1]``.

    Example:
        >>> A = torch.zeros(1, 1, 1, 4, 4)
        >>> A[..., 2, 1] = A[..., 3, 2] = 1.0
        >>> induction_stripe(A, repeat_len=2).item()
        1.0
    """
    n = patterns.shape[-1]
    if n < offset + 2 * repeat_len:
        raise ValueError(
            f"patterns cover {n} positions; expected >= offset + 2 * repeat_len = "
            f"{offset + 2 * repeat_len}"
        )
    t = torch.arange(offset + repeat_len, offset + 2 * repeat_len, device=patterns.device)
    return patterns[..., t, t - repeat_len + 1].mean(dim=(0, -1))


def induction_scores(
    model: Any,
    *,
    repeat_len: int = 50,
    n_samples: int = 10,
    seed: int = 0,
    prepend_bos: bool | None = None,
) -> Float[Tensor, "n_layers n_heads"]:
    """Induction (stripe) score of every head, TransformerLens Main_Demo / ARENA convention.

    Definition: ``n_samples`` sequences of ``repeat_len`` distinct random tokens repeated twice
    (after a BOS when the model prepends one, see :func:`bos_token_id`); the score is the mean
    over sequences and over the ``repeat_len`` queries ``t`` of the second block of
    ``A[t, t - repeat_len + 1]``, the position right after the earlier copy of the current
    token. Threshold for an induction head: about 0.4.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> induction_scores(AssocTransformer(presets.rpe(d_model=16)), repeat_len=10).shape
        torch.Size([2, 1])
    """
    tokens, offset = random_block_tokens(
        model, repeat_len, 2, n_samples, seed=seed, prepend_bos=prepend_bos
    )
    return induction_stripe(attention_patterns(model, tokens), repeat_len, offset)


def _earlier_copies(tokens: Tensor) -> Tensor:
    """``[batch, q, k]`` True where ``k < q`` and ``tokens[k] == tokens[q]``."""
    same = tokens[:, :, None] == tokens[:, None, :]
    n = tokens.shape[1]
    return same & torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)


def _masked_row_mean(A: Tensor, mask: Tensor) -> Tensor:
    """Mean over queries having any mask entry of ``sum_k A[q, k] mask[q, k]``."""
    mask = mask[:, None, None].to(A.dtype)  # [b, 1, 1, q, k]
    per_query = (A * mask).sum(-1)  # [b, L, H, q]
    has = (mask.sum(-1) > 0).to(A.dtype)
    denom = has.sum(dim=(0, -1)).clamp_min(1)
    return (per_query * has).sum(dim=(0, -1)) / denom


def duplicate_token_scores(
    model: Any,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    patterns: Tensor | None = None,
) -> Float[Tensor, "n_layers n_heads"]:
    """Duplicate-token score: attention to earlier copies of the current token.

    Definition: for each query ``t`` whose token occurred before, ``sum_{s < t, z_s = z_t}
    A[t, s]``; averaged over all such queries of all sequences. Default tokens: 10 random
    blocks of 25 distinct tokens repeated twice (seed 0).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> duplicate_token_scores(AssocTransformer(presets.rpe(d_model=16))).shape
        torch.Size([2, 1])
    """
    if tokens is None:
        tokens, _ = random_block_tokens(model, 25, 2, 10, seed=0)
    tokens = _check_tokens(model, tokens)
    A = _patterns(model, tokens, patterns)
    return _masked_row_mean(A, _earlier_copies(tokens))


def prefix_matching_scores(
    model: Any,
    *,
    block_len: int = 25,
    n_repeats: int = 4,
    n_samples: int = 10,
    seed: int = 0,
    token_pool: Int[Tensor, " pool"] | None = None,
    exclude_fraction: float = 0.1,
    prepend_bos: bool | None = None,
) -> Float[Tensor, "n_layers n_heads"]:
    """Prefix-matching score (Olsson et al. 2022).

    Definition: ``n_samples`` sequences of ``block_len`` distinct random tokens repeated
    ``n_repeats`` times (after BOS when the model prepends one). For every query ``t`` in repeats
    2..n, the attention ``sum_s A[t, s + 1]`` over the earlier copies ``s`` of its token; averaged
    over those queries and sequences.

    The most and least common tokens are excluded: with ``token_pool`` unset, the pool is every
    non-special id, minus the first and last ``exclude_fraction / 2`` of the id range when the
    vocabulary is a BPE one (``d_vocab > 1000``; BPE ids follow merge order, a frequency proxy).
    Pass ``token_pool`` to choose the tokens from real counts.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> prefix_matching_scores(AssocTransformer(presets.rpe(d_model=16)), block_len=8).shape
        torch.Size([2, 1])
    """
    if n_repeats < 2:
        raise ValueError(f"n_repeats={n_repeats}; expected >= 2")
    if token_pool is None:
        special = _special_ids(model)
        ids = [i for i in range(model.cfg.d_vocab) if i not in special]
        if model.cfg.d_vocab > 1000 and exclude_fraction > 0:
            cut = int(len(ids) * exclude_fraction / 2)
            ids = ids[cut : len(ids) - cut]
        token_pool = torch.tensor(ids)
    tokens, offset = random_block_tokens(
        model,
        block_len,
        n_repeats,
        n_samples,
        seed=seed,
        prepend_bos=prepend_bos,
        token_pool=token_pool,
    )
    A = attention_patterns(model, tokens)
    copies = _earlier_copies(tokens)
    # target: key s+1 for every earlier copy s of the query token
    target = torch.zeros_like(copies)
    target[:, :, 1:] = copies[:, :, :-1]
    target[:, : offset + block_len] = False  # queries of the first block have no copies
    return _masked_row_mean(A, target)


# ------------------------------------------------------------------------------------------------
# detect_head-style pattern matching (where TransformerLens's head_detector is correct)
# ------------------------------------------------------------------------------------------------


def detection_pattern(
    tokens: Int[Tensor, " pos"],
    kind: Literal["previous_token_head", "duplicate_token_head", "induction_head"],
) -> Float[Tensor, "pos pos"]:
    """The 0/1 target pattern TransformerLens's ``head_detector`` uses for ``kind``.

    ``previous_token_head``: ``D[t, t-1] = 1``; ``duplicate_token_head``: ``D[t, s] = 1`` for
    ``s < t`` with ``z_s = z_t``; ``induction_head``: ``D[t, s+1] = 1`` for those ``s`` (and
    ``s + 1 <= t``).

    Example:
        >>> detection_pattern(torch.tensor([5, 6, 5]), "duplicate_token_head")[2]
        tensor([1., 0., 0.])
    """
    tokens = torch.as_tensor(tokens).flatten().cpu()
    n = len(tokens)
    if kind == "previous_token_head":
        return torch.diag(torch.ones(n - 1), -1)
    dup = _earlier_copies(tokens[None])[0].float()
    if kind == "duplicate_token_head":
        return dup
    if kind == "induction_head":
        out = torch.zeros(n, n)
        out[:, 1:] = dup[:, :-1]
        return out.tril()
    raise ValueError(
        f"kind={kind!r}; expected 'previous_token_head', 'duplicate_token_head' or 'induction_head'"
    )


def pattern_match_scores(
    model: Any,
    tokens: Int[Tensor, "1 pos"],
    target: Float[Tensor, "pos pos"] | str,
    *,
    patterns: Tensor | None = None,
) -> Float[Tensor, "n_layers n_heads"]:
    """Fraction of each head's attention on a target pattern: ``sum(A * D) / sum(A)``.

    This is ``head_detector.detect_head``'s ``"mul"`` measure for one sequence, on tokens (no
    tokenizer); ``target`` is a 0/1 matrix or a :func:`detection_pattern` kind. Note
    ``sum(A) = pos``, so for ``"previous_token_head"`` this is ``(pos - 1) / pos`` times the mean
    form of :func:`previous_token_scores`.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16))
        >>> pattern_match_scores(model, torch.tensor([[1, 2, 1, 2]]), "induction_head").shape
        torch.Size([2, 1])
    """
    tokens = _check_tokens(model, tokens)
    if tokens.shape[0] != 1:
        raise ValueError(f"pattern_match_scores takes one sequence, got batch {tokens.shape[0]}")
    D = detection_pattern(tokens[0], target) if isinstance(target, str) else target
    A = _patterns(model, tokens, patterns)[0]  # [L, H, q, k]
    D = D.to(A.device, A.dtype)
    return (A * D).sum(dim=(-1, -2)) / A.sum(dim=(-1, -2))


# ------------------------------------------------------------------------------------------------
# Weight-based scores
# ------------------------------------------------------------------------------------------------


def _source_tokens(d_vocab: int, n_tokens: int | None, seed: int, device: Any) -> Tensor:
    if n_tokens is None or n_tokens >= d_vocab:
        return torch.arange(d_vocab, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(d_vocab, generator=gen)[:n_tokens].sort().values.to(device)


def _default_n_tokens(d_vocab: int) -> int | None:
    return None if d_vocab <= 4096 else 1000


@torch.no_grad()
def _ov_logits(w: HeadWeights, layer: int, head: int, src: Tensor) -> Tensor:
    """``W_E[src] W_V W_O W_U``: ``[len(src), d_vocab]``."""
    return (w.W_E[src] @ w.W_V[layer, head] @ w.W_O[layer, head]) @ w.W_U


@torch.no_grad()
def copying_scores(
    model: Any,
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
        model: Any TransformerLens model.
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
    out = torch.zeros(w.n_layers, w.n_heads)
    if form == "eigen":
        from tlassoc._tl import FactoredMatrix

        A = w.W_E @ w.W_V  # [L, H, V, d_head] by broadcasting
        B = w.W_O @ w.W_U
        eig = FactoredMatrix(A, B).eigenvalues  # [L, H, d_head]
        return (eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-12)).cpu().float()
    if form != "relu_ratio":
        raise ValueError(f"form={form!r}; expected 'relu_ratio' or 'eigen'")
    n = _default_n_tokens(w.d_vocab) if n_tokens == -1 else n_tokens
    src = _source_tokens(w.d_vocab, n, seed, w.W_E.device)
    rows = torch.arange(len(src), device=src.device)
    for layer in range(w.n_layers):
        for head in range(w.n_heads):
            logits = _ov_logits(w, layer, head, src).float()
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
    model: Any, k: int = 1, *, n_tokens: int | None = -1, seed: int = 0
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
    n = _default_n_tokens(w.d_vocab) if n_tokens == -1 else n_tokens
    src = _source_tokens(w.d_vocab, n, seed, w.W_E.device)
    out = torch.zeros(w.n_layers, w.n_heads)
    for layer in range(w.n_layers):
        for head in range(w.n_heads):
            out[layer, head] = _topk_hits(_ov_logits(w, layer, head, src), src, k).mean().cpu()
    return out


@torch.no_grad()
def full_ov_topk_combined(
    model: Any,
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
    n = _default_n_tokens(w.d_vocab) if n_tokens == -1 else n_tokens
    src = _source_tokens(w.d_vocab, n, seed, w.W_E.device)
    heads = list(heads)
    if not heads:
        raise ValueError("heads is empty; expected at least one (layer, head)")
    total = sum(_ov_logits(w, layer, head, src) for layer, head in heads)
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
    norm_a = (
        torch.einsum("art,ats->ars", GA, A2 @ A2.transpose(-1, -2))
        .diagonal(dim1=-2, dim2=-1)
        .sum(-1)
        .clamp_min(0)
        .sqrt()
    )
    norm_b = (
        torch.einsum("brt,bts->brs", B1.transpose(-1, -2) @ B1, HB)
        .diagonal(dim1=-2, dim2=-1)
        .sum(-1)
        .clamp_min(0)
        .sqrt()
    )
    return (num / (norm_a[:, None] * norm_b[None, :]).clamp_min(1e-30)).float()


@torch.no_grad()
def composition_scores(
    model: Any, kind: Literal["Q", "K", "V"] = "K"
) -> Float[Tensor, "n_layers n_heads n_layers n_heads"]:
    """Composition scores (Elhage et al. 2021) between every earlier and later head.

    Definition: ``||W_A W_B||_F / (||W_A||_F ||W_B||_F)`` with ``W_A = W_V^A W_O^A`` the source
    head's OV circuit and ``W_B`` the destination head's ``W_Q W_K^T`` (Q-composition),
    ``(W_Q W_K^T)^T`` (K-composition) or ``W_V W_O`` (V-composition), in TransformerLens's
    row-vector convention (same as ``HookedTransformer.all_composition_scores``). Entry
    ``[l1, h1, l2, h2]`` is ``NaN`` unless ``l1 < l2``. Compare with
    :func:`composition_baseline`.

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
    model: Any, kind: Literal["Q", "K", "V"] = "K", n_samples: int = 200, seed: int = 0
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
    i = torch.arange(n_samples)
    vals = torch.stack(
        [_composition(A1[j : j + 1], A2[j : j + 1], B1[j : j + 1], B2[j : j + 1])[0, 0] for j in i]
    )
    return float(vals.mean()), float(vals.std())


def composition_frame(
    model: Any, kinds: Iterable[str] = ("Q", "K", "V"), n_samples: int = 200, seed: int = 0
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
        for l1 in range(L):
            for h1 in range(H):
                for l2 in range(l1 + 1, L):
                    for h2 in range(H):
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
    model: Any,
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
    for name, layer in (("src_layer", src_layer), ("dst_layer", dst_layer)):
        if not 0 <= layer < w.n_layers:
            raise ValueError(f"{name} {layer} is outside [0, n_layers={w.n_layers})")
    if src_layer >= dst_layer:
        raise ValueError(f"src_layer {src_layer} must be < dst_layer {dst_layer}")
    n = _default_n_tokens(w.d_vocab) if n_tokens == -1 else n_tokens
    tok = _source_tokens(w.d_vocab, n, seed, w.W_E.device)
    E = w.W_E[tok]
    out = torch.zeros(w.n_heads, w.n_heads)
    diag = torch.arange(len(tok), device=E.device)
    for hs in range(w.n_heads):
        key_in = E @ w.W_V[src_layer, hs] @ w.W_O[src_layer, hs]  # [n, d_model]
        for hd in range(w.n_heads):
            q = E @ w.W_Q[dst_layer, hd]
            k = key_in @ w.W_K[dst_layer, hd]
            M = q @ k.T
            out[hs, hd] = (M.argmax(-1) == diag).float().mean().cpu()
    return out


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------

SCORE_FUNCTIONS: dict[str, Callable[[Any], Tensor]] = {
    "previous_token": lambda m: previous_token_scores(m),
    "induction": lambda m: induction_scores(m, repeat_len=min(50, _pool_size(m) // 1)),
    "prefix_matching": lambda m: prefix_matching_scores(m, block_len=min(25, _pool_size(m))),
    "duplicate_token": lambda m: duplicate_token_scores(m),
    "copying": lambda m: copying_scores(m),
    "copying_eigen": lambda m: copying_scores(m, form="eigen"),
    "full_ov_top1": lambda m: full_ov_topk(m, 1),
    "full_ov_top5": lambda m: full_ov_topk(m, 5),
}


def _pool_size(model: Any) -> int:
    return model.cfg.d_vocab - len(_special_ids(model))


def scores_frame(scores: Mapping[str, Tensor], model_name: str | None = None) -> pd.DataFrame:
    """Tidy table of ``[n_layers, n_heads]`` scores: columns ``layer, head, head_name`` (``"L.H"``),
    one column per score, and ``model`` when ``model_name`` is given.

    Example:
        >>> scores_frame({"induction": torch.tensor([[0.1], [0.9]])})["head_name"].tolist()
        ['0.0', '1.0']
    """
    if not scores:
        raise ValueError("scores is empty")
    shapes = {tuple(v.shape) for v in scores.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"scores must all be [n_layers, n_heads]; got shapes {sorted(shapes)}")
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
    model: Any, which: Iterable[str] | None = None, model_name: str | None = None
) -> pd.DataFrame:
    """Several scores of every head in one tidy DataFrame (see :func:`scores_frame`).

    Args:
        model: Any TransformerLens model.
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
    names = list(SCORE_FUNCTIONS) if which is None else list(which)
    unknown = [n for n in names if n not in SCORE_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown scores {unknown}; expected names from {list(SCORE_FUNCTIONS)}")
    return scores_frame({n: SCORE_FUNCTIONS[n](model) for n in names}, model_name)
