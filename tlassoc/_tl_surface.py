"""The part of TransformerLens's model interface that its own analysis functions call on a model.

``ActivationCache.logit_attrs`` asks the model for ``tokens_to_residual_directions`` and
``to_single_token``; ``get_full_resid_decomposition`` for ``accumulated_bias``; circuit code
reads the stacked biases ``b_Q``, ``b_K``, ``b_V``, ``b_O`` and ``b_U``; notebooks call
``set_use_attn_result``. :class:`TLSurface` gives :class:`tlassoc.AssocTransformer` these
members with TransformerLens's signatures and semantics. The papers' models have no attention
or unembedding biases, so those are zeros of TransformerLens's shapes, as in TransformerLens
models built without biases.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64))
    >>> model.to_single_token("e"), tuple(model.tokens_to_residual_directions("e").shape)
    (43, (32,))
    >>> tuple(model.b_Q.shape), tuple(model.b_O.shape), float(model.b_O.abs().sum())
    ((2, 1, 32), (2, 32), 0.0)
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["TLSurface"]


class TLSurface:
    """TransformerLens's model members that its tools call (mixed into ``AssocTransformer``).

    The host class provides ``cfg``, ``blocks``, ``W_U``, ``to_tokens`` and ``tokenizer``.
    """

    cfg: Any
    blocks: Any
    W_U: Tensor

    # --- tokens ---------------------------------------------------------------------------------
    def to_single_token(self, string: str) -> int:
        """The id of ``string``, which must be exactly one token (as TransformerLens).

        Example:
            >>> from tlassoc import AssocTransformer, AssocConfig
            >>> AssocTransformer(AssocConfig(d_model=16)).to_single_token("a")
            39
        """
        if not isinstance(string, str):
            raise TypeError(f"string={string!r}; expected a str")
        tokens = self.to_tokens(string, move_to_device=False)  # type: ignore[attr-defined]
        if tokens.numel() != 1:
            raise ValueError(
                f"string={string!r} is {tokens.numel()} tokens "
                f"{self.to_str_tokens(string)}; expected a single token"  # type: ignore[attr-defined]
            )
        return int(tokens.item())

    def tokens_to_residual_directions(
        self, tokens: str | int | Int[Tensor, ""] | Int[Tensor, " batch"] | Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "d_model"] | Float[Tensor, "... d_model"]:
        """The unembedding direction of each token: ``W_U[:, token]`` (``[d_model]`` for one
        token, ``[..., d_model]`` for a tensor of them), as TransformerLens.

        Example:
            >>> from tlassoc import AssocTransformer, AssocConfig
            >>> m = AssocTransformer(AssocConfig(d_model=16))
            >>> m.tokens_to_residual_directions(torch.tensor([[1, 2, 3]])).shape
            torch.Size([1, 3, 16])
        """
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            if tokens.dtype.is_floating_point:
                raise TypeError(f"tokens has dtype {tokens.dtype}; expected integer token ids")
            directions = self.W_U[:, tokens.to(self.W_U.device)]
            return einops.rearrange(directions, "d_model ... -> ... d_model")
        if isinstance(tokens, str):
            token = self.to_single_token(tokens)
        elif isinstance(tokens, Tensor):
            token = int(tokens.item())
        elif isinstance(tokens, int) and not isinstance(tokens, bool):
            token = tokens
        else:
            raise TypeError(f"tokens={tokens!r}; expected a str, an int or a tensor of ids")
        if not 0 <= token < self.cfg.d_vocab:
            raise ValueError(f"token={token}; expected an id in [0, {self.cfg.d_vocab})")
        return self.W_U[:, token]

    # --- biases (the papers' models have none: zeros of TransformerLens's shapes) --------------
    def _zeros(self, *shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=self.W_U.dtype, device=self.W_U.device)

    @property
    def b_Q(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Query biases: zeros ``[n_layers, n_heads, d_head]`` (no attention biases)."""
        return self._zeros(self.cfg.n_layers, self.cfg.n_heads, self.cfg.d_head)

    @property
    def b_K(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Key biases: zeros ``[n_layers, n_heads, d_head]``."""
        return self._zeros(self.cfg.n_layers, self.cfg.n_heads, self.cfg.d_head)

    @property
    def b_V(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Value biases: zeros ``[n_layers, n_heads, d_head]``."""
        return self._zeros(self.cfg.n_layers, self.cfg.n_heads, self.cfg.d_head)

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        """Attention output biases: zeros ``[n_layers, d_model]``."""
        return self._zeros(self.cfg.n_layers, self.cfg.d_model)

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        """Unembedding bias: zeros ``[d_vocab]``."""
        return self._zeros(self.cfg.d_vocab)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the biases written to the residual stream before block ``layer`` (as
        TransformerLens): every earlier feed-forward ``b_out`` (attention has no biases), so
        zeros for attention-only models.

        Args:
            layer: Blocks ``0 .. layer - 1`` count (``n_layers``: all of them).
            mlp_input: Also count block ``layer``'s attention bias (zero here).
            include_mlp_biases: Count the feed-forward output biases.

        Example:
            >>> from tlassoc import AssocTransformer, presets
            >>> AssocTransformer(presets.rpe(d_model=16)).accumulated_bias(2).abs().sum().item()
            0.0
        """
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer={layer!r}; expected an int")
        if not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"layer={layer}; expected 0 <= layer <= n_layers={self.cfg.n_layers}")
        if mlp_input and layer >= self.cfg.n_layers:
            raise ValueError(f"layer={layer} with mlp_input; expected layer < {self.cfg.n_layers}")
        total = self._zeros(self.cfg.d_model)
        if include_mlp_biases:
            for block in self.blocks[:layer]:
                if getattr(block, "has_mlp", False):
                    total = total + block.mlp.b_out
        return total

    # --- switches -------------------------------------------------------------------------------
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute each head's output ``blocks.{l}.attn.hook_result`` ``[batch, pos, head,
        d_model]`` (TransformerLens's switch; off by default to save memory).

        Example:
            >>> from tlassoc import AssocTransformer, presets
            >>> m = AssocTransformer(presets.rpe(d_model=16))
            >>> m.set_use_attn_result(True)
            >>> m.run_with_cache(torch.tensor([[1, 2]]))[1]["blocks.0.attn.hook_result"].shape
            torch.Size([1, 2, 1, 16])
        """
        if not isinstance(use_attn_result, bool):
            raise TypeError(f"use_attn_result={use_attn_result!r}; expected a bool")
        self.cfg.use_attn_result = use_attn_result
