"""Head scores read from attention patterns (``blocks.{l}.attn.hook_pattern``).

``A`` is one head's attention pattern of one sequence: rows are queries ``t``, columns keys
``s``. Every score is a ``[n_layers, n_heads]`` tensor (per-position forms add a position axis);
definitions in docs/method.md, Head metrics.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=128))
    >>> induction_scores(model, repeat_len=20, n_samples=2).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc.heads.adapter import (
    Model,
    bos_token_id,
    check_layer,
    check_model,
    check_tokens,
    model_device,
    special_token_ids,
)
from tlassoc.metrics import previous_token_accuracy

__all__ = [
    "PATTERN_HOOK",
    "attention_patterns",
    "detection_pattern",
    "duplicate_token_scores",
    "induction_scores",
    "induction_stripe",
    "pattern_match_scores",
    "prefix_matching_scores",
    "previous_token_scores",
    "random_block_tokens",
    "token_pool_size",
]

#: The hook every pattern is read from.
PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"


def token_pool_size(model: Model) -> int:
    """Number of token ids random prompts may use: ``d_vocab`` minus the special tokens."""
    return model.cfg.d_vocab - len(special_token_ids(model))


def random_block_tokens(
    model: Model,
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
            (:func:`~tlassoc.heads.adapter.bos_token_id`).
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
    check_model(model)
    if block_len < 1 or n_repeats < 1 or n_samples < 1:
        raise ValueError(
            f"block_len={block_len}, n_repeats={n_repeats}, n_samples={n_samples}; expected >= 1"
        )
    if token_pool is None:
        special = special_token_ids(model)
        token_pool = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])
    token_pool = torch.as_tensor(token_pool, dtype=torch.long).cpu()
    if len(token_pool) < block_len:
        raise ValueError(
            f"block_len={block_len}; expected <= {len(token_pool)}, the tokens in the pool "
            "(blocks hold distinct tokens)"
        )
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(n_samples, len(token_pool), generator=gen).argsort(dim=-1)[:, :block_len]
    tokens = token_pool[order].repeat(1, n_repeats)
    bos = bos_token_id(model)
    use_bos = (bos is not None) if prepend_bos is None else prepend_bos
    if use_bos:
        if bos is None:
            raise ValueError("prepend_bos=True; expected a model with a BOS token")
        tokens = torch.cat([torch.full((n_samples, 1), bos), tokens], dim=1)
    return tokens.to(model_device(model)), int(use_bos)


@torch.no_grad()
def attention_patterns(
    model: Model, tokens: Int[Tensor, "batch pos"], layers: Iterable[int] | None = None
) -> Float[Tensor, "batch n_layers n_heads query key"]:
    """Every head's attention pattern, read from ``blocks.{l}.attn.hook_pattern``.

    The one place tlassoc reads patterns from a cache (head scores, figures, ablations).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16))
        >>> attention_patterns(model, torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 2, 1, 3, 3])
    """
    check_model(model)
    tokens = check_tokens(tokens, model.cfg.d_vocab, model_device(model))
    n_layers = model.cfg.n_layers
    layer_list = list(range(n_layers)) if layers is None else list(layers)
    for layer in layer_list:
        check_layer(layer, n_layers)
    names = {PATTERN_HOOK.format(layer=layer) for layer in layer_list}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return torch.stack(
        [cache[PATTERN_HOOK.format(layer=layer)].float() for layer in layer_list], dim=1
    )


def _patterns(model: Model | None, tokens: Tensor | None, patterns: Tensor | None) -> Tensor:
    if patterns is not None:
        if patterns.ndim != 5:
            raise ValueError(
                f"patterns has shape {tuple(patterns.shape)}; expected "
                "[batch, n_layers, n_heads, query, key]"
            )
        return patterns.float()
    if tokens is None:
        raise ValueError("tokens=None and patterns=None; expected tokens or precomputed patterns")
    return attention_patterns(model, tokens)


def _random_tokens(model: Model, batch: int, length: int, seed: int) -> Tensor:
    check_model(model)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (batch, length), generator=gen)
    return tokens.to(model_device(model))


def previous_token_scores(
    model: Model | None,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    form: Literal["mean", "argmax"] = "mean",
    per_position: bool = False,
    patterns: Tensor | None = None,
) -> Tensor:
    """Previous-token score of every head.

    Definition: ``mean`` form, the mean over sequences and query positions ``t >= 1`` of
    ``A[t, t-1]``; ``argmax`` form, the fraction of ``(sequence, t >= 1)`` with
    ``argmax_s A[t, s] = t - 1`` (:func:`tlassoc.metrics.previous_token_accuracy`). With
    ``per_position=True`` the mean is over sequences only and the result is
    ``[n_layers, n_heads, pos]`` with ``NaN`` at ``t = 0`` (the length-generalisation curve).

    Args:
        model: Any of the three model kinds (``None`` with ``patterns``).
        tokens: ``[batch, pos]``; default 10 random sequences of 64 tokens (seed 0).
        form: ``"mean"`` or ``"argmax"``.
        per_position: Keep the query-position axis.
        patterns: Precomputed ``[batch, n_layers, n_heads, q, k]`` patterns (skips the run).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> previous_token_scores(AssocTransformer(presets.rpe(d_model=16))).shape
        torch.Size([2, 1])
    """
    if form not in ("mean", "argmax"):
        raise ValueError(f"form={form!r}; expected 'mean' or 'argmax'")
    if tokens is None and patterns is None:
        tokens = _random_tokens(model, 10, 64, seed=0)
    A = _patterns(model, tokens, patterns)
    n = A.shape[-1]
    if n < 2:
        raise ValueError(f"patterns cover {n} position; expected at least 2")
    if form == "argmax":
        L, H = A.shape[1:3]
        per = torch.stack([previous_token_accuracy(A[:, i // H, i % H]) for i in range(L * H)])
        per = per.reshape(L, H, n)  # NaN at t = 0
        return per if per_position else per[..., 1:].mean(-1)
    t = torch.arange(1, n, device=A.device)
    per = A[..., t, t - 1]  # [b, L, H, n-1]
    if per_position:
        nan = torch.full(per.shape[1:-1] + (1,), float("nan"), device=A.device)
        return torch.cat([nan, per.mean(0)], dim=-1)
    return per.mean(dim=(0, -1))


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
    model: Model,
    *,
    repeat_len: int = 50,
    n_samples: int = 10,
    seed: int = 0,
    prepend_bos: bool | None = None,
) -> Float[Tensor, "n_layers n_heads"]:
    """Induction (stripe) score of every head, TransformerLens Main_Demo / ARENA convention.

    Definition: ``n_samples`` sequences of ``repeat_len`` distinct random tokens repeated twice
    (after a BOS when the model prepends one); the score is the mean over sequences and over
    the ``repeat_len`` queries ``t`` of the second block of ``A[t, t - repeat_len + 1]``, the
    position right after the earlier copy of the current token. Threshold for an induction
    head: about 0.4.

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
    model: Model,
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
    check_model(model)
    tokens = check_tokens(tokens, model.cfg.d_vocab, model_device(model))
    A = _patterns(model, tokens, patterns)
    return _masked_row_mean(A, _earlier_copies(tokens))


