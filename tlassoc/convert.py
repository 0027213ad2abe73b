"""Copy an :class:`~tlassoc.model.AssocTransformer` into TransformerLens's own model class.

On TransformerLens 3.x the copy is a ``HookedTransformer``; on 4.x (which removed it) a
``TransformerBridge`` around TransformerLens's native model (``TransformerBridge.boot_native``),
built offline. This module is the one place where the two majors differ for models.

Imports flow one way: :meth:`AssocTransformer.to_transformer_lens` imports this module when
called, and this module never imports :mod:`tlassoc.model`. It reads the model duck-typed
(:class:`Convertible`): its config, tokenizer, the stacked TransformerLens weights and the
named parameters (``blocks.{l}.mlp.W_in``, ``blocks.{l}.ln1.w``, ``ln_final.w``...).

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.ape(d_model=32, n_ctx=16))
    >>> tl_model = to_transformer_lens(model)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor

from tlassoc._tl import TL_MAJOR


class Convertible(Protocol):
    """What the conversion reads of an AssocTransformer."""

    cfg: Any
    tokenizer: Any
    W_E: Tensor
    W_U: Tensor
    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]: ...


def _params(model: Convertible) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def check_convertible(model: Convertible) -> None:
    """Raise ``ValueError`` naming the setting TransformerLens cannot express."""
    cfg = model.cfg
    kind = cfg.positional_embedding_type
    if kind == "relative":
        raise ValueError(
            "positional_embedding_type='relative' cannot be expressed by TransformerLens "
            "(neither HookedTransformer nor TransformerBridge has learned relative positions); "
            "'standard', 'rotary', 'alibi' (3.x) and 'none' convert"
        )
    if kind in ("alibi", "rotary") and tuple(cfg.relative_layers) != tuple(range(cfg.n_layers)):
        raise ValueError(
            f"relative_layers={tuple(cfg.relative_layers)}; TransformerLens applies {kind} in "
            f"every layer, expected {tuple(range(cfg.n_layers))}"
        )
    if kind == "alibi" and TL_MAJOR >= 4:
        raise ValueError(
            "positional_embedding_type='alibi' cannot be expressed by TransformerLens 4.x's "
            "TransformerBridge (its native models have standard or rotary positions); use 3.x"
        )
    if cfg.length_scale_len is not None:
        raise ValueError(
            f"length_scale_len={cfg.length_scale_len}; TransformerLens has no length-scaled "
            "attention, expected None"
        )


def _mlp_weights(model: Convertible, layer: int, d_mlp: int) -> dict[str, Tensor]:
    """Feed-forward weights for TransformerLens's ReLU MLP of width ``d_mlp``.

    Layers without a feed-forward block get zeros (a ReLU MLP of zeros adds nothing); a linear
    block ``h W_out`` with ``h = x W_in + b_in`` is written as ``relu(h) W_out + relu(-h)(-W_out)``.
    """
    cfg = model.cfg
    dm = cfg.d_model
    like = model.W_E
    out = {
        "W_in": torch.zeros(dm, d_mlp, dtype=like.dtype, device=like.device),
        "b_in": torch.zeros(d_mlp, dtype=like.dtype, device=like.device),
        "W_out": torch.zeros(d_mlp, dm, dtype=like.dtype, device=like.device),
        "b_out": torch.zeros(dm, dtype=like.dtype, device=like.device),
    }
    if not cfg.has_ffn(layer):
        return out
    params = _params(model)
    W_in, b_in, W_out, b_out = (
        params[f"blocks.{layer}.mlp.{name}"] for name in ("W_in", "b_in", "W_out", "b_out")
    )
    n = W_in.shape[1]
    if cfg.ffn_type == "relu":
        out["W_in"][:, :n], out["b_in"][:n] = W_in, b_in
        out["W_out"][:n], out["b_out"][:] = W_out, b_out
    else:
        out["W_in"] = torch.cat([W_in, -W_in], dim=1)
        out["b_in"] = torch.cat([b_in, -b_in])
        out["W_out"] = torch.cat([W_out, -W_out], dim=0)
        out["b_out"] = b_out.clone()
    return out


def _layer_norms(model: Convertible, layer: int, d_mlp: int | None) -> dict[str, Tensor]:
    """``ln1.w, ln1.b`` (and ``ln2.w, ln2.b`` when TransformerLens has an MLP: identity where
    this layer has no feed-forward block) of a LayerNorm model."""
    params = _params(model)
    p = f"blocks.{layer}"
    out = {"ln1.w": params[f"{p}.ln1.w"], "ln1.b": params[f"{p}.ln1.b"]}
    if d_mlp:
        has = model.cfg.has_ffn(layer)
        out["ln2.w"] = params[f"{p}.ln2.w"] if has else torch.ones_like(out["ln1.w"])
        out["ln2.b"] = params[f"{p}.ln2.b"] if has else torch.zeros_like(out["ln1.b"])
    return out


def _tl_mlp_width(model: Convertible) -> int | None:
    cfg = model.cfg
    if cfg.ffn_type is None:
        return None
    assert cfg.d_mlp is not None
    return cfg.d_mlp * (2 if cfg.ffn_type == "linear" else 1)


def _positions(model: Convertible) -> Tensor:
    if model.cfg.positional_embedding_type == "standard":
        return _params(model)["pos_embed.W_pos"]
    return torch.zeros(
        model.cfg.n_ctx, model.cfg.d_model, dtype=model.W_E.dtype, device=model.W_E.device
    )


def _tokenizer(model: Convertible) -> Any:
    tok = model.tokenizer
    return tok.to_hf() if tok is not None and hasattr(tok, "to_hf") else None


@torch.no_grad()
def to_transformer_lens(model: Convertible) -> Any:
    """The same network as TransformerLens's own model object, in eval mode.

    Args:
        model: A model with absolute or no positions.

    Returns:
        ``HookedTransformer`` (TransformerLens 3.x) or ``TransformerBridge`` (4.x) whose logits
        equal ``model``'s.
    """
    check_convertible(model)
    converted = _to_hooked_transformer(model) if TL_MAJOR < 4 else _to_bridge(model)
    return converted.eval()


def _config_fields(cfg: Any, d_mlp: int | None) -> dict[str, Any]:
    """The fields TransformerLens's two config classes share (MLP width and activation are
    set by the caller): absolute positions (zeros for ``"none"``), no BOS."""
    return dict(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_ctx=cfg.n_ctx,
        d_head=cfg.d_head,
        n_heads=cfg.n_heads,
        d_vocab=cfg.d_vocab,
        attn_only=d_mlp is None,
        normalization_type=cfg.normalization_type,
        eps=cfg.eps,
        positional_embedding_type=(
            cfg.positional_embedding_type
            if cfg.positional_embedding_type in ("alibi", "rotary")
            else "standard"
        ),
        **_rotary_fields(cfg),
        default_prepend_bos=False,
        device=cfg.device,
        dtype=cfg.dtype,
        seed=cfg.seed,
    )


def _rotary_fields(cfg: Any) -> dict[str, Any]:
    if cfg.positional_embedding_type != "rotary":
        return {}
    return {"rotary_dim": cfg.d_head, "rotary_base": cfg.rotary_base}


def _adjacent_pairs(d_head: int) -> Tensor:
    """Head-dimension order that turns tlassoc's rotary pairing ``(i, i + d/2)`` into the
    adjacent pairs ``(2i, 2i + 1)`` of TransformerBridge's native rotary."""
    half = d_head // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).flatten()


