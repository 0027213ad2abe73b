"""A minimal plain-PyTorch model of the same math as ``tlassoc.presets.ape()``: the baseline that
tlassoc's speed is measured against (no hooks, no validation, no TransformerLens).

Two attention layers with one head, identity query, ``x_t = w_E(z_t) + p_t``, no layer norm,
logits ``x W_U``; frozen parts are plain tensors and trainable ones ``nn.Parameter``s, exactly as in
the simplified preset.

Example:
    >>> model = PlainSimplifiedTransformer(d_model=16, n_ctx=8)
    >>> model(torch.zeros(2, 8, dtype=torch.long)).shape
    torch.Size([2, 8, 65])
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class PlainSimplifiedTransformer(nn.Module):
    def __init__(
        self,
        d_model: int = 128,
        n_ctx: int = 512,
        d_vocab: int = 65,
        n_layers: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        std = 1.0 / math.sqrt(d_model)

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen) * std

        self.register_buffer("W_E", rand(d_vocab, d_model))
        self.register_buffer("W_pos", rand(n_ctx, d_model))
        self.register_buffer("W_U", rand(d_model, d_vocab))
        self.W_K = nn.ParameterList([nn.Parameter(rand(d_model, d_model)) for _ in range(n_layers)])
        self.W_V = [rand(d_model, d_model) for _ in range(n_layers)]
        self.W_O = nn.ParameterList([nn.Parameter(rand(d_model, d_model)) for _ in range(n_layers)])
        self.scale = math.sqrt(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.W_E[tokens] + self.W_pos[:n]
        mask = torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)
        for W_K, W_V, W_O in zip(self.W_K, self.W_V, self.W_O, strict=True):
            scores = (x @ (x @ W_K).transpose(1, 2)) / self.scale
            pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
            x = x + pattern @ (x @ W_V) @ W_O
        return x @ self.W_U