def _prefix_pool(model: Model, exclude_fraction: float) -> Tensor:
    """Every non-special id, minus the first and last ``exclude_fraction / 2`` of the id range
    for a BPE vocabulary (``d_vocab > 1000``: ids follow merge order, a frequency proxy)."""
    special = special_token_ids(model)
    ids = [i for i in range(model.cfg.d_vocab) if i not in special]
    if model.cfg.d_vocab > 1000 and exclude_fraction > 0:
        cut = int(len(ids) * exclude_fraction / 2)
        ids = ids[cut : len(ids) - cut]
    return torch.tensor(ids)


def prefix_matching_scores(
    model: Model,
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
    check_model(model)
    if n_repeats < 2:
        raise ValueError(f"n_repeats={n_repeats}; expected >= 2")
    tokens, offset = random_block_tokens(
        model,
        block_len,
        n_repeats,
        n_samples,
        seed=seed,
        prepend_bos=prepend_bos,
        token_pool=_prefix_pool(model, exclude_fraction) if token_pool is None else token_pool,
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
    model: Model,
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
    check_model(model)
    tokens = check_tokens(tokens, model.cfg.d_vocab, model_device(model))
    if tokens.shape[0] != 1:
        raise ValueError(f"tokens has batch {tokens.shape[0]}; expected one sequence")
    D = detection_pattern(tokens[0], target) if isinstance(target, str) else target
    A = _patterns(model, tokens, patterns)[0]  # [L, H, q, k]
    D = D.to(A.device, A.dtype)
    return (A * D).sum(dim=(-1, -2)) / A.sum(dim=(-1, -2))
