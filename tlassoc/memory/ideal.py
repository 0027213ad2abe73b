"""Ideal associative memories: set an :class:`~tlassoc.model.AssocTransformer`'s weights by hand.

No training. The embeddings stay the model's own random ones (``W_E``, ``W_pos``/``W_rel``,
``W_U``, the frozen ``W_V``/``W_O`` of the first layer and ``W_V`` of the second); only the
matrices the papers train are written, as sums of outer products of those embeddings
(Bietti et al. 2023; Wang & Sato 2025; see docs/method.md, Associative memories).

Conventions. The memories are built in the papers' column convention (``W u ≈ v``), the notation
this module prints, and written transposed into the model, whose row convention is stated in
:mod:`tlassoc.heads.adapter`: with an identity query a head scores ``x_t . (x_s W_K)``, so the
papers' bilinear ``x_t^T W x_s`` is ``W_K = W^T``, and likewise ``W_O = W^T``. Every stored
pair ``v u^T`` is divided by ``|v|^2 |u|^2`` so that its recall ``v^T W u`` is exactly its weight
(the cross-talk of the other pairs remains).

Two-layer model (``build_ideal``), papers' notation, tlassoc layer index in brackets:

* ``W_K^1`` [layer 0], previous-token head. ``standard`` positions: ``Σ_{t<T} p_t p_{t-1}^T``
  over the positions ``t < T = train_len``; ``relative``: ``Σ_k w_E(k) r_1^T`` (every token
  attends to distance 1).
* ``W_K^2`` [layer 1], induction head: ``Σ_k w_E(k) (W_O^1 W_V^1 w_E(k))^T``.
* ``W_O^2`` [layer 1], copy: ``α Σ_k w_U(k) (W_V^2 w_E(k))^T``.
* ``W_F`` (linear feed-forward after layer 1, ``W_in = I``): ``β Σ_ij β_ij w_U(j) w_E(i)^T``
  with ``β_ij = π_b(j|i)`` from a :class:`~tlassoc.data.BigramModel` (or any given matrix).

``prev_scale`` and ``induction_scale`` are the attention inverse temperatures: a stored match
adds that much to the pre-softmax score. ``alpha`` and ``beta`` are the logit strengths of the
in-context and global paths (the "stronger" associative-memory transformer of Wang & Sato).

``equalize`` [ours, default True]: a plain sum of outer products recalls each pair only up to
cross-talk, and in this model the cross-talk is coherent: in the relative ``W_K^1`` all pairs share
the output ``r_1`` (``w_E(a)^T Σ_k w_E(k) = 1 + N(0, (V-1)/d)``: at ``d = 128`` about 8 % of the
tokens look *away* from ``t - 1``); the values read by ``W_O^2`` and the input of ``W_F`` also
contain the layer outputs, and the induction scores' noise breaks the uniform split over ``S_a``
that the theory assumes. With ``equalize=True`` the input sides use dual bases
(:func:`dual_inputs`): the relative query reads every token with weight exactly 1; ``W_K^2`` reads
``w_E`` on the query side and ``W_O^1 W_V^1 w_E`` on the key side, each ignoring the other;
``W_O^2`` ignores the copied previous-token part of the value; ``W_F`` ignores the attention
outputs. Exact while the vectors fit (``2 d_vocab <= d_model``, hence ``d = 256``); absolute
positions stay as cross-talk. ``equalize=False`` gives the plain sums of the table (use it to
compare with gradient-trained memories, which are sums of outer products).

Three layers, no positions (``build_ideal_nope``) [ours]: see its docstring.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = build_ideal(AssocTransformer(presets.rpe(d_model=128, n_ctx=64)))
    >>> model.blocks[0].attn.W_K.shape
    torch.Size([1, 128, 128])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tlassoc.heads.adapter import HeadWeights, check_model, head_weights
from tlassoc.model import AssocTransformer

__all__ = [
    "build_ideal",
    "build_ideal_nope",
    "dual_basis",
    "dual_inputs",
    "ideal_memories",
    "ideal_model",
    "ideal_nope_model",
    "memory_alignment",
    "outer_memory",
]


def dual_basis(vectors: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    """Rows ``ũ_i`` in the span of ``vectors`` with ``ũ_i . u_j = δ_ij`` (needs ``n <= d`` and
    linearly independent rows).

    Example:
        >>> u = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(dual_basis(u) @ u.T, torch.eye(5), atol=1e-4)
        True
    """
    n, d = vectors.shape
    if n > d:
        raise ValueError(f"a dual basis of {n} vectors needs n <= d, got d = {d}")
    v64 = vectors.to(torch.float64)
    gram = v64 @ v64.T
    return torch.linalg.solve(gram, v64).to(vectors.dtype)


def dual_inputs(
    inputs: Float[Tensor, "n d"], ignore: Float[Tensor, "m d"] | None = None
) -> Float[Tensor, "n d"]:
    """Read-out vectors ``ũ_i`` with ``ũ_i . u_j = δ_ij`` and ``ũ_i . w = 0`` for every row
    ``w`` of ``ignore`` (least squares, through the pseudo-inverse, when ``n + m > d``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> u, w = torch.randn(4, 16, generator=g), torch.randn(3, 16, generator=g)
        >>> d = dual_inputs(u, w)
        >>> torch.allclose(d @ u.T, torch.eye(4), atol=1e-4), bool((d @ w.T).abs().max() < 1e-4)
        (True, True)
    """
    n = inputs.shape[0]
    stack = inputs if ignore is None else torch.cat([inputs, ignore.to(inputs)], 0)
    pinv = torch.linalg.pinv(stack.to(torch.float64).T)  # [n + m, d]
    return pinv[:n].to(inputs.dtype)


def outer_memory(
    outputs: Float[Tensor, "n d_out"],
    inputs: Float[Tensor, "n d_in"],
    weights: Float[Tensor, " n"] | float = 1.0,
    normalize: bool = True,
    ignore: Float[Tensor, "m d_in"] | None = None,
) -> Float[Tensor, "d_out d_in"]:
    """The associative memory ``Σ_i w_i v_i u_i^T`` (column convention: ``W u_i ≈ w_i v_i``).

    Args:
        outputs: ``v_i`` as rows.
        inputs: ``u_i`` as rows.
        weights: per-pair strength ``w_i`` (scalar or ``[n]``).
        normalize: divide each pair by ``|v_i|^2 |u_i|^2`` so that ``v_i^T W u_i`` is ``w_i``
            up to cross-talk.
        ignore: when given, the input side uses :func:`dual_inputs` (``W u_i = w_i v_i /
            |v_i|^2`` exactly, and ``W w = 0`` for the ignored vectors ``w``) instead of
            ``u_i / |u_i|^2``.

    Example:
        >>> u = torch.eye(3)
        >>> outer_memory(u[[1, 2]], u[[0, 1]])  # stores 0 -> 1 and 1 -> 2
        tensor([[0., 0., 0.],
                [1., 0., 0.],
                [0., 1., 0.]])
    """
    if outputs.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"{outputs.shape[0]} output vectors but {inputs.shape[0]} input vectors; expected "
            "one output per input"
        )
    w = torch.as_tensor(weights, dtype=outputs.dtype, device=outputs.device)
    w = w.expand(outputs.shape[0]).clone()
    if ignore is not None:
        inputs = dual_inputs(inputs, ignore)
        if normalize:
            w = w / outputs.pow(2).sum(-1).clamp(min=1e-12)
    elif normalize:
        w = w / (outputs.pow(2).sum(-1) * inputs.pow(2).sum(-1)).clamp(min=1e-12)
    return torch.einsum("n,no,ni->oi", w, outputs, inputs)


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------


def _check_model(model: Any, n_layers: int, what: str) -> None:
    check_model(model, assoc_only=what)
    cfg = model.cfg
    if cfg.n_layers != n_layers:
        raise ValueError(f"{what} needs n_layers == {n_layers}, got n_layers {cfg.n_layers}")
    if cfg.n_heads != 1:
        raise ValueError(f"{what} needs one head per layer, got n_heads {cfg.n_heads}")
    if cfg.d_head != cfg.d_model:
        raise ValueError(
            f"{what} needs d_head == d_model (identity query), got d_head {cfg.d_head} and "
            f"d_model {cfg.d_model}"
        )
    if cfg.normalization_type is not None:
        raise ValueError(
            f"{what} needs a model without layer norm, got normalization_type "
            f"{cfg.normalization_type!r}"
        )


def _bigram_matrix(bigram: Any, d_vocab: int) -> Tensor:
    from tlassoc.data import BigramModel

    if isinstance(bigram, BigramModel):
        mat = bigram.conditional
    elif isinstance(bigram, Tensor):
        mat = bigram.detach().float()
    else:
        raise ValueError(
            f"bigram must be a BigramModel or a [d_vocab, d_vocab] tensor, got "
            f"{type(bigram).__name__}"
        )
    if tuple(mat.shape) != (d_vocab, d_vocab):
        raise ValueError(
            f"bigram matrix has shape {tuple(mat.shape)}; expected ({d_vocab}, {d_vocab}) "
            "to match the model's d_vocab"
        )
    return mat


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name}={value!r}; expected a number >= 0")
    return float(value)


# ------------------------------------------------------------------------------------------------
# two-layer model
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def ideal_memories(
    model: AssocTransformer,
    *,
    bigram: Any = None,
    train_len: int | None = None,
    alpha: float = 10.0,
    beta: float = 10.0,
    prev_scale: float = 20.0,
    induction_scale: float = 20.0,
    equalize: bool = True,
    first_token_guard: float = 0.0,
    induction_tokens: Tensor | list[int] | None = None,
) -> dict[str, Tensor]:
    """The ideal weights of a two-layer model, as ``{parameter name: tensor}`` in tlassoc shapes.

    Args:
        model: a two-layer, one-head ``AssocTransformer`` with identity query (e.g.
            ``presets.ape()``/``presets.rpe()``); its embeddings are read, not changed.
        bigram: global bigrams for the feed-forward memory: a ``BigramModel`` (``β_ij =
            π_b(j|i)``) or a ``[d_vocab, d_vocab]`` weight matrix. Needs a linear FFN in
            layer 1 with ``d_mlp >= d_model``. ``None``: the FFN (if any) is set to zero.
        train_len: ``standard`` positions only: positions ``t < train_len`` get the
            previous-token memory (the training length ``T``; default ``n_ctx``).
        alpha: logit strength of the in-context (copy) path.
        beta: logit strength of the bigram path.
        prev_scale: score added by a stored match in the previous-token head.
        induction_scale: score added by a stored match in the induction head.
        equalize: exact read-outs through dual bases (module docs); ``False``: the plain sums
            of outer products of the table.
        first_token_guard: subtract this fraction of the induction score for keys whose own
            token equals the query token (a partial fix of the first-token effect; default 0).
        induction_tokens: store the induction pairs ``W_K^2`` only for these tokens (e.g. the
            triggers, as one-step training does); default all tokens.

    Returns:
        Tensors for ``blocks.0.attn.W_K``, ``blocks.1.attn.W_K``, ``blocks.1.attn.W_O`` and,
        with an FFN, ``blocks.1.mlp.W_in/b_in/W_out/b_out``.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> mem = ideal_memories(AssocTransformer(presets.ape(d_model=32, n_ctx=16)))
        >>> sorted(mem)
        ['blocks.0.attn.W_K', 'blocks.1.attn.W_K', 'blocks.1.attn.W_O']
    """
    _check_model(model, 2, "ideal_memories")
    cfg = model.cfg
    for name, value in (
        ("alpha", alpha),
        ("beta", beta),
        ("prev_scale", prev_scale),
        ("induction_scale", induction_scale),
    ):
        _positive(name, value)
    _check_positions(cfg)
    if cfg.has_ffn(0):
        raise ValueError("the ideal two-layer model has no feed-forward layer in layer 0")
    root_d = math.sqrt(cfg.d_head)
    w = head_weights(model)
    ov0 = w.ov_out(0, 0).float()  # what the previous-token head writes for each token
    keep = _token_mask(induction_tokens, cfg.d_vocab)
    # tlassoc's W_K and W_O are the transposes of the papers' matrices
    out = {
        "blocks.0.attn.W_K": _previous_token_memory(
            w, cfg, train_len, prev_scale * root_d, equalize
        ),
        "blocks.1.attn.W_K": _induction_memory(
            w, ov0, keep, induction_scale * root_d, equalize, first_token_guard
        ),
    }
    # copy (layer 1 W_O): value W_V^2 w_E(k) -> w_U(k)
    W_V1 = w.W_V[1, 0].float()
    ignore = ov0 @ W_V1 if equalize else None
    paper = outer_memory(w.W_U.float().T, w.W_E.float() @ W_V1, alpha, ignore=ignore)
    out["blocks.1.attn.W_O"] = paper.T[None].contiguous()
    out.update(_feed_forward_memory(w, cfg, ov0, bigram, beta, equalize))
    return out


def _check_positions(cfg: Any) -> None:
    if cfg.positional_embedding_type == "none":
        raise ValueError(
            "positional_embedding_type='none'; ideal_memories expected 'standard' or "
            "'relative' (two layers); use build_ideal_nope on a three-layer model"
        )
    if cfg.positional_embedding_type == "relative" and (
        cfg.relative_form != "vector" or not cfg.has_relative(0)
    ):
        raise ValueError(
            "ideal relative memories need relative vectors in layer 0 (relative_form='vector', "
            f"relative_layers containing 0), got relative_form={cfg.relative_form!r}, "
            f"relative_layers={cfg.relative_layers}"
        )


def _token_mask(tokens: Tensor | list[int] | None, d_vocab: int) -> Tensor:
    if tokens is None:
        return torch.ones(d_vocab, dtype=torch.bool)
    idx = torch.as_tensor(tokens, dtype=torch.long).flatten()
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= d_vocab:
        raise ValueError(f"induction_tokens={idx.tolist()}; expected token ids in [0, {d_vocab})")
    keep = torch.zeros(d_vocab, dtype=torch.bool)
    keep[idx] = True
    return keep


def _previous_token_memory(
    w: HeadWeights, cfg: Any, train_len: int | None, scale: float, equalize: bool
) -> Tensor:
    """Layer 0's ``W_K`` (tlassoc shape ``[1, d, d]``): positions ``p_t -> p_{t-1}`` below
    ``train_len`` (``standard``) or every token to distance 1 (``relative``)."""
    W_E = w.W_E.float()
    if cfg.positional_embedding_type == "standard":
        T = cfg.n_ctx if train_len is None else int(train_len)
        if not 2 <= T <= cfg.n_ctx:
            raise ValueError(
                f"train_len {train_len!r}; expected 2 <= train_len <= n_ctx {cfg.n_ctx}"
            )
        P = w.W_pos.float()
        paper = outer_memory(P[1:T], P[: T - 1], scale)
    else:
        if train_len is not None:
            int(train_len)  # accepted and ignored: relative memories do not depend on it
        if cfg.max_relative_distance < 2:
            raise ValueError(
                f"max_relative_distance {cfg.max_relative_distance} < 2: distance 1 has no vector"
            )
        r1 = w.W_rel.float()[1]
        if equalize:
            if cfg.d_vocab > cfg.d_model:
                raise ValueError(
                    f"equalize=True needs d_vocab <= d_model, got {cfg.d_vocab} > {cfg.d_model}; "
                    "pass equalize=False"
                )
            query = dual_basis(W_E).sum(0)  # w_E(k) . query = 1 for every token
            paper = scale * torch.outer(query, r1) / r1.pow(2).sum()
        else:
            paper = outer_memory(W_E, r1.expand_as(W_E), scale)
    return paper.T[None].contiguous()


def _induction_memory(
    w: HeadWeights, ov0: Tensor, keep: Tensor, scale: float, equalize: bool, guard: float
) -> Tensor:
    """Layer 1's ``W_K``: query ``w_E(k)``, key ``W_O^1 W_V^1 w_E(k)`` (row form ``ov0[k]``)."""
    W_E = w.W_E.float()
    if equalize:
        # exact readouts: query side reads w_E(k) and ignores the layer-0 outputs, key side reads
        # W_O^1 W_V^1 w_E(k) and ignores the token embeddings (absolute positions remain
        # cross-talk)
        q_dual = dual_inputs(W_E, ov0)
        k_dual = dual_inputs(ov0, W_E)
        paper = scale * q_dual[keep].T @ k_dual[keep]
    else:
        paper = outer_memory(W_E[keep], ov0[keep], scale)
    if guard:
        paper = paper - outer_memory(W_E, W_E, guard * scale)
    return paper.T[None].contiguous()


def _feed_forward_memory(
    w: HeadWeights, cfg: Any, ov0: Tensor, bigram: Any, beta: float, equalize: bool
) -> dict[str, Tensor]:
    """Layer 1's linear feed-forward block storing the bigrams ``w_E(i) -> β_ij w_U(j)``."""
    if not cfg.has_ffn(1):
        if bigram is not None:
            raise ValueError(
                "bigram given but the model has no feed-forward layer in layer 1; build it with "
                "ffn_type='linear' (and ffn_layers=(1,))"
            )
        return {}
    if cfg.ffn_type != "linear" or cfg.d_mlp < cfg.d_model:
        raise ValueError(
            f"the ideal feed-forward memory needs a linear FFN with d_mlp >= d_model, got "
            f"ffn_type={cfg.ffn_type!r}, d_mlp={cfg.d_mlp}"
        )
    W_E, W_U = w.W_E.float(), w.W_U.float()
    W_in = torch.zeros(cfg.d_model, cfg.d_mlp)
    W_in[:, : cfg.d_model] = torch.eye(cfg.d_model)
    W_out = torch.zeros(cfg.d_mlp, cfg.d_model)
    if bigram is not None:
        mat = _bigram_matrix(bigram, cfg.d_vocab).to(W_E)
        i, j = torch.nonzero(mat, as_tuple=True)
        if equalize:  # read w_E(i) only, not the attention outputs (ov0 and w_U directions)
            dual = outer_memory(
                torch.eye(cfg.d_vocab), W_E, 1.0, ignore=torch.cat([ov0, W_U.T], 0)
            )  # [vocab, d_model]
            paper = W_U @ (beta * mat.T / W_U.pow(2).sum(0)[:, None]) @ dual
        else:
            paper = outer_memory(W_U.T[j], W_E[i], beta * mat[i, j])
        W_out[: cfg.d_model] = paper.T
    return {
        "blocks.1.mlp.W_in": W_in,
        "blocks.1.mlp.b_in": torch.zeros(cfg.d_mlp),
        "blocks.1.mlp.W_out": W_out,
        "blocks.1.mlp.b_out": torch.zeros(cfg.d_model),
    }


def _load(model: AssocTransformer, tensors: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            p = params[name]
            p.copy_(value.to(device=p.device, dtype=p.dtype))


def build_ideal(model: AssocTransformer, **kwargs: Any) -> AssocTransformer:
    """Write the ideal memories (:func:`ideal_memories`, same arguments) into ``model``, in place.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> from tlassoc.data import BigramModel
        >>> cfg = presets.rpe(d_model=128, n_ctx=64, ffn_type="linear")
        >>> model = build_ideal(AssocTransformer(cfg), bigram=BigramModel.tiny_shakespeare())
    """
    _load(model, ideal_memories(model, **kwargs))
    return model


def ideal_model(
    positional: str = "relative",
    *,
    d_model: int = 256,
    n_ctx: int = 512,
    seed: int = 0,
    ffn: bool | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> AssocTransformer:
    """A fresh two-layer model (``presets.rpe``/``presets.ape``) with the ideal memories.

    Args:
        positional: ``positional_embedding_type``, ``"relative"`` (``presets.rpe``) or
            ``"standard"`` (``presets.ape``).
        d_model: width (default 256, the papers' size; at 128 the cross-talk of the induction
            and copy memories costs a few points of accuracy).
        n_ctx: context (absolute positions exist up to it).
        seed: seed of the random embeddings.
        ffn: add the linear feed-forward memory (default: when ``bigram`` is given).
        device: device.
        **kwargs: passed to :func:`ideal_memories` (``bigram``, ``train_len``, ``alpha``…).

    Example:
        >>> model = ideal_model("standard", d_model=32, n_ctx=32, train_len=16)
        >>> model.cfg.positional_embedding_type
        'standard'
    """
    from tlassoc import presets

    if positional not in ("relative", "standard"):
        raise ValueError(f"positional={positional!r}; expected 'relative' or 'standard'")
    make = presets.rpe if positional == "relative" else presets.ape
    if ffn is None:
        ffn = kwargs.get("bigram") is not None
    extra = {"ffn_type": "linear"} if ffn else {}
    cfg = make(d_model=d_model, n_ctx=n_ctx, seed=seed, device=device, **extra)
    return build_ideal(AssocTransformer(cfg), **kwargs)


# ------------------------------------------------------------------------------------------------
# three layers, no positions [ours]
# ------------------------------------------------------------------------------------------------


def _complement(vectors: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` orthonormal rows orthogonal to the span of ``vectors``'s rows."""
    d = vectors.shape[1]
    q, _ = torch.linalg.qr(vectors.T.to(torch.float64))  # [d, n] orthonormal basis of the span
    raw = torch.randn(d, k, generator=generator, dtype=torch.float64)
    raw = raw - q @ (q.T @ raw)
    basis, _ = torch.linalg.qr(raw)
    return basis.T.to(vectors.dtype)


@torch.no_grad()
def build_ideal_nope(
    model: AssocTransformer,
    *,
    start_token: int = 0,
    recency_scale: float = 4.0e4,
    induction_scale: float = 30.0,
    alpha: float = 10.0,
    seed: int = 0,
) -> AssocTransformer:
    """Induction head in three layers without positional information [ours], in place.

    Position has to come from the causal mask. The prompt starts with ``start_token``, which
    occurs nowhere else (as a BOS token):

    * layer 0 attends uniformly (``W_K = 0``); its ``W_V W_O`` maps every token to a constant
      direction ``c`` and the start token also to a direction ``e`` (both orthogonal to the
      token embeddings). Its output at position ``t`` is exactly ``c + e / (t + 1)``: a signal
      that decays like ``1/t``.
    * layer 1, previous-token head: ``score(t, s) = -λ (e . x_s)(c . x_t) - 2λ [z_s = z_t]``,
      i.e. "the most recent key (largest ``s``, smallest ``1/(s+1)``) that is not the current
      token" — position ``t - 1`` unless ``z_{t-1} = z_t``. ``λ = recency_scale``; the gap
      between ``t - 1`` and ``t - 2`` is ``λ / (t (t - 1))``, so ``λ = 4e4`` keeps it above 10
      up to ``t ≈ 60`` (longer prompts need a larger ``λ``). Token equality uses the dual basis
      of the embeddings (exact while ``d_vocab <= d_model - 2``). Its ``W_V``/``W_O`` stay the
      model's random ones: they write ``W_O^1 W_V^1 w_E(z_{t-1})``.
    * layer 2, induction head and copy: the two-layer model's ``W_K^2`` and ``W_O^2`` one layer
      up (:func:`ideal_memories`), with layer 1 in the role of the previous-token head. Its
      ``W_V`` is the model's random one projected onto the span of the token embeddings, so
      the constant ``c`` and the layer-1 outputs are not copied into the logits.

    Args:
        model: a three-layer, one-head model with ``positional_embedding_type="none"`` and
            identity query (``presets.nope()``), without feed-forward layers.
        start_token: id of the start token.
        recency_scale: ``λ`` of the previous-token head.
        induction_scale: score of a match in the induction head.
        alpha: logit strength of the copy.
        seed: seed of the directions ``c`` and ``e``.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = build_ideal_nope(AssocTransformer(presets.nope(d_model=256, n_ctx=64)))
        >>> block = torch.randperm(64)[:20]
        >>> block = block[block != 0]
        >>> tokens = torch.cat([torch.tensor([0]), block, block])[None]
        >>> n = len(block)
        >>> pred = model(tokens)[0, n + 1 : -1].argmax(-1)
        >>> bool((pred == block[1:]).float().mean() > 0.9)
        True
    """
    _check_model(model, 3, "build_ideal_nope")
    cfg = model.cfg
    if cfg.positional_embedding_type != "none":
        raise ValueError(
            "build_ideal_nope is the construction without positions; got "
            f"positional_embedding_type {cfg.positional_embedding_type!r}"
        )
    if cfg.ffn_layers:
        raise ValueError(
            f"build_ideal_nope needs an attention-only model, got ffn_layers {cfg.ffn_layers}"
        )
    if not 0 <= int(start_token) < cfg.d_vocab:
        raise ValueError(f"start_token {start_token} is outside the vocabulary [0, {cfg.d_vocab})")
    if cfg.d_vocab > cfg.d_model - 2:
        raise ValueError(
            f"build_ideal_nope needs d_vocab <= d_model - 2, got d_vocab {cfg.d_vocab} and "
            f"d_model {cfg.d_model}"
        )
    for name, value in (
        ("recency_scale", recency_scale),
        ("induction_scale", induction_scale),
        ("alpha", alpha),
    ):
        _positive(name, value)
    d, root_d = cfg.d_model, math.sqrt(cfg.d_head)
    w = head_weights(model)
    W_E = w.W_E.float()
    gen = torch.Generator().manual_seed(seed)
    c, e = _complement(W_E, 2, gen)
    dual = dual_basis(W_E)  # [vocab, d]

    # layer 0: uniform attention, OV: w_E(k) -> c + [k == start] e
    W_V0 = torch.zeros(d, d)
    W_V0[:, 0] = dual.sum(0)
    W_V0[:, 1] = dual[start_token]
    W_O0 = torch.zeros(d, d)
    W_O0[0], W_O0[1] = c, e
    # layer 1: previous-token head. score = x_s^T W_K x_t (rows: key)
    same = dual.T @ dual  # w_E(a)^T same w_E(b) = δ_ab
    W_K1 = -recency_scale * torch.outer(e, c) - 2 * recency_scale * same
    tensors = {
        "blocks.0.attn.W_K": torch.zeros(1, d, d),
        "blocks.0.attn.W_V": W_V0[None],
        "blocks.0.attn.W_O": W_O0[None],
        "blocks.1.attn.W_K": (W_K1 * root_d)[None],
    }
    ov1 = w.ov_out(1, 0).float()
    tensors["blocks.2.attn.W_K"] = outer_memory(W_E, ov1, induction_scale * root_d).T[None]
    # layer 2 values read only the token part of the residual (projector onto span(W_E))
    W_V2 = W_E.T @ dual @ w.W_V[2, 0].float()
    tensors["blocks.2.attn.W_V"] = W_V2[None]
    val = W_E @ W_V2
    tensors["blocks.2.attn.W_O"] = outer_memory(w.W_U.float().T, val, alpha).T[None]
    _load(model, {k: v.contiguous() for k, v in tensors.items()})
    return model


def ideal_nope_model(
    *, d_model: int = 256, n_ctx: int = 512, seed: int = 0, device: str = "cpu", **kwargs: Any
) -> AssocTransformer:
    """A fresh ``presets.nope`` model with :func:`build_ideal_nope` applied.

    Example:
        >>> ideal_nope_model(d_model=128).cfg.n_layers
        3
    """
    from tlassoc import presets

    model = AssocTransformer(presets.nope(d_model=d_model, n_ctx=n_ctx, seed=seed, device=device))
    return build_ideal_nope(model, **kwargs)


@torch.no_grad()
def memory_alignment(
    model: AssocTransformer,
    reference: dict[str, Tensor] | AssocTransformer,
    names: tuple[str, ...] = ("blocks.0.attn.W_K", "blocks.1.attn.W_K", "blocks.1.attn.W_O"),
    n_random: int = 20,
    seed: int = 0,
) -> Any:
    """Cosine similarity per matrix between ``model``'s weights and ``reference`` (e.g.
    :func:`ideal_memories`), next to the cosine of random Gaussian matrices of the same shape.

    Returns:
        A DataFrame with ``parameter``, ``cosine``, ``random_mean_abs`` and ``random_max_abs``
        (over ``n_random`` seeded random matrices) and ``z_score``: the cosine divided by
        ``1/sqrt(numel)``, the standard deviation of the cosine between a random direction and
        the reference (``|z| > 5`` is far outside what chance gives).

    Example:
        >>> from tlassoc import presets
        >>> m = AssocTransformer(presets.ape(d_model=32, n_ctx=16))
        >>> frame = memory_alignment(m, ideal_memories(m))
        >>> list(frame.columns)
        ['parameter', 'cosine', 'random_mean_abs', 'random_max_abs', 'z_score']
    """
    import pandas as pd

    params = dict(model.named_parameters())
    ref = (
        dict(reference.named_parameters())
        if isinstance(reference, torch.nn.Module)
        else dict(reference)
    )
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name in names:
        if name not in params or name not in ref:
            raise ValueError(f"parameter {name!r} is missing from the model or the reference")
        a = params[name].detach().float().flatten().cpu()
        b = ref[name].detach().float().flatten().cpu()
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        rnd = torch.tensor(
            [
                abs(
                    float(
                        torch.nn.functional.cosine_similarity(
                            torch.randn(a.shape, generator=gen), b, dim=0
                        )
                    )
                )
                for _ in range(n_random)
            ]
        )
        rows.append(
            {
                "parameter": name,
                "cosine": cos,
                "random_mean_abs": float(rnd.mean()),
                "random_max_abs": float(rnd.max()),
                # the cosine of an isotropic random direction with a fixed vector in R^n has
                # standard deviation 1/sqrt(n): z is the cosine in those units
                "z_score": cos * math.sqrt(a.numel()),
            }
        )
    return pd.DataFrame(rows)
