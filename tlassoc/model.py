"""`AssocTransformer`: the associative-memory papers' transformers as a TransformerLens module.

The whole model is in this file. It is a ``HookedRootModule`` with TransformerLens's hook names
and weight shapes, so ``run_with_cache``, ``run_with_hooks``, ``transformer_lens.patching``,
``head_detector`` and ``FactoredMatrix`` circuits work on it unchanged, on TransformerLens 3.x and
4.x. Three positional encodings:

* ``"standard"`` (absolute positions): ``x_t = w_E(z_t) + p_t``.
* ``"relative"`` (relative positions): ``x_t = w_E(z_t)``; in the relative layers a vector ``r_j``
  per distance ``j = t - s`` joins the key input, ``score(t, s) = q_t . W_K (x_s + r_{t-s}) /
  sqrt(d_head)``. The relative term is computed as ``q . (W_K R)^T`` for every distance and then
  gathered by ``t - s``: no ``[query, key, d]`` tensor is ever built. ``relative_form="bias"`` adds
  a learned scalar per distance and head instead (T5-style).
* ``"none"``: no positional information at all.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64))
    >>> logits, cache = model.run_with_cache(model.to_tokens("To be, or not to be"))
    >>> logits.shape, cache["pattern", 0].shape
    (torch.Size([1, 19, 65]), torch.Size([1, 1, 19, 19]))
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import einops
import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc._io import atomic_write_bytes
from tlassoc._model_folders import resolve_model_folder
from tlassoc._tl import ActivationCache, FactoredMatrix, HookedRootModule, HookPoint
from tlassoc._tl_surface import TLSurface
from tlassoc.config import AssocConfig
from tlassoc.tokenizer import CharTokenizer, WordTokenizer, tokenizer_from_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, pickled, tampered with or inconsistent."""


def memory_limit_bytes(device: Any = "cpu") -> int | None:
    """Half the memory of ``device`` (the machine's RAM for the CPU), or ``None`` if unknown.

    Example:
        >>> memory_limit_bytes("cpu") is None or memory_limit_bytes("cpu") > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return None


def check_attention_memory(
    cfg: AssocConfig, batch: int, seq_len: int, *, layers: int = 1, what: str = "input"
) -> None:
    """Refuse, before allocating, a batch whose attention scores would not fit in memory.

    The estimate is the scores and the pattern, ``2 x batch x n_heads x seq_len² x bytes`` per
    layer, for ``layers`` layers (all of them when training keeps them for the backward pass);
    the limit is :func:`memory_limit_bytes` of the model's device.

    Raises:
        ValueError: one line with the estimate and the limit.

    Example:
        >>> check_attention_memory(AssocConfig(d_model=16), batch=1, seq_len=10**7)
        Traceback (most recent call last):
        ...
        ValueError: input of batch 1 x 10000000 positions needs about ...
    """
    limit = memory_limit_bytes(cfg.device)
    need = 2 * batch * cfg.n_heads * seq_len * seq_len * cfg.dtype.itemsize * layers
    if limit is not None and need > limit:
        raise ValueError(
            f"{what} of batch {batch} x {seq_len} positions needs about {need / 2**30:.3g} GiB "
            f"for attention scores ({layers} layer(s), {cfg.n_heads} head(s), {cfg.dtype}); "
            f"expected at most {limit / 2**30:.3g} GiB (half of {cfg.device} memory): use "
            "shorter sequences or smaller batches"
        )


# ------------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------------


class Embed(nn.Module):
    def __init__(self, cfg: AssocConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: AssocConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        batch, pos = tokens.shape
        return einops.repeat(self.W_pos[:pos], "pos d -> batch pos d", batch=batch)


class RelEmbed(nn.Module):
    """One vector ``r_j`` per distance ``j`` (``W_rel[j]``), shared by the relative layers."""

    def __init__(self, cfg: AssocConfig):
        super().__init__()
        self.W_rel = nn.Parameter(
            torch.empty(cfg.max_relative_distance, cfg.d_model, dtype=cfg.dtype)
        )


class LayerNorm(nn.Module):
    """TransformerLens's LayerNorm (centre, scale, affine), with ``hook_scale`` and
    ``hook_normalized``."""

    def __init__(self, cfg: AssocConfig):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


def relative_distance_index(
    n_query: int, n_key: int, max_distance: int, device: torch.device | str = "cpu"
) -> Int[Tensor, "query key"]:
    """Index of the distance ``t - s`` used between query ``t`` and key ``s``, clipped to
    ``[0, max_distance - 1]`` (future keys get 0; the causal mask hides them anyway).

    Example:
        >>> relative_distance_index(3, 3, 2)
        tensor([[0, 0, 0],
                [1, 0, 0],
                [1, 1, 0]])
    """
    t = torch.arange(n_query, device=device)[:, None]
    s = torch.arange(n_key, device=device)[None, :]
    return (t - s).clamp(0, max_distance - 1)


def alibi_slopes(n_heads: int) -> Float[Tensor, " n_heads"]:
    """ALiBi's fixed slope of each head, ``m_h = 2^(-8 (h + 1) / n_heads)`` (TransformerLens's
    and the ALiBi paper's convention).

    Example:
        >>> alibi_slopes(2).tolist()
        [0.0625, 0.00390625]
    """
    start = 2.0 ** (-8.0 / n_heads)
    return start ** torch.arange(1, n_heads + 1, dtype=torch.float64)


def rotary_angles(
    n_pos: int, d_head: int, base: float, device: Any = "cpu"
) -> Float[Tensor, "pos d_head"]:
    """Rotary angles ``t * theta_i`` with ``theta_i = base^(-2i / d_head)``, each frequency
    repeated for the two halves of the head (the GPT-NeoX pairing TransformerLens uses).

    Example:
        >>> rotary_angles(2, 4, 10000.0)[1].tolist()
        [1.0, 0.009999999776482582, 1.0, 0.009999999776482582]
    """
    dim = torch.arange(d_head // 2, dtype=torch.float32, device=device)
    inv_freq = base ** (-dim / (d_head / 2))
    angles = torch.arange(n_pos, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return torch.cat([angles, angles], dim=-1)


def apply_rotary(
    x: Float[Tensor, "batch pos n_heads d_head"], base: float
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Rotate each half-pair ``(x_i, x_{i + d/2})`` of every position ``t`` by ``t * theta_i``:
    ``x cos + rotate_half(x) sin`` with ``rotate_half(x) = (-x_2nd_half, x_1st_half)``."""
    angles = rotary_angles(x.shape[1], x.shape[-1], base, x.device)[None, :, None, :]
    half = x.shape[-1] // 2
    flipped = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * angles.cos().to(x.dtype) + flipped * angles.sin().to(x.dtype)


