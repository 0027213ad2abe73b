"""Ready-made model configurations (:class:`~tlassoc.config.AssocConfig`) of the papers' models.

Whole runs (a model, a training recipe and a task) are in :mod:`tlassoc.recipes`.

Every preset takes keyword overrides of any :class:`~tlassoc.config.AssocConfig` field.

Example:
    >>> from tlassoc import presets
    >>> presets.rpe(d_model=64).positional_embedding_type
    'relative'
    >>> presets.nope().n_layers
    3
"""

from __future__ import annotations

from typing import Any

from tlassoc.config import AssocConfig

#: Parameters the simplified two-layer model keeps at their random initial values (Bietti et al.):
#: embeddings, positions, unembedding, layer-0 value/output and layer-1 value matrices.
SIMPLIFIED_FROZEN: tuple[str, ...] = (
    "embed.W_E",
    "pos_embed.W_pos",
    "rel_embed.W_rel",
    "unembed.W_U",
    "blocks.0.attn.W_V",
    "blocks.0.attn.W_O",
    "blocks.1.attn.W_V",
)


def _simplified(**overrides: Any) -> AssocConfig:
    base: dict[str, Any] = dict(
        n_layers=2,
        d_model=128,
        n_heads=1,
        n_ctx=512,
        d_vocab=65,
        identity_query=True,
        frozen=SIMPLIFIED_FROZEN,
    )
    base.update(overrides)
    return AssocConfig(**base)


def bietti_simplified(**overrides: Any) -> AssocConfig:
    """Bietti et al.'s simplified model as published: d = 256, absolute positions, ``W_Q = I``.

    Trainable: ``W_K`` of both layers and ``W_O`` of layer 1; everything else frozen at random
    init. Add ``ffn_type="linear"`` for the feed-forward bigram memory.
    """
    return _simplified(
        **{"d_model": 256, "n_ctx": 256, "model_name": "bietti_simplified", **overrides}
    )


def ape(**overrides: Any) -> AssocConfig:
    """The simplified two-layer model with absolute positions ``x_t = w_E(z_t) + p_t`` (d = 128)."""
    return _simplified(
        **{"positional_embedding_type": "standard", "model_name": "ape", **overrides}
    )


def rpe(**overrides: Any) -> AssocConfig:
    """The simplified two-layer model with relative positions in layer 0 (key side, d = 128)."""
    return _simplified(
        **{
            "positional_embedding_type": "relative",
            "relative_layers": (0,),
            "model_name": "rpe",
            **overrides,
        }
    )


def full(**overrides: Any) -> AssocConfig:
    """The realistic counterpart of the simplified model: pre-LayerNorm, 4 heads, learned query,
    ReLU feed-forward layers in both layers, absolute positions, everything trainable.

    Example:
        >>> full(d_model=64).n_heads
        4
    """
    base: dict[str, Any] = dict(
        n_layers=2,
        d_model=128,
        n_heads=4,
        n_ctx=512,
        positional_embedding_type="standard",
        normalization_type="LN",
        ffn_type="relu",
        ffn_layers=(0, 1),
        model_name="full",
    )
    return AssocConfig(**{**base, **overrides})


def nope(**overrides: Any) -> AssocConfig:
    """Three layers and no positional information at all (``W_Q = I``, embeddings frozen).

    Without positions, layer 0 can only attend by content (uniformly at init); position has to be
    inferred from the ``1/t`` decay of what it writes (Wang & Sato).
    """
    base: dict[str, Any] = dict(
        n_layers=3,
        d_model=128,
        n_heads=1,
        n_ctx=512,
        positional_embedding_type="none",
        identity_query=True,
        frozen=("embed.W_E", "unembed.W_U"),
        model_name="nope",
    )
    base.update(overrides)
    return AssocConfig(**base)


__all__ = ["SIMPLIFIED_FROZEN", "ape", "bietti_simplified", "full", "nope", "rpe"]