def _to_hooked_transformer(model: Convertible) -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = model.cfg
    d_mlp = _tl_mlp_width(model)
    tl_cfg = HookedTransformerConfig(
        **_config_fields(cfg, d_mlp), d_mlp=d_mlp, act_fn="relu" if d_mlp else None
    )
    ht = HookedTransformer(tl_cfg, tokenizer=_tokenizer(model), default_padding_side="right")
    state = ht.state_dict()
    state["embed.W_E"] = model.W_E
    if "pos_embed.W_pos" in state:
        state["pos_embed.W_pos"] = _positions(model)
    state["unembed.W_U"] = model.W_U
    state["unembed.b_U"] = torch.zeros_like(state["unembed.b_U"])
    W_Q, W_K, W_V, W_O = model.W_Q, model.W_K, model.W_V, model.W_O
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}"
        state[f"{p}.attn.W_Q"], state[f"{p}.attn.W_K"] = W_Q[layer], W_K[layer]
        state[f"{p}.attn.W_V"], state[f"{p}.attn.W_O"] = W_V[layer], W_O[layer]
        for b in ("b_Q", "b_K", "b_V", "b_O"):
            state[f"{p}.attn.{b}"] = torch.zeros_like(state[f"{p}.attn.{b}"])
        if d_mlp:
            for name, value in _mlp_weights(model, layer, d_mlp).items():
                state[f"{p}.mlp.{name}"] = value
        if cfg.normalization_type == "LN":
            for name, value in _layer_norms(model, layer, d_mlp).items():
                state[f"{p}.{name}"] = value
    if cfg.normalization_type == "LN":
        params = _params(model)
        state["ln_final.w"], state["ln_final.b"] = params["ln_final.w"], params["ln_final.b"]
    ht.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return ht