def length_scale(n_pos: int, train_len: int, device: Any = "cpu") -> Float[Tensor, " pos"]:
    """Per-query multiplier ``log(t + 1) / log(train_len)`` of length-scaled attention (1 where
    the query sees ``train_len`` keys).

    Example:
        >>> length_scale(4, 4)[-1].item()
        1.0
    """
    t = torch.arange(n_pos, dtype=torch.float32, device=device)
    return torch.log(t + 1) / math.log(train_len)


class Attention(nn.Module):
    """Causal multi-head attention with optional identity query and a position term.

    Scores, for the layers that carry one (``cfg.relative_layers``):

    * relative: ``q_t . W_K (x_s + r_{t-s}) / sqrt(d_head)`` (vector form) or ``q_t . k_s /
      sqrt(d_head) + b_{t-s}`` (bias form);
    * ALiBi: ``q_t . k_s / sqrt(d_head) - m_h (t - s)``;
    * rotary: ``R_t q_t . R_s k_s / sqrt(d_head)`` (the rotated ``q``, ``k`` pass
      ``hook_rot_q``, ``hook_rot_k``).

    With ``cfg.length_scale_len`` every logit of query ``t`` is multiplied by
    :func:`length_scale`. When nothing is hooked on this module (training), a fused path
    (:meth:`_fused`) computes the same numbers faster; any hook, a cache or
    ``fast_attention=False`` selects the step-by-step path that fires every hook.
    """

    def __init__(self, cfg: AssocConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        h, dm, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        if not cfg.identity_query:
            self.W_Q = nn.Parameter(torch.empty(h, dm, dh, dtype=cfg.dtype))
        self.W_K = nn.Parameter(torch.empty(h, dm, dh, dtype=cfg.dtype))
        self.W_V = nn.Parameter(torch.empty(h, dm, dh, dtype=cfg.dtype))
        self.W_O = nn.Parameter(torch.empty(h, dh, dm, dtype=cfg.dtype))
        self.position = cfg.position_in_attention(layer)
        self.relative = self.position == "relative"
        if self.relative and cfg.relative_form == "bias":
            self.b_rel = nn.Parameter(torch.empty(h, cfg.max_relative_distance, dtype=cfg.dtype))
        self.scale = math.sqrt(dh)
        names = ["q", "k", "v", "rel_scores", "attn_scores", "pattern", "z", "result"]
        if self.position == "rotary":
            names[2:2] = ["rot_q", "rot_k"]
        for name in names:
            setattr(self, f"hook_{name}", HookPoint())
        self._hook_points = [getattr(self, f"hook_{name}") for name in names]

    def query_weight(self) -> Float[Tensor, "n_heads d_model d_head"]:
        """``W_Q``; the identity for every head when ``identity_query`` is set."""
        if self.cfg.identity_query:
            eye = torch.eye(self.cfg.d_model, device=self.W_K.device, dtype=self.W_K.dtype)
            return einops.repeat(eye, "m d -> h m d", h=self.cfg.n_heads)
        return self.W_Q

    def _qkv(
        self, x: Float[Tensor, "batch pos d_model"], copy: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values ``[batch, pos, n_heads, d_head]`` of the input rows ``x``."""
        if self.cfg.identity_query:  # a copy, so that hooks editing q in place never touch x
            q = x[:, :, None, :].expand(-1, -1, self.cfg.n_heads, -1)
            q = q.clone() if copy else q
        else:
            q = torch.einsum("bpm,hmd->bphd", x, self.W_Q)
        k = torch.einsum("bpm,hmd->bphd", x, self.W_K)
        v = torch.einsum("bpm,hmd->bphd", x, self.W_V)
        return q, k, v

    def hooked(self) -> bool:
        """Whether any hook is attached to this module's hook points."""
        return any(h._forward_hooks or h._backward_hooks for h in self._hook_points)

    def _position_scores(
        self, q: Tensor, W_rel: Tensor | None, n_pos: int
    ) -> Float[Tensor, "batch n_heads pos pos"] | Float[Tensor, "n_heads pos pos"] | None:
        if self.relative:
            return self._relative_scores(q, W_rel, n_pos)
        if self.position == "alibi":
            dist = relative_distance_index(n_pos, n_pos, n_pos, device=q.device).to(q.dtype)
            slopes = alibi_slopes(self.cfg.n_heads).to(device=q.device, dtype=q.dtype)
            return -slopes[:, None, None] * dist[None]
        return None

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        W_rel: Float[Tensor, "n_dist d_model"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        n_pos = x.shape[1]
        fast = self.cfg.fast_attention and not self.cfg.use_attn_result and not self.hooked()
        q, k, v = self._qkv(x, copy=not fast)
        if fast:
            return self._fused(q, k, v, W_rel)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.position == "rotary":
            q = self.hook_rot_q(apply_rotary(q, self.cfg.rotary_base))
            k = self.hook_rot_k(apply_rotary(k, self.cfg.rotary_base))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / self.scale
        position = self._position_scores(q, W_rel, n_pos)
        if position is not None:
            scores = scores + self.hook_rel_scores(position)
        if self.cfg.length_scale_len is not None:
            factor = length_scale(n_pos, self.cfg.length_scale_len, x.device).to(scores.dtype)
            scores = scores * factor[:, None]
        mask = torch.ones(n_pos, n_pos, dtype=torch.bool, device=x.device).triu(1)
        scores = self.hook_attn_scores(scores.masked_fill(mask, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        if self.cfg.use_attn_result:
            return self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O)).sum(dim=2)
        return torch.einsum("bqhd,hdm->bqm", z, self.W_O)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, W_rel: Tensor | None) -> Tensor:
        """The forward pass in few, large kernels (no hooks fire): the scale is folded into
        ``q`` and the causal mask (with any position term) is added by the score product itself
        (``baddbmm``), so no ``[batch, head, query, key]`` tensor is divided or masked on its
        own. Faster on CPU, forward and backward, than ``scaled_dot_product_attention``'s
        kernels at these sizes (``benchmarks/bench_model.py``)."""
        b, n_pos, h, dh = q.shape
        if self.position == "rotary":
            q, k = apply_rotary(q, self.cfg.rotary_base), apply_rotary(k, self.cfg.rotary_base)
        add = self._position_scores(q, W_rel, n_pos)
        q = q / self.scale
        if self.cfg.length_scale_len is not None:
            factor = length_scale(n_pos, self.cfg.length_scale_len, q.device).to(q.dtype)
            q = q * factor[None, :, None, None]
            add = add * factor[:, None] if add is not None else None
        mask = torch.full((n_pos, n_pos), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
        if add is not None:  # [h, q, k] or [b, h, q, k] -> [b * h, q, k]
            mask = (add + mask).expand(b, h, n_pos, n_pos).reshape(b * h, n_pos, n_pos)
        qh, kh, vh = (t.transpose(1, 2).reshape(b * h, n_pos, dh) for t in (q, k, v))
        pattern = torch.softmax(torch.baddbmm(mask, qh, kh.transpose(1, 2)), dim=-1)
        z = torch.bmm(pattern, vh).view(b, h, n_pos, dh)
        return torch.einsum("bhqd,hdm->bqm", z, self.W_O)

    def project(
        self, x: Float[Tensor, "batch pos n_heads d"], act: Literal["z", "result"] = "z"
    ) -> Float[Tensor, "batch pos d_model"]:
        """The attention output from ``hook_z`` (or ``hook_result``) activations, computed as
        :meth:`forward` computes it (so patched activations give the same numbers)."""
        if act == "result":
            return x.sum(dim=2)
        if self.cfg.use_attn_result:
            return torch.einsum("bqhd,hdm->bqhm", x, self.W_O).sum(dim=2)
        return torch.einsum("bqhd,hdm->bqm", x, self.W_O)

    def incremental_output(
        self,
        cached: Mapping[str, Tensor],
        x_new: Float[Tensor, "copies batch d_model"],
        pos: Int[Tensor, " copies"],
    ) -> Float[Tensor, "copies batch pos d_model"]:
        """The attention output of every query row when only input row ``pos[c]`` changed (to
        ``x_new[c]``, already layer-normed), from the unchanged run's cached activations.

        ``cached`` holds that run's ``q, k, v, attn_scores, pattern, z`` (the names after
        ``attn.hook_``). Only query, key and value ``p = pos[c]`` change, so: query rows
        ``t < p`` keep their ``z``; row ``p`` is recomputed in full; for ``t > p`` only the score
        ``s'_tp = q_t . k'_p / sqrt(d_head)`` changes, and ``z'_t = (1 - a) mu_tp + a v'_p`` with
        ``a = sigmoid(s'_tp - LSE_{s != p} S_ts)`` and ``mu_tp`` the cached pattern's mean of
        the other values (:func:`_later_rows_coefficients`). ``O(pos * d)`` per copy instead of
        ``O(pos^2 * d)``. Layers with a relative-position term are not supported (their scores
        depend on the query through the distance).
        """
        if self.position is not None or self.cfg.length_scale_len is not None:
            raise ValueError(
                f"layer {self.layer} has a {self.position or 'length-scaled'} position term; "
                "expected a layer without one for the incremental update"
            )
        q, k, v, z = (cached[name] for name in ("q", "k", "v", "z"))  # [n, P, H, d]
        qn, kn, vn = self._qkv(x_new)  # [C, n, H, d]
        idx = torch.arange(len(pos), device=x_new.device)
        coef = _later_rows_coefficients(
            q, v, cached["attn_scores"], cached["pattern"], kn, pos, self.scale
        )
        c_z, c_mu, c_old, c_new = (c.to(z.dtype) for c in coef[:4])
        v_p = v[:, pos].transpose(0, 1)  # [C, n, H, dv]
        W_O = self.W_O  # [H, dv, d_model]
        out = torch.einsum("cnht,nthm->cntm", c_z, torch.einsum("nthd,hdm->nthm", z, W_O))
        mu_O = torch.einsum("nhtd,hdm->nthm", coef[4].to(z.dtype), W_O)
        out = out + torch.einsum("cnht,nthm->cntm", c_mu, mu_O)
        out = out + torch.einsum("cnht,cnhm->cntm", c_old, torch.einsum("cnhd,hdm->cnhm", v_p, W_O))
        out = out + torch.einsum("cnht,cnhm->cntm", c_new, torch.einsum("cnhd,hdm->cnhm", vn, W_O))
        z_p = self._changed_row(qn, kn, vn, k, v, pos)
        out[idx, :, pos] += torch.einsum("cnhd,hdm->cnm", z_p, W_O)  # its coefficients are 0
        return out

    def _changed_row(
        self, qn: Tensor, kn: Tensor, vn: Tensor, k: Tensor, v: Tensor, pos: Tensor
    ) -> Float[Tensor, "copies batch n_heads d_head"]:
        """``z`` of query row ``pos[c]``, whose query, key and value all changed."""
        idx = torch.arange(len(pos), device=qn.device)
        t = torch.arange(k.shape[1], device=qn.device)
        scores = torch.einsum("cnhd,nshd->cnhs", qn, k) / self.scale  # [C, n, H, P]
        scores[idx, :, :, pos] = (qn * kn).sum(-1) / self.scale
        scores = scores.masked_fill(t[None, None, None, :] > pos[:, None, None, None], -math.inf)
        A_p = torch.softmax(scores, dim=-1)
        a_pp = A_p[idx, :, :, pos][..., None]  # [C, n, H, 1]
        v_p = v[:, pos].transpose(0, 1)
        return torch.einsum("cnhs,nshd->cnhd", A_p, v) + a_pp * (vn - v_p)

    def _relative_scores(
        self,
        q: Float[Tensor, "batch pos n_heads d_head"],
        W_rel: Float[Tensor, "n_dist d_model"] | None,
        n_pos: int,
    ) -> Float[Tensor, "batch n_heads pos pos"]:
        n_dist = min(self.cfg.max_relative_distance, n_pos)
        index = relative_distance_index(n_pos, n_pos, n_dist, device=q.device)
        if self.cfg.relative_form == "bias":
            per_distance = self.b_rel[:, :n_dist]  # [head, dist]
            return einops.repeat(per_distance[:, index], "h q k -> b h q k", b=q.shape[0])
        assert W_rel is not None
        rel_keys = torch.einsum("jm,hmd->hjd", W_rel[:n_dist], self.W_K)  # W_K r_j per distance
        per_distance = torch.einsum("bqhd,hjd->bhqj", q, rel_keys) / self.scale
        batch, heads = per_distance.shape[:2]
        return per_distance.gather(-1, index.expand(batch, heads, n_pos, n_pos))


def _later_rows_coefficients(
    q: Tensor, v: Tensor, S: Tensor, A: Tensor, kn: Tensor, pos: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Coefficients that write each query row's new ``z'_t`` (float64) as
    ``c_z z_t + c_mu mu*_t + c_old v_p + c_new v'_p`` after key/value ``p = pos[c]`` changed.

    Rows ``t < p`` keep ``z_t`` (``c_z = 1``); rows ``t > p`` see one changed score. The
    leave-one-out terms come from the cached pattern ``A`` (``(z_t - A_tp v_p) / (1 - A_tp)`` when
    ``A_tp <= 0.5``, else from the row with its argmax ``p*`` removed, precomputed once per row by
    :func:`_leave_argmax_out`, whose mean is ``mu*``), so they do not lose precision when a query
    attends almost only to ``p``. Returns ``c_z, c_mu, c_old, c_new`` (``[C, n, H, P]``) and
    ``mu* [n, H, P, dv]``.
    """
    f64 = torch.float64
    dev = kn.device
    s_new = (torch.einsum("nthd,cnhd->cnht", q, kn) / scale).to(f64)  # [C, n, H, P]
    A64, S64 = A.to(f64), S.to(f64)
    a_col = A64.permute(3, 0, 1, 2)[pos]  # [C, n, H, P(t)]: A[t, p]
    safe = a_col.clamp(max=0.5)
    lse_loo = torch.logsumexp(S64, dim=-1)[None] + torch.log1p(-safe)
    star_p, star_lse, star_mu = _leave_argmax_out(A64, S64, v.to(f64))
    use_star = (star_p[None] == pos[:, None, None, None]) & (a_col > 0.5)
    lse_loo = torch.where(use_star, star_lse[None], lse_loo)
    alpha = torch.sigmoid(s_new - lse_loo)
    keep = (1 - alpha) / (1 - safe)
    zero = torch.zeros((), dtype=f64, device=dev)
    t = torch.arange(q.shape[1], device=dev)
    later = t[None, None, None, :] > pos[:, None, None, None]
    before = (t[None, None, None, :] < pos[:, None, None, None]).to(f64)
    c_z = torch.where(later, torch.where(use_star, zero, keep), before)
    c_mu = torch.where(later & use_star, 1 - alpha, zero)
    c_old = torch.where(later & ~use_star, -keep * a_col, zero)
    c_new = torch.where(later, alpha, zero)
    return c_z, c_mu, c_old, c_new, star_mu


def _leave_argmax_out(A: Tensor, S: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For every query row, its argmax key ``p*`` and the row's log-sum-exp and value mean
    without ``p*`` (``[n, H, P]``, ``[n, H, P]``, ``[n, H, P, dv]``; float64)."""
    star = A.argmax(-1)  # [n, H, P]
    masked = S.scatter(-1, star[..., None], -math.inf)
    lse = torch.logsumexp(masked, dim=-1)
    weights = torch.exp(masked - lse[..., None]).nan_to_num(0.0)
    mu = torch.einsum("nhts,nshd->nhtd", weights, v)
    return star, lse, mu


class MLP(nn.Module):
    """Feed-forward block ``act(x W_in + b_in) W_out + b_out``; ``act`` is identity or ReLU."""

    def __init__(self, cfg: AssocConfig):
        super().__init__()
        assert cfg.d_mlp is not None
        self.act = cfg.ffn_type
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(F.relu(pre) if self.act == "relu" else pre)
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, cfg: AssocConfig, layer: int):
        super().__init__()
        self.layer = layer
        norm = cfg.normalization_type == "LN"
        self.ln1 = LayerNorm(cfg) if norm else nn.Identity()
        self.attn = Attention(cfg, layer)
        self.has_mlp = cfg.has_ffn(layer)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()
        if self.has_mlp:
            self.ln2 = LayerNorm(cfg) if norm else nn.Identity()
            self.mlp = MLP(cfg)
        # Every block has these hooks, as in TransformerLens models with an MLP per block: a
        # block without a feed-forward layer writes a zero ``hook_mlp_out`` (fired only when
        # something is hooked), so TransformerLens tools that read every block's MLP output
        # (``patching.get_act_patch_block_every``, ``decompose_resid``) work unchanged.
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"], W_rel: Tensor | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid), W_rel))
        if self.has_mlp:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        elif any(h._forward_hooks or h._backward_hooks for h in self._mlp_hooks()):
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(torch.zeros_like(resid))
        return self.hook_resid_post(resid)

    def _mlp_hooks(self) -> tuple[HookPoint, HookPoint]:
        return self.hook_resid_mid, self.hook_mlp_out

    def add_mlp(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """``resid`` plus the feed-forward block's output (unchanged without one); no hooks."""
        return resid + self.mlp(self.ln2(resid)) if self.has_mlp else resid

    @property
    def supports_incremental(self) -> bool:
        """Whether :meth:`forward_incremental` applies (no position term in attention)."""
        return self.attn.position is None and self.attn.cfg.length_scale_len is None

    def forward_incremental(
        self,
        cached: Mapping[str, Tensor],
        new: Float[Tensor, "copies batch d_model"],
        pos: Int[Tensor, " copies"],
    ) -> Float[Tensor, "copies_batch pos d_model"]:
        """``resid_post`` of this block when only row ``pos[c]`` of its input changed (to
        ``new[c]``), for every copy ``c``: the activation patching fast path.

        ``cached`` maps the names of :data:`INCREMENTAL_HOOKS` (relative to ``blocks.{l}.``) to
        the unchanged run's activations. The attention output comes from
        :meth:`Attention.incremental_output`; the feed-forward block runs as in the forward pass
        (no hooks fire). Returns ``[copies * batch, pos, d_model]``.
        """
        attn_cache = {
            name.removeprefix("attn.hook_"): cached[name]
            for name in INCREMENTAL_HOOKS
            if name.startswith("attn.")
        }
        out = self.attn.incremental_output(attn_cache, self.ln1(new), pos)
        C, n, P = out.shape[:3]
        resid = cached["hook_resid_pre"][None].repeat(C, 1, 1, 1)
        resid[torch.arange(C, device=new.device), :, pos] = new
        return self.add_mlp((resid + out).reshape(C * n, P, -1))


#: Hooks (relative to ``blocks.{l}.``) whose cached values
#: :meth:`TransformerBlock.forward_incremental` reads.
INCREMENTAL_HOOKS = (
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
)


class Unembed(nn.Module):
    def __init__(self, cfg: AssocConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab, dtype=cfg.dtype))
        self.hook_out = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.hook_out(x @ self.W_U)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


def _is_text(input: Any) -> bool:
    return isinstance(input, str) or (
        isinstance(input, list) and bool(input) and all(isinstance(t, str) for t in input)
    )


def possible_parameter_names(cfg: AssocConfig) -> list[str]:
    """Every parameter name a model of this shape could have, whatever its positional encoding
    (used to check ``frozen``/``zero_init`` patterns)."""
    names = [
        "embed.W_E",
        "pos_embed.W_pos",
        "rel_embed.W_rel",
        "unembed.W_U",
        "ln_final.w",
        "ln_final.b",
    ]
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}"
        names += [f"{p}.attn.{w}" for w in ("W_Q", "W_K", "W_V", "W_O", "b_rel")]
        names += [f"{p}.mlp.{w}" for w in ("W_in", "b_in", "W_out", "b_out")]
        names += [f"{p}.{ln}.{w}" for ln in ("ln1", "ln2") for w in ("w", "b")]
    return names


class AssocTransformer(TLSurface, HookedRootModule):
    """A two- or three-layer transformer of the associative-memory papers, hookable like any
    TransformerLens model.

    Args:
        cfg: The configuration (see :mod:`tlassoc.presets` for the papers' models).
        tokenizer: Tokenizer for strings; defaults to Tiny Shakespeare characters when
            ``cfg.d_vocab == 65``.

    Example:
        >>> from tlassoc import AssocConfig, AssocTransformer
        >>> model = AssocTransformer(AssocConfig(d_model=32, n_ctx=16))
        >>> model(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 65])
    """

    def __init__(self, cfg: AssocConfig, tokenizer: CharTokenizer | WordTokenizer | None = None):
        super().__init__()
        if not isinstance(cfg, AssocConfig):
            raise ValueError(f"cfg=<{type(cfg).__name__}>; expected an AssocConfig")
        self.cfg = cfg
        if tokenizer is None and cfg.d_vocab == 65:
            tokenizer = CharTokenizer.tiny_shakespeare()
        if tokenizer is not None and len(tokenizer) != cfg.d_vocab:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but cfg.d_vocab={cfg.d_vocab}")
        self.tokenizer = tokenizer

        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        if cfg.positional_embedding_type == "standard":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()
        if cfg.positional_embedding_type == "relative" and cfg.relative_form == "vector":
            self.rel_embed = RelEmbed(cfg)
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        if cfg.normalization_type == "LN":
            self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)

        self._check_patterns()
        self.init_weights()
        self.to(cfg.device)
        self.setup()

    # --- construction --------------------------------------------------------------------------
    def _check_patterns(self) -> None:
        possible = possible_parameter_names(self.cfg)
        for field in ("frozen", "zero_init"):
            for pattern in getattr(self.cfg, field):
                if not any(fnmatch.fnmatchcase(n, pattern) for n in possible):
                    raise ValueError(
                        f"{field} pattern {pattern!r} matches no parameter; parameters are named "
                        f"like {possible[:4]} and 'blocks.0.attn.W_K'"
                    )

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise from ``cfg.seed``: Gaussian weights with std ``cfg.init_std`` (LayerNorm
        weights 1, biases 0, ``zero_init`` patterns 0), then apply ``frozen``.

        The draw happens on the CPU with a private generator, so the same seed gives the same
        bits on every device and whatever the global RNG state.
        """
        gen = torch.Generator().manual_seed(self.cfg.seed if self.cfg.seed is not None else 0)
        if self.cfg.seed is None:
            gen.seed()
        for name, param in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if self.cfg.matches(self.cfg.zero_init, name) or leaf in ("b", "b_in", "b_out"):
                value = torch.zeros(param.shape, dtype=param.dtype)
            elif leaf == "w":
                value = torch.ones(param.shape, dtype=param.dtype)
            elif leaf == "b_rel":
                value = torch.zeros(param.shape, dtype=param.dtype)
            else:
                value = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                value = (value * self.cfg.init_std).to(param.dtype)
            param.copy_(value.to(param.device))
            param.requires_grad_(not self.cfg.matches(self.cfg.frozen, name))

    # --- input handling -----------------------------------------------------------------------
    def _validate_tokens(self, tokens: Any) -> Int[Tensor, "batch pos"]:
        if not isinstance(tokens, Tensor):
            raise ValueError(
                f"expected a tensor of token ids or a string, got {type(tokens).__name__}"
            )
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"token tensor has dtype {tokens.dtype}; expected an integer dtype")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(
                f"token tensor has shape {tuple(tokens.shape)}; expected [batch, pos] or [pos]"
            )
        if tokens.shape[1] == 0:
            raise ValueError("token tensor has no positions; expected at least one token")
        if tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0:
                raise ValueError(f"token id {lo} < 0; expected ids in [0, {self.cfg.d_vocab})")
            if hi >= self.cfg.d_vocab:
                raise ValueError(f"token id {hi} >= d_vocab {self.cfg.d_vocab}")
        if self.cfg.positional_embedding_type == "standard" and tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence length {tokens.shape[1]} > n_ctx {self.cfg.n_ctx}: absolute positions "
                "only exist up to n_ctx (relative or no positions have no such limit)"
            )
        check_attention_memory(self.cfg, tokens.shape[0], tokens.shape[1])
        return tokens.to(device=self.W_E.device, dtype=torch.long)

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"] | str | list[str],
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        loss_per_token: bool = False,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
    ) -> Any:
        """Run the model.

        Args:
            input: Token ids ``[batch, pos]`` (or ``[pos]``), or text (through the tokenizer);
                with ``start_at_layer``, the residual stream ``[batch, pos, d_model]``.
            return_type: ``"logits"``, ``"loss"`` (mean next-token cross-entropy), ``"both"``
                (``(logits, loss)``) or ``None``.
            loss_per_token: Return the loss per position ``[batch, pos - 1]``.
            stop_at_layer: Return the residual stream before this block (as TransformerLens).
            start_at_layer: Start from the residual stream before this block (as
                TransformerLens; ``n_layers`` runs only ``ln_final`` and the unembedding). There
                are no tokens then, so ``return_type`` must be ``"logits"`` or ``None``.

        Returns:
            Logits ``[batch, pos, d_vocab]``, the loss, both, or ``None``.

        Example:
            >>> model = AssocTransformer(AssocConfig(d_model=16, n_ctx=8))
            >>> toks = torch.tensor([[1, 2, 3]])
            >>> torch.equal(model(model(toks, stop_at_layer=1), start_at_layer=1), model(toks))
            True
        """
        if start_at_layer is None:
            tokens = self._validate_tokens(self.to_tokens(input) if _is_text(input) else input)
            resid = self.hook_embed(self.embed(tokens))
            if hasattr(self, "pos_embed"):
                resid = resid + self.hook_pos_embed(self.pos_embed(tokens))
        else:
            tokens, resid = None, self._validate_resid(input, start_at_layer, return_type)
        W_rel = self.rel_embed.W_rel if hasattr(self, "rel_embed") else None
        for block in self.blocks[start_at_layer:stop_at_layer]:
            resid = block(resid, W_rel)
        if stop_at_layer is not None:
            return resid
        if hasattr(self, "ln_final"):
            resid = self.ln_final(resid)
        logits = self.unembed(resid)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss_fn(logits, tokens, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(f"return_type={return_type!r}; expected 'logits', 'loss', 'both' or None")

    def _validate_resid(self, resid: Any, start_at_layer: Any, return_type: Any) -> Tensor:
        if isinstance(start_at_layer, bool) or not isinstance(start_at_layer, int):
            raise ValueError(f"start_at_layer={start_at_layer!r}; expected an integer layer")
        if not 0 <= start_at_layer <= self.cfg.n_layers:
            raise ValueError(
                f"start_at_layer={start_at_layer}; expected 0 <= start_at_layer <= "
                f"n_layers={self.cfg.n_layers}"
            )
        if return_type not in ("logits", None):
            raise ValueError(
                f"return_type={return_type!r} with start_at_layer; expected 'logits' or None "
                "(a residual input has no tokens to score)"
            )
        if not isinstance(resid, Tensor) or resid.ndim != 3 or resid.shape[-1] != self.cfg.d_model:
            shape = tuple(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__
            raise ValueError(
                f"input={shape} with start_at_layer; expected a residual stream "
                f"[batch, pos, d_model={self.cfg.d_model}]"
            )
        return resid

    @staticmethod
    def loss_fn(
        logits: Float[Tensor, "batch pos d_vocab"],
        tokens: Int[Tensor, "batch pos"],
        per_token: bool = False,
    ) -> Tensor:
        """Next-token cross-entropy of ``logits`` on ``tokens`` (mean, or ``[batch, pos - 1]``)."""
        logprobs = logits[:, :-1].log_softmax(-1)
        nll = -logprobs.gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]
        return nll if per_token else nll.mean()

    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> tuple[Any, ActivationCache]:
        """Run and cache every hook (or ``names_filter``), returning an ``ActivationCache``.

        Example:
            >>> model = AssocTransformer(AssocConfig(d_model=16, n_ctx=8))
            >>> _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
            >>> cache["blocks.0.attn.hook_pattern"].shape
            torch.Size([1, 1, 3, 3])
        """
        remove_batch_dim = kwargs.get("remove_batch_dim", False)
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    # --- tokenizer helpers ----------------------------------------------------------------------
    def _require_tokenizer(self) -> CharTokenizer | WordTokenizer:
        if self.tokenizer is None:
            raise ValueError(
                f"this model has no tokenizer (d_vocab={self.cfg.d_vocab}); pass token tensors "
                "or build it with AssocTransformer(cfg, tokenizer=...)"
            )
        return self.tokenizer

    def to_tokens(
        self,
        input: str | list[str],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Int[Tensor, "batch pos"]:
        """Token ids ``[batch, pos]`` of a string or of equal-length strings.

        The character vocabulary has no BOS token, so ``prepend_bos=True`` is refused.

        Example:
            >>> AssocTransformer(AssocConfig(d_model=16)).to_tokens("ab")
            tensor([[39, 40]])
        """
        tok = self._require_tokenizer()
        if prepend_bos:
            raise ValueError("prepend_bos=True: this vocabulary has no BOS token")
        if not isinstance(input, (str, list, tuple)) or not all(isinstance(t, str) for t in input):
            raise TypeError(f"input={input!r}; expected a string or a list of strings")
        texts = [input] if isinstance(input, str) else list(input)
        if not texts:
            raise ValueError("to_tokens got an empty list; expected at least one string")
        ids = [tok.encode(t) for t in texts]
        lengths = sorted({len(i) for i in ids})
        if len(lengths) > 1:
            raise ValueError(
                f"strings have different token lengths {lengths}; this tokenizer does not pad, "
                "pass strings of equal length"
            )
        if lengths[0] == 0:
            raise ValueError("cannot tokenize an empty string")
        tokens = torch.tensor(ids, dtype=torch.long)
        if truncate and self.cfg.positional_embedding_type == "standard":
            if tokens.shape[1] > self.cfg.n_ctx:
                warnings.warn(
                    f"input has {tokens.shape[1]} tokens, more than n_ctx={self.cfg.n_ctx}; "
                    f"absolute positions stop there, so only the first {self.cfg.n_ctx} are kept",
                    stacklevel=2,
                )
            tokens = tokens[:, : self.cfg.n_ctx]
        return tokens.to(self.cfg.device) if move_to_device else tokens

    def to_str_tokens(
        self, input: str | Int[Tensor, "pos"] | Int[Tensor, "1 pos"] | list[int], **_: Any
    ) -> list[str]:
        """One string per token (as TransformerLens's ``to_str_tokens``).

        Example:
            >>> AssocTransformer(AssocConfig(d_model=16)).to_str_tokens("hi!")
            ['h', 'i', '!']
        """
        tok = self._require_tokenizer()
        if isinstance(input, str):
            return tok.tokenize(input)
        ids = torch.as_tensor(input)
        if ids.ndim == 2:
            if ids.shape[0] != 1:
                raise ValueError(f"to_str_tokens takes one sequence, got shape {tuple(ids.shape)}")
            ids = ids[0]
        return tok.id_to_str(ids.tolist())

    def to_string(self, tokens: Int[Tensor, "... pos"]) -> str | list[str]:
        """Decode ``[pos]`` to a string or ``[batch, pos]`` to a list of strings."""
        tok = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 1:
            return tok.decode(tokens.tolist())
        return [tok.decode(row.tolist()) for row in tokens]

    @torch.no_grad()
    def generate(
        self,
        input: str | Int[Tensor, "batch pos"],
        max_new_tokens: int = 10,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        verbose: bool = False,
    ) -> str | list[str] | Int[Tensor, "batch new_pos"]:
        """Greedy or sampled continuation (strings in, strings out; tensors in, tensors out).

        Args:
            input: Prompt text or token ids.
            max_new_tokens: Number of tokens to add.
            do_sample: Sample from ``softmax(logits / temperature)`` instead of the argmax.
            temperature: Sampling temperature (> 0).
            top_k: Sample only among the ``top_k`` most likely tokens.
            seed: Seed of the sampling generator (same seed, same text).
            verbose: Unused; kept for TransformerLens's signature.

        Example:
            >>> model = AssocTransformer(AssocConfig(d_model=16, n_ctx=32))
            >>> len(model.generate("ab", max_new_tokens=3))
            5
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}; expected an integer >= 0")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature={temperature!r}; expected > 0")
        is_text = isinstance(input, str)
        tokens = self.to_tokens(input) if is_text else self._validate_tokens(input)
        gen = torch.Generator(device=tokens.device)
        if seed is not None:
            gen.manual_seed(seed)
        else:
            gen.seed()
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                logits = self(tokens)[:, -1]
                if do_sample:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen)
                else:
                    nxt = logits.argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, nxt], dim=1)
        finally:
            self.train(was_training)
        if is_text:
            return self.to_string(tokens[0])  # type: ignore[return-value]
        return tokens

    # --- weights as TransformerLens exposes them --------------------------------------------
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        if not hasattr(self, "pos_embed"):
            raise AttributeError(
                f"W_pos: positional_embedding_type={self.cfg.positional_embedding_type!r} has no "
                "absolute positions"
            )
        return self.pos_embed.W_pos

    @property
    def W_rel(self) -> Float[Tensor, "max_rel d_model"]:
        if not hasattr(self, "rel_embed"):
            raise AttributeError(
                "W_rel: this model has no relative position vectors (needs "
                "positional_embedding_type='relative' and relative_form='vector')"
            )
        return self.rel_embed.W_rel

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    def _stack(self, get: Any) -> Tensor:
        return torch.stack([get(block.attn) for block in self.blocks], dim=0)

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack(lambda a: a.query_weight())

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack(lambda a: a.W_K)

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack(lambda a: a.W_V)

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return self._stack(lambda a: a.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q W_K^T`` per layer and head: a ``FactoredMatrix`` ``[n_layers, n_heads, d, d]``."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V W_O`` per layer and head, as a ``FactoredMatrix`` ``[n_layers, n_heads, d, d]``."""
        return FactoredMatrix(self.W_V, self.W_O)

    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters that are not frozen."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path/model.safetensors`` and ``path/config.json`` (each atomically).

        ``config.json`` records the sha256 of the weights file, so a weights file that does not
        belong to its config (half-written, swapped or edited) is refused by :meth:`load`.

        Example:
            >>> import tempfile
            >>> model = AssocTransformer(AssocConfig(d_model=16))
            >>> folder = model.save(tempfile.mkdtemp())
            >>> sorted(p.name for p in folder.iterdir())
            ['config.json', 'model.safetensors']
        """
        from safetensors.torch import save as st_save

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        payload = st_save(state, metadata={"format": "tlassoc", "version": str(FORMAT_VERSION)})
        meta = {
            "format": "tlassoc",
            "format_version": FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
            "frozen_parameters": [n for n, p in self.named_parameters() if not p.requires_grad],
            "weights_sha256": hashlib.sha256(payload).hexdigest(),
        }
        atomic_write_bytes(folder / WEIGHTS_FILE, payload)
        atomic_write_bytes(folder / CONFIG_FILE, json.dumps(meta, indent=2).encode())
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None) -> AssocTransformer:
        """Load a checkpoint written by :meth:`save`; pickles and tampered files are refused.

        ``path`` may also be a training run's folder (``train(..., out_dir=path)``: its latest
        checkpoint is loaded) or an experiment's output folder holding one model under
        ``models/`` (with several, the error lists them).

        Example:
            >>> import tempfile
            >>> model = AssocTransformer(AssocConfig(d_model=16))
            >>> AssocTransformer.load(model.save(tempfile.mkdtemp())).cfg.d_model
            16
        """
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load

        folder = resolve_model_folder(path, CheckpointError)
        weights_path, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
        for p in (weights_path, config_path):
            if not p.is_file():
                raise CheckpointError(f"checkpoint file {p} is missing")
        raw = weights_path.read_bytes()
        if raw[:1] == b"\x80" or raw[:2] == b"PK":
            raise CheckpointError(
                f"{weights_path} looks like a pickle/torch.save file; tlassoc loads only "
                "safetensors and never unpickles"
            )
        try:
            meta = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{config_path} is not valid JSON: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != "tlassoc":
            raise CheckpointError(f"{config_path} is not a tlassoc checkpoint config")
        digest = hashlib.sha256(raw).hexdigest()
        if digest != meta.get("weights_sha256"):
            raise CheckpointError(
                f"{weights_path} has sha256 {digest[:12]}…, but {config_path.name} expects "
                f"{str(meta.get('weights_sha256'))[:12]}…: the weights were modified or do not "
                "belong to this config"
            )
        try:
            state = st_load(raw)
        except (SafetensorError, Exception) as err:  # noqa: B014 - report any parse failure
            raise CheckpointError(
                f"{weights_path} is not a valid safetensors file: {err}"
            ) from None
        model = cls._from_meta(meta, config_path, device)
        expected = model.state_dict()
        if set(state) != set(expected):
            raise CheckpointError(
                f"{weights_path} holds tensors {sorted(set(state) ^ set(expected))[:5]} that do "
                "not match the config"
            )
        for name, want in expected.items():  # the model's order: the same error every time
            tensor = state[name]
            if tensor.shape != want.shape or tensor.dtype != want.dtype:
                raise CheckpointError(
                    f"{weights_path}: {name} is {tensor.dtype} {tuple(tensor.shape)}; expected "
                    f"{want.dtype} {tuple(want.shape)} from {config_path.name}"
                )
        model.load_state_dict(state)
        frozen = set(meta.get("frozen_parameters", []))
        for name, param in model.named_parameters():
            param.requires_grad_(name not in frozen)
        return model

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], config_path: Path, device: str | None) -> Any:
        """The (untrained) model a checkpoint's ``config.json`` describes."""
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(
                f"{config_path} has no 'config' object; expected the model settings that "
                "AssocTransformer.save writes"
            )
        cfg_dict = dict(meta["config"])
        if device is not None:
            cfg_dict["device"] = device
        try:
            cfg = AssocConfig.from_dict(cfg_dict)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{config_path}: {err}") from None
        tok = None
        if meta.get("tokenizer"):
            try:
                tok = tokenizer_from_dict(meta["tokenizer"])
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(
                    f"{config_path}: 'tokenizer' is unreadable ({err!r}); expected an object with "
                    "'type' and 'vocab'"
                ) from None
        try:
            return cls(cfg, tokenizer=tok)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{config_path}: {err}") from None

    # --- TransformerLens's own model ------------------------------------------------------------
    def to_transformer_lens(self) -> Any:
        """The same model as TransformerLens's own object: a ``HookedTransformer`` on
        TransformerLens 3.x, a ``TransformerBridge`` on 4.x. Same logits.

        Only configurations TransformerLens can express are converted: absolute or no positions
        (``"none"`` becomes zero absolute positions) and standard attention. A linear
        feed-forward layer ``h W_out`` is written exactly as ``relu(h) W_out - relu(-h) W_out``.

        Example:
            >>> from tlassoc import presets
            >>> tl_model = AssocTransformer(presets.ape(d_model=32, n_ctx=16)).to_transformer_lens()
        """
        from tlassoc.convert import to_transformer_lens

        return to_transformer_lens(self)