def _to_bridge(model: Convertible) -> Any:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = model.cfg
    d_mlp = _tl_mlp_width(model)
    bridge_cfg = TransformerBridgeConfig(
        **_config_fields(cfg, d_mlp), d_mlp=d_mlp or 4 * cfg.d_model, act_fn="relu"
    )
    bridge = TransformerBridge.boot_native(
        bridge_cfg,
        tokenizer=_tokenizer(model),
        device=cfg.device,
        dtype=cfg.dtype,
        model_name=cfg.model_name,
    )
    native = bridge.original_model
    native.tok_embed.weight.copy_(model.W_E)
    if native.pos is not None:
        native.pos.weight.copy_(_positions(model))
    native.head.weight.copy_(model.W_U.T)
    W_Q, W_K, W_V, W_O = model.W_Q, model.W_K, model.W_V, model.W_O
    if cfg.positional_embedding_type == "rotary":
        order = _adjacent_pairs(cfg.d_head).to(W_Q.device)
        W_Q, W_K = W_Q[..., order], W_K[..., order]
    for layer, block in enumerate(native.layers):
        attn = block.attn
        for lin, w in ((attn.q, W_Q[layer]), (attn.k, W_K[layer]), (attn.v, W_V[layer])):
            lin.weight.copy_(w.permute(0, 2, 1).reshape(-1, cfg.d_model))  # [h*d_head, d_model]
            lin.bias.zero_()
        attn.o.weight.copy_(W_O[layer].reshape(-1, cfg.d_model).T)  # [d_model, h*d_head]
        attn.o.bias.zero_()
        if d_mlp:
            w = _mlp_weights(model, layer, d_mlp)
            block.mlp.fc_in.weight.copy_(w["W_in"].T)
            block.mlp.fc_in.bias.copy_(w["b_in"])
            block.mlp.fc_out.weight.copy_(w["W_out"].T)
            block.mlp.fc_out.bias.copy_(w["b_out"])
        if cfg.normalization_type == "LN":
            norms = _layer_norms(model, layer, d_mlp)
            for name in norms:
                ln, kind = name.split(".")
                getattr(getattr(block, ln), "weight" if kind == "w" else "bias").copy_(norms[name])
    if cfg.normalization_type == "LN":
        params = _params(model)
        native.ln_out.weight.copy_(params["ln_final.w"])
        native.ln_out.bias.copy_(params["ln_final.b"])
    return bridge
