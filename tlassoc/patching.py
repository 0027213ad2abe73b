"""Activation patching, path patching and ablations of previous-token and induction heads.

Patched runs are **batched**: for ``P`` patches of a batch of ``n`` prompts, the base input is
repeated ``P`` times and one hook per layer writes the source activation into copy ``i`` at
(head ``i``, position ``i``), so a chunk of ``batch_size`` patches costs one forward pass instead
of ``batch_size``. Head-output patches (``z``/``result``) of an AssocTransformer also reuse the
unpatched run's cache: nothing below the patched layer is recomputed, a per-position patch at
the last layer recomputes one row of logits, and one at an earlier layer updates the next
block incrementally (see :func:`_run_output_patches`). The numbers equal
``transformer_lens.patching``'s one-run-per-patch loop (the tests check max abs difference
<= 1e-5). Works on AssocTransformer, ``HookedTransformer`` (3.x) and ``TransformerBridge``
(4.x); call ``model.eval()`` first.

Directions, both normalised to ``[0, 1]`` between corrupted and clean (``m`` = metric):

* ``"denoise"``: run the corrupted prompt, patch in the clean activation;
  ``effect = (m_patched - m_corrupted) / (m_clean - m_corrupted)`` (is the component
  *sufficient* to restore the behaviour?).
* ``"noise"``: run the clean prompt, patch in the corrupted activation;
  ``effect = (m_clean - m_patched) / (m_clean - m_corrupted)`` (is it *necessary*?).

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64)).eval()
    >>> prompts = induction_prompts(model, repeat_len=8, n_samples=2)
    >>> result = patch_heads(model, prompts, act="z")
    >>> result.normalized.shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc.heads import _check_tokens, _device, _special_ids, bos_token_id, model_kind

__all__ = [
    "ACTIVATIONS",
    "InductionPrompts",
    "PatchingResult",
    "ablate_heads",
    "ablation_effects",
    "induction_logprob_metric",
    "induction_prompts",
    "patch_heads",
    "path_patch_keys",
]

#: Activations :func:`patch_heads` can patch, with their hook inside ``blocks.{l}``.
ACTIVATIONS: dict[str, str] = {
    "z": "attn.hook_z",
    "result": "attn.hook_result",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "pattern": "attn.hook_pattern",
}

Metric = Callable[[Tensor], Tensor]


# ------------------------------------------------------------------------------------------------
# Prompts and metric
# ------------------------------------------------------------------------------------------------


@dataclass
class InductionPrompts:
    """Clean and corrupted prompts for induction.

    Attributes:
        clean: ``[batch, pos]``: ``offset`` BOS tokens, a random block ``r``, then ``r`` again.
        corrupted: the same with one block replaced by fresh tokens that share none of ``r``'s
            tokens (``corrupt="first"``: the first block, so the second block and every target
            stay the same; ``"second"``: the second block).
        repeat_len: Block length ``L``.
        offset: 1 with a BOS, else 0.
        corrupt: Which block was replaced.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    repeat_len: int
    offset: int
    corrupt: str = "first"

    @property
    def positions(self) -> Int[Tensor, " n_positions"]:
        """Query positions whose next clean token is predictable by induction: every position
        of the second block except its last, ``[offset + L, offset + 2L - 2]``."""
        start = self.offset + self.repeat_len
        return torch.arange(start, start + self.repeat_len - 1, device=self.clean.device)

    @property
    def first_block(self) -> Int[Tensor, " L"]:
        """Positions of the first block."""
        return torch.arange(self.offset, self.offset + self.repeat_len, device=self.clean.device)

    @property
    def second_block(self) -> Int[Tensor, " L"]:
        """Positions of the second block."""
        start = self.offset + self.repeat_len
        return torch.arange(start, start + self.repeat_len, device=self.clean.device)


def induction_prompts(
    model: Any,
    repeat_len: int = 20,
    n_samples: int = 8,
    *,
    seed: int = 0,
    corrupt: Literal["first", "second"] = "first",
    prepend_bos: bool | None = None,
) -> InductionPrompts:
    """Build clean (block repeated) and corrupted (repeat broken) induction prompts.

    Each sequence draws ``2 * repeat_len`` distinct tokens (non-special ids of the model's
    vocabulary): the first ``repeat_len`` form ``r`` (clean = ``r r``), the rest replace one block
    in the corrupted prompt, so the corrupted prompt contains no repeat at all.

    Args:
        model: The model (vocabulary, BOS and device).
        repeat_len: Block length ``L``.
        n_samples: Number of prompts.
        seed: Seed (same seed, same prompts).
        corrupt: ``"first"`` (default) or ``"second"`` block replaced.
        prepend_bos: Put the model's BOS first; default as TransformerLens would.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> p = induction_prompts(AssocTransformer(presets.rpe(d_model=16)), repeat_len=4)
        >>> bool((p.clean[:, :4] == p.clean[:, 4:]).all())
        True
        >>> bool((p.corrupted[:, 4:] == p.clean[:, 4:]).all())
        True
    """
    if corrupt not in ("first", "second"):
        raise ValueError(f"corrupt={corrupt!r}; expected 'first' or 'second'")
    if repeat_len < 2:
        raise ValueError(f"repeat_len={repeat_len}; expected >= 2")
    special = _special_ids(model)
    pool = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])
    if len(pool) < 2 * repeat_len:
        raise ValueError(
            f"repeat_len {repeat_len} needs {2 * repeat_len} distinct tokens; the vocabulary "
            f"offers {len(pool)}"
        )
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(n_samples, len(pool), generator=gen).argsort(-1)[:, : 2 * repeat_len]
    block, fresh = pool[order[:, :repeat_len]], pool[order[:, repeat_len:]]
    clean = torch.cat([block, block], dim=1)
    corrupted = torch.cat([fresh, block] if corrupt == "first" else [block, fresh], dim=1)
    bos = bos_token_id(model)
    use_bos = (bos is not None) if prepend_bos is None else prepend_bos
    if use_bos:
        if bos is None:
            raise ValueError("prepend_bos=True but the model has no BOS token")
        col = torch.full((n_samples, 1), bos)
        clean, corrupted = torch.cat([col, clean], 1), torch.cat([col, corrupted], 1)
    device = _device(model)
    return InductionPrompts(
        clean.to(device), corrupted.to(device), repeat_len, int(use_bos), corrupt
    )


def induction_logprob_metric(prompts: InductionPrompts) -> Metric:
    """Per-prompt metric: mean log-probability of the clean next token over
    :attr:`InductionPrompts.positions` (``logits [batch, pos, vocab] -> [batch]``).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16))
        >>> p = induction_prompts(model, repeat_len=4, n_samples=3)
        >>> induction_logprob_metric(p)(model(p.clean)).shape
        torch.Size([3])
    """
    pos = prompts.positions
    targets = prompts.clean[:, pos + 1]

    def metric(logits: Tensor) -> Tensor:
        logp = logits[:, pos].float().log_softmax(-1)
        reps = logits.shape[0] // targets.shape[0]
        tgt = targets.to(logits.device).repeat(reps, 1)
        return logp.gather(-1, tgt[..., None])[..., 0].mean(-1)

    return metric


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass
class PatchingResult:
    """Patched metric values and their normalised effect.

    Attributes:
        values: Metric of each patched run (mean over prompts); shape ``[n_layers, n_heads]``,
            ``[n_layers, pos, n_heads]`` (per position) or as documented by the producer.
        clean_value: Metric of the clean run.
        corrupted_value: Metric of the corrupted run.
        direction: ``"denoise"`` or ``"noise"``.
        act: What was patched.
        axis_names: Names of the axes of ``values``.
    """

    values: Tensor
    clean_value: float
    corrupted_value: float
    direction: str
    act: str
    axis_names: list[str] = field(default_factory=list)

    @property
    def normalized(self) -> Tensor:
        """Effect in ``[0, 1]``-units: 0 = as the unpatched base run, 1 = fully switched to the
        other run (see the module docstring for the two directions)."""
        gap = self.clean_value - self.corrupted_value
        if abs(gap) < 1e-12:
            raise ValueError("clean and corrupted metrics are equal; nothing to normalise by")
        if self.direction == "denoise":
            return (self.values - self.corrupted_value) / gap
        return (self.clean_value - self.values) / gap

    def to_frame(self) -> pd.DataFrame:
        """One row per patch: its indices, ``value`` and ``normalized``.

        Example:
            >>> r = PatchingResult(torch.tensor([[0.5]]), 1.0, 0.0, "denoise", "z",
            ...                    ["layer", "head"])
            >>> r.to_frame().to_dict("records")
            [{'layer': 0, 'head': 0, 'value': 0.5, 'normalized': 0.5}]
        """
        idx = torch.cartesian_prod(*[torch.arange(n) for n in self.values.shape])
        if idx.ndim == 1:
            idx = idx[:, None]
        data = {name: idx[:, i].tolist() for i, name in enumerate(self.axis_names)}
        data["value"] = self.values.flatten().tolist()
        data["normalized"] = self.normalized.flatten().tolist()
        return pd.DataFrame(data)


# ------------------------------------------------------------------------------------------------
# The batched engine
# ------------------------------------------------------------------------------------------------


def _default_batch_size(model: Any, n_prompts: int, n_pos: int) -> int:
    width = model.cfg.d_vocab + 16 * model.cfg.d_model
    return max(1, int(2**26 // max(1, n_prompts * n_pos * width)))


def _chunks(n: int, size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _progress(iterable: Any, total: int, progress: bool, desc: str) -> Any:
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


@torch.no_grad()
def _evaluate(model: Any, tokens: Tensor, metric: Metric, hooks: list) -> Tensor:
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks) if hooks else model(tokens)
    return _check_metric(metric(logits), tokens.shape[0])


def _check_metric(values: Any, batch: int) -> Tensor:
    values = torch.as_tensor(values)
    if values.ndim != 1 or values.shape[0] != batch:
        raise ValueError(
            f"metric must return one value per prompt ([batch={batch}]), got shape "
            f"{tuple(values.shape)}"
        )
    return values.float()


def _run_patches(
    model: Any,
    base: Tensor,
    source: dict[str, Tensor],
    act: str,
    patches: Tensor,
    metric: Metric,
    batch_size: int | None,
    progress: bool,
) -> Tensor:
    """Metric (mean over prompts) of each patch ``(layer, head, pos)`` (``pos = -1``: all).

    Copy ``i`` of the repeated base batch gets ``source[layer_i]`` written at (head_i, pos_i).
    Head outputs of an AssocTransformer take :func:`_run_output_patches` (no recomputation of
    the layers below the patch); everything else runs the whole model with one hook per layer.
    """
    if _fast_output_patching(model, act):
        return _run_output_patches(model, base, source, act, patches, metric, batch_size, progress)
    n, n_pos = base.shape
    size = batch_size or _default_batch_size(model, n, n_pos)
    out = torch.empty(len(patches))
    hook_suffix = ACTIVATIONS[act]
    steps = list(_chunks(len(patches), size))
    for start, stop in _progress(steps, len(steps), progress, f"patching {act}"):
        chunk = patches[start:stop]
        B = len(chunk)
        hooks = []
        for layer in chunk[:, 0].unique().tolist():
            name = f"blocks.{layer}.{hook_suffix}"
            src = source[name]
            rows = (chunk[:, 0] == layer).nonzero()[:, 0]
            hooks.append((name, _make_patch_hook(act, src, chunk[rows], rows, B, n)))
        values = _evaluate(model, base.repeat(B, 1), metric, hooks)
        out[start:stop] = values.reshape(B, n).mean(1).cpu()
    return out


def _fast_output_patching(model: Any, act: str) -> bool:
    """Whether head-output patches can start from the base run's cache (AssocTransformer)."""
    return act in ("z", "result") and model_kind(model) == "assoc"


@torch.no_grad()
def _run_output_patches(
    model: Any,
    base: Tensor,
    source: dict[str, Tensor],
    act: str,
    patches: Tensor,
    metric: Metric,
    batch_size: int | None,
    progress: bool,
) -> Tensor:
    """Head-output patches on an AssocTransformer, resuming from the base run's cache.

    A patch of ``z`` (or ``result``) at layer ``l`` changes nothing below layer ``l``'s attention
    output, so the base run is cached once and each patched copy starts there. All-position
    patches recompute layer ``l``'s output projection from the cached ``z`` (head replaced), then
    the later blocks, ``ln_final`` and the unembedding. A patch at one position ``p`` changes
    only row ``p`` of the residual stream after layer ``l``, so it is cheaper still:

    * at the last layer, only row ``p`` of the logits is recomputed (the rest are the base run's);
    * otherwise the next block is updated incrementally (:func:`_next_block_incremental`: only
      key/value/query ``p`` change, so each later query ``t`` sees one changed score), then the
      remaining blocks, ``ln_final`` and the unembedding run in full.

    Patches are grouped by layer, so every batch of copies starts at one layer.
    """
    n, n_pos = base.shape
    size = batch_size or _default_batch_size(model, n, n_pos)
    hook_suffix = ACTIVATIONS[act]
    n_layers = model.cfg.n_layers
    layers = sorted(set(patches[:, 0].tolist()))
    per_position = bool((patches[:, 2] >= 0).all())
    names = set()
    for ly in layers:
        names |= {f"blocks.{ly}.{hook_suffix}", f"blocks.{ly}.hook_resid_pre"}
        if per_position and _incremental_ok(model, ly + 1):
            names |= {f"blocks.{ly + 1}.{h}" for h in _NEXT_BLOCK_HOOKS}
    base_logits, cache = model.run_with_cache(base, names_filter=lambda name: name in names)
    W_rel = model.rel_embed.W_rel if hasattr(model, "rel_embed") else None
    out = torch.empty(len(patches))
    steps = []
    for layer in layers:
        rows = (patches[:, 0] == layer).nonzero()[:, 0]
        steps += [(layer, rows[a:b]) for a, b in _chunks(len(rows), size)]
    for layer, rows in _progress(steps, len(steps), progress, f"patching {act}"):
        chunk = patches[rows].to(base.device)
        B = len(chunk)
        block = model.blocks[layer]
        act_base = cache[f"blocks.{layer}.{hook_suffix}"]  # [n, pos, head, d]
        src = source[f"blocks.{layer}.{hook_suffix}"].to(act_base.dtype)
        resid_pre = cache[f"blocks.{layer}.hook_resid_pre"]
        if per_position:
            pos = chunk[:, 2]
            # row p of the patched activation: the base row with one head from the source
            row = act_base[:, pos].transpose(0, 1).clone()  # [B, n, head, d]
            idx = torch.arange(B, device=row.device)
            row[idx, :, chunk[:, 1]] = src[:, pos, chunk[:, 1]].transpose(0, 1)
            attn_row = _project(block.attn, row.reshape(B * n, 1, *row.shape[2:]), act)
            new = resid_pre[:, pos].transpose(0, 1).reshape(B * n, 1, -1) + attn_row
            if block.has_mlp:
                new = new + block.mlp(block.ln2(new))
            new = new.reshape(B, n, -1)  # resid_post of layer l at row p; other rows unchanged
            if layer == n_layers - 1:
                final = model.ln_final(new) if hasattr(model, "ln_final") else new
                logits = base_logits[None].repeat(B, 1, 1, 1)
                logits[idx, :, pos] = model.unembed(final)
                logits = logits.reshape(B * n, n_pos, -1)
            else:
                if _incremental_ok(model, layer + 1):
                    resid = _next_block_incremental(model, layer + 1, cache, new, pos)
                    start = layer + 2
                else:
                    resid = cache[f"blocks.{layer}.hook_resid_pre"]
                    resid = _resid_post(model, layer, cache, act, resid)[None].repeat(B, 1, 1, 1)
                    resid[idx, :, pos] = new
                    resid = resid.reshape(B * n, n_pos, -1)
                    start = layer + 1
                logits = _finish(model, resid, start, W_rel)
        else:
            mask = torch.zeros(B, act_base.shape[2], n_pos, dtype=torch.bool, device=base.device)
            _fill(mask, torch.arange(B), chunk[:, 1], chunk[:, 2])
            mask = mask.transpose(1, 2)[:, None, :, :, None]  # [B, 1, pos, head, 1]
            patched = torch.where(mask, src[None], act_base[None])
            attn_out = _project(block.attn, patched.reshape(B * n, *act_base.shape[1:]), act)
            resid = resid_pre.repeat(B, 1, 1) + attn_out
            if block.has_mlp:
                resid = resid + block.mlp(block.ln2(resid))
            logits = _finish(model, resid, layer + 1, W_rel)
        values = _check_metric(metric(logits), B * n)
        out[rows.cpu()] = values.reshape(B, n).mean(1).cpu()
    return out


#: Hooks of the block after a patched layer that :func:`_next_block_incremental` reads.
_NEXT_BLOCK_HOOKS = (
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
)


def _incremental_ok(model: Any, layer: int) -> bool:
    """Block ``layer`` exists and has no relative-position term (whose scores depend on the
    query through the distance, which the incremental update does not recompute)."""
    return layer < model.cfg.n_layers and not model.blocks[layer].attn.relative


def _project(attn: Any, x: Tensor, act: str) -> Tensor:
    """The attention output from ``z`` (or ``result``), computed as ``Attention.forward`` does."""
    if act == "result":
        return x.sum(dim=2)
    if attn.cfg.use_attn_result:
        return torch.einsum("bqhd,hdm->bqhm", x, attn.W_O).sum(dim=2)
    return torch.einsum("bqhd,hdm->bqm", x, attn.W_O)


def _resid_post(model: Any, layer: int, cache: Any, act: str, resid_pre: Tensor) -> Tensor:
    """Base ``resid_post`` of ``layer`` recomputed from the cache (``[n, pos, d_model]``)."""
    block = model.blocks[layer]
    resid = resid_pre + _project(block.attn, cache[f"blocks.{layer}.{ACTIVATIONS[act]}"], act)
    if block.has_mlp:
        resid = resid + block.mlp(block.ln2(resid))
    return resid


def _finish(model: Any, resid: Tensor, start: int, W_rel: Tensor | None) -> Tensor:
    """Run blocks ``start..`` , ``ln_final`` (if any) and the unembedding."""
    for later in model.blocks[start:]:
        resid = later(resid, W_rel)
    if hasattr(model, "ln_final"):
        resid = model.ln_final(resid)
    return model.unembed(resid)


def _next_block_incremental(
    model: Any, layer: int, cache: Any, new: Tensor, pos: Tensor
) -> Float[Tensor, "copies pos d_model"]:
    """``resid_post`` of block ``layer`` when only row ``pos[b]`` of its input changed.

    ``new [B, n, d_model]`` is the changed input row of copy ``b``. Only query, key and value
    ``p = pos[b]`` change, so: query rows ``t < p`` keep their base ``z``; row ``p`` is
    recomputed in full; for ``t > p`` only the score ``s'_tp = q_t . k'_p / sqrt(d_head)``
    changes, and ``z'_t = (1 - a) mu_tp + a v'_p`` with ``a = sigmoid(s'_tp - LSE_{s != p}
    S_ts)`` and ``mu_tp`` the base pattern's mean of the other values. The leave-one-out terms
    come from the cached base pattern (``(z_t - A_tp v_p) / (1 - A_tp)`` when ``A_tp <= 0.5``,
    else from the row with column ``p`` removed, precomputed once per row) in float64, so they
    do not lose precision when a query attends almost only to ``p``. ``O(pos * d)`` per copy
    instead of ``O(pos^2 * d)``; the output projection, feed-forward layer and everything after
    run as in the forward pass.
    """
    block = model.blocks[layer]
    attn = block.attn
    pre = f"blocks.{layer}."
    R = cache[pre + "hook_resid_pre"]  # [n, P, d_model]
    q, k, v = (cache[pre + f"attn.hook_{x}"] for x in "qkv")  # [n, P, H, d]
    S = cache[pre + "attn.hook_attn_scores"]  # [n, H, P, P], -inf above the diagonal
    A = cache[pre + "attn.hook_pattern"]
    z = cache[pre + "attn.hook_z"]  # [n, P, H, dv]
    B, n, _ = new.shape
    P, H = q.shape[1], q.shape[2]
    dev = new.device
    idx = torch.arange(B, device=dev)
    x = block.ln1(new)  # [B, n, d_model]
    if attn.cfg.identity_query:
        qn = x[:, :, None, :].repeat(1, 1, H, 1)
    else:
        qn = torch.einsum("bpm,hmd->bphd", x, attn.W_Q)
    kn = torch.einsum("bpm,hmd->bphd", x, attn.W_K)  # [B, n, H, d]
    vn = torch.einsum("bpm,hmd->bphd", x, attn.W_V)
    t = torch.arange(P, device=dev)

    # row p, recomputed in full (query, key and value p all changed)
    scores_p = torch.einsum("bnhd,nshd->bnhs", qn, k) / attn.scale  # [B, n, H, P]
    scores_p[idx, :, :, pos] = (qn * kn).sum(-1) / attn.scale
    scores_p = scores_p.masked_fill(t[None, None, None, :] > pos[:, None, None, None], -math.inf)
    A_p = torch.softmax(scores_p, dim=-1)
    v_p = v[:, pos].transpose(0, 1)  # [B, n, H, dv]
    a_pp = A_p[idx, :, :, pos][..., None]  # [B, n, H, 1]
    z_p = torch.einsum("bnhs,nshd->bnhd", A_p, v) + a_pp * (vn - v_p)

    # rows t > p: one changed score per row, z'_t = (1 - a) mu_tp + a v'_p, written through the
    # per-head output projection as c1 z_t + c_mu mu*_t + c_old v_p + c_new v'_p
    f64 = torch.float64
    s_new = (torch.einsum("nthd,bnhd->bnht", q, kn) / attn.scale).to(f64)  # [B, n, H, P]
    A64, S64 = A.to(f64), S.to(f64)
    a_col = A64.permute(3, 0, 1, 2)[pos]  # [B, n, H, P(t)]: A[t, p]
    safe = a_col.clamp(max=0.5)
    lse_loo = torch.logsumexp(S64, dim=-1)[None] + torch.log1p(-safe)
    star_p, star_lse, star_mu = _leave_argmax_out(A64, S64, v.to(f64))
    use_star = (star_p[None] == pos[:, None, None, None]) & (a_col > 0.5)
    lse_loo = torch.where(use_star, star_lse[None], lse_loo)
    alpha = torch.sigmoid(s_new - lse_loo)
    keep = (1 - alpha) / (1 - safe)
    zero = torch.zeros((), dtype=f64, device=dev)
    later = t[None, None, None, :] > pos[:, None, None, None]
    before = (t[None, None, None, :] < pos[:, None, None, None]).to(f64)
    c_z = torch.where(later, torch.where(use_star, zero, keep), before)
    c_mu = torch.where(later & use_star, 1 - alpha, zero)
    c_old = torch.where(later & ~use_star, -keep * a_col, zero)
    c_new = torch.where(later, alpha, zero)
    dt = z.dtype
    c_z, c_mu, c_old, c_new = (c.to(dt) for c in (c_z, c_mu, c_old, c_new))
    W_O = attn.W_O  # [H, dv, d_model]
    z_O = torch.einsum("nthd,hdm->nthm", z, W_O)
    mu_O = torch.einsum("nhtd,hdm->nthm", star_mu.to(dt), W_O)
    out = torch.einsum("bnht,nthm->bntm", c_z, z_O)
    out = out + torch.einsum("bnht,nthm->bntm", c_mu, mu_O)
    out = out + torch.einsum("bnht,bnhm->bntm", c_old, torch.einsum("bnhd,hdm->bnhm", v_p, W_O))
    out = out + torch.einsum("bnht,bnhm->bntm", c_new, torch.einsum("bnhd,hdm->bnhm", vn, W_O))
    out[idx, :, pos] += torch.einsum("bnhd,hdm->bnm", z_p, W_O)  # row p (its coefficients are 0)
    resid = R[None].repeat(B, 1, 1, 1)
    resid[idx, :, pos] = new
    resid = (resid + out).reshape(B * n, P, -1)
    if block.has_mlp:
        resid = resid + block.mlp(block.ln2(resid))
    return resid


def _leave_argmax_out(A: Tensor, S: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For every query row, its argmax key ``p*`` and the row's log-sum-exp and value mean
    without ``p*`` (``[n, H, P]``, ``[n, H, P]``, ``[n, H, P, dv]``; float64)."""
    star = A.argmax(-1)  # [n, H, P]
    masked = S.scatter(-1, star[..., None], -math.inf)
    lse = torch.logsumexp(masked, dim=-1)
    weights = torch.exp(masked - lse[..., None]).nan_to_num(0.0)
    mu = torch.einsum("nhts,nshd->nhtd", weights, v)
    return star, lse, mu


def _make_patch_hook(
    act: str, src: Tensor, chunk: Tensor, rows: Tensor, B: int, n: int
) -> Callable[..., Tensor]:
    def hook(activation: Tensor, hook: Any) -> Tensor:
        view = activation.reshape(B, n, *activation.shape[1:])
        if act == "pattern":  # [b, head, q, k]; patch query rows
            H, Q = activation.shape[1], activation.shape[2]
            mask = torch.zeros(B, H, Q, dtype=torch.bool, device=activation.device)
            _fill(mask, rows, chunk[:, 1], chunk[:, 2])
            new = torch.where(mask[:, None, :, :, None], src.to(view.dtype)[None], view)
        else:  # [b, pos, head, d]
            P, H = activation.shape[1], activation.shape[2]
            mask = torch.zeros(B, H, P, dtype=torch.bool, device=activation.device)
            _fill(mask, rows, chunk[:, 1], chunk[:, 2])
            mask = mask.transpose(1, 2)  # [B, pos, head]
            new = torch.where(mask[:, None, :, :, None], src.to(view.dtype)[None], view)
        return new.reshape(activation.shape)

    return hook


def _fill(mask: Tensor, rows: Tensor, heads: Tensor, pos: Tensor) -> None:
    """``mask[row, head, pos] = True``; ``pos = -1`` marks every position."""
    rows, heads, pos = (x.to(mask.device) for x in (rows, heads, pos))
    every = pos < 0
    if every.any():
        mask[rows[every], heads[every]] = True
    keep = ~every
    mask[rows[keep], heads[keep], pos[keep]] = True


def _base_and_source(prompts: Any, direction: str) -> tuple[Tensor, Tensor]:
    if isinstance(prompts, InductionPrompts):
        clean, corrupted = prompts.clean, prompts.corrupted
    else:
        clean, corrupted = prompts
    if direction == "denoise":
        return corrupted, clean
    if direction == "noise":
        return clean, corrupted
    raise ValueError(f"direction={direction!r}; expected 'denoise' or 'noise'")


def patch_heads(
    model: Any,
    prompts: InductionPrompts | tuple[Tensor, Tensor],
    metric: Metric | None = None,
    *,
    act: str = "z",
    per_position: bool = False,
    direction: Literal["denoise", "noise"] = "denoise",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> PatchingResult:
    """Activation patching of every head (and position), batched.

    Patches ``act`` (``"z"`` head output, ``"result"``, ``"q"``, ``"k"``, ``"v"`` or ``"pattern"``;
    for ``"pattern"`` the position is the query row) of each head over all positions
    (``values [n_layers, n_heads]``) or at each position (``per_position=True``,
    ``values [n_layers, pos, n_heads]``, TransformerLens's ``..._by_pos`` order for vectors).
    Same numbers as ``transformer_lens.patching.get_act_patch_attn_head_{act}_all_pos`` /
    ``_by_pos`` (with ``direction="denoise"``; ``"noise"`` swaps the two prompts).

    Args:
        model: Any TransformerLens model in eval mode.
        prompts: :class:`InductionPrompts` or a ``(clean, corrupted)`` pair of equal shapes.
        metric: ``logits [batch, pos, vocab] -> [batch]``; default
            :func:`induction_logprob_metric` (needs :class:`InductionPrompts`).
        act: Activation to patch.
        per_position: One patch per (layer, position, head) instead of (layer, head).
        direction: ``"denoise"`` or ``"noise"``.
        layers: Restrict to these layers (others come back ``NaN``).
        positions: Restrict per-position patches to these positions (others ``NaN``).
        batch_size: Patches per forward pass (default: bounded to about 256 MB of activations).
        progress: Show a tqdm bar.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16, n_ctx=64)).eval()
        >>> p = induction_prompts(model, repeat_len=4, n_samples=2)
        >>> patch_heads(model, p, per_position=True).values.shape
        torch.Size([2, 8, 1])
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"act={act!r}; expected one of {list(ACTIVATIONS)}")
    metric = _default_metric(prompts, metric)
    base, src_tokens = _base_and_source(prompts, direction)
    base, src_tokens = _check_tokens(model, base), _check_tokens(model, src_tokens)
    if base.shape != src_tokens.shape:
        raise ValueError(
            f"clean and corrupted prompts differ in shape: {tuple(base.shape)} vs "
            f"{tuple(src_tokens.shape)}"
        )
    L = model.cfg.n_layers
    layer_list = list(range(L)) if layers is None else [int(x) for x in layers]
    for layer in layer_list:
        if not 0 <= layer < L:
            raise ValueError(f"layer {layer} is outside [0, n_layers={L})")
    names = {f"blocks.{layer}.{ACTIVATIONS[act]}" for layer in layer_list}
    with torch.no_grad():
        _, cache = model.run_with_cache(src_tokens, names_filter=lambda n: n in names)
    source = {name: cache[name] for name in names}
    missing = [n for n in names if n not in source]
    if missing:
        raise ValueError(
            f"the model did not fire hooks {missing} (set use_attn_result for 'result')"
        )
    some = source[next(iter(names))]
    H = some.shape[1] if act == "pattern" else some.shape[2]
    n_pos = base.shape[1]
    pos_list = (
        list(range(n_pos)) if positions is None else [int(p) for p in torch.as_tensor(positions)]
    )
    for p in pos_list:
        if not 0 <= p < n_pos:
            raise ValueError(f"position {p} is outside [0, {n_pos})")
    if per_position:
        grid = [(ly, h, p) for ly in layer_list for p in pos_list for h in range(H)]
    else:
        grid = [(ly, h, -1) for ly in layer_list for h in range(H)]
    patches = torch.tensor(grid, dtype=torch.long)
    flat = _run_patches(model, base, source, act, patches, metric, batch_size, progress)
    if per_position:
        values = torch.full((L, n_pos, H), float("nan"))
        values[patches[:, 0], patches[:, 2], patches[:, 1]] = flat
        axes = ["layer", "pos", "head"]
    else:
        values = torch.full((L, H), float("nan"))
        values[patches[:, 0], patches[:, 1]] = flat
        axes = ["layer", "head"]
    clean_value, corrupted_value = _clean_corrupted(model, prompts, metric)
    return PatchingResult(values, clean_value, corrupted_value, direction, act, axes)


def _default_metric(prompts: Any, metric: Metric | None) -> Metric:
    if metric is not None:
        return metric
    if not isinstance(prompts, InductionPrompts):
        raise ValueError("pass a metric, or InductionPrompts to use the induction log-prob metric")
    return induction_logprob_metric(prompts)


def _clean_corrupted(model: Any, prompts: Any, metric: Metric) -> tuple[float, float]:
    clean, corrupted = _base_and_source(prompts, "noise")
    c = _evaluate(model, _check_tokens(model, clean), metric, []).mean().item()
    k = _evaluate(model, _check_tokens(model, corrupted), metric, []).mean().item()
    return c, k


# ------------------------------------------------------------------------------------------------
# Path patching: sender head -> receiver keys
# ------------------------------------------------------------------------------------------------


def path_patch_keys(
    model: Any,
    prompts: InductionPrompts | tuple[Tensor, Tensor],
    metric: Metric | None = None,
    *,
    sender_layer: int = 0,
    receiver_layer: int = 1,
    direction: Literal["denoise", "noise"] = "noise",
    batch_size: int | None = None,
) -> PatchingResult:
    """Path patching from each sender head into each receiver head's **keys** only.

    For sender head ``s`` and receiver head ``r``, the base run is repeated with the receiver's
    keys recomputed as if the sender's output came from the source run, along the direct path
    only: ``k_r += LN(delta) W_K^r`` with ``delta = (z_s^source - z_s^base) W_O^s`` (per position).
    Queries, values, every other head and every other path keep their base values. LayerNorm
    before the receiver (if any) is linearised with the base run's scale (``ln1.hook_scale``),
    the usual frozen-LayerNorm convention; models without LayerNorm (tlassoc's default) are exact.
    With TransformerLens models use processed weights (LayerNorm folded), as
    :func:`tlassoc.pretrained.load_model` does.

    Returns ``values [n_heads_sender, n_heads_receiver]`` with axis names ``sender, receiver``.
    The default direction is ``"noise"`` (is the sender->key path necessary?).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16, n_ctx=64)).eval()
        >>> p = induction_prompts(model, repeat_len=4, n_samples=2)
        >>> path_patch_keys(model, p).values.shape
        torch.Size([1, 1])
    """
    if not 0 <= sender_layer < receiver_layer < model.cfg.n_layers:
        raise ValueError(
            f"sender_layer {sender_layer} and receiver_layer {receiver_layer} must satisfy "
            f"0 <= sender < receiver < n_layers={model.cfg.n_layers}"
        )
    metric = _default_metric(prompts, metric)
    base, src_tokens = (_check_tokens(model, x) for x in _base_and_source(prompts, direction))
    z_name = f"blocks.{sender_layer}.attn.hook_z"
    k_name = f"blocks.{receiver_layer}.attn.hook_k"
    scale_name = f"blocks.{receiver_layer}.ln1.hook_scale"
    with torch.no_grad():
        _, base_cache = model.run_with_cache(
            base, names_filter=lambda n: n in (z_name, k_name, scale_name)
        )
        _, src_cache = model.run_with_cache(src_tokens, names_filter=lambda n: n == z_name)
    W_O = model.W_O[sender_layer].detach()  # [Hs, d_head, d_model]
    W_K = model.W_K[receiver_layer].detach()  # [Hr(kv), d_model, d_head]
    dz = (src_cache[z_name] - base_cache[z_name]).to(W_O.dtype)  # [n, pos, Hs, d_head]
    delta = torch.einsum("nphd,hdm->hnpm", dz, W_O)  # [Hs, n, pos, d_model]
    if scale_name in base_cache.keys():
        delta = (delta - delta.mean(-1, keepdim=True)) / base_cache[scale_name][None]
    dk = torch.einsum("hnpm,rmd->hrnpd", delta, W_K)  # [Hs, Hr, n, pos, d_head]
    Hs, Hr = dk.shape[:2]
    pairs = torch.cartesian_prod(torch.arange(Hs), torch.arange(Hr))
    n = base.shape[0]
    size = batch_size or _default_batch_size(model, n, base.shape[1])
    flat = torch.empty(len(pairs))
    for start, stop in _chunks(len(pairs), size):
        chunk = pairs[start:stop]
        B = len(chunk)

        def hook(k: Tensor, hook: Any, chunk: Tensor = chunk, B: int = B) -> Tensor:
            view = k.reshape(B, n, *k.shape[1:]).clone()  # [B, n, pos, Hr, d_head]
            idx = torch.arange(B, device=k.device)
            add = dk[chunk[:, 0], chunk[:, 1]].to(k.dtype)  # [B, n, pos, d_head]
            view[idx, :, :, chunk[:, 1].to(k.device)] += add
            return view.reshape(k.shape)

        values = _evaluate(model, base.repeat(B, 1), metric, [(k_name, hook)])
        flat[start:stop] = values.reshape(B, n).mean(1).cpu()
    clean_value, corrupted_value = _clean_corrupted(model, prompts, metric)
    values = flat.reshape(Hs, Hr)
    return PatchingResult(
        values, clean_value, corrupted_value, direction, "path:z->k", ["sender", "receiver"]
    )


# ------------------------------------------------------------------------------------------------
# Ablations
# ------------------------------------------------------------------------------------------------

AblationKind = Literal["zero", "mean", "pattern_preserving"]


def _check_heads(model: Any, heads: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for layer, head in heads:
        if not 0 <= layer < model.cfg.n_layers:
            raise ValueError(f"layer {layer} is outside [0, n_layers={model.cfg.n_layers})")
        if not 0 <= head < model.cfg.n_heads:
            raise ValueError(f"head {head} is outside [0, n_heads={model.cfg.n_heads})")
        out.append((int(layer), int(head)))
    return out


@torch.no_grad()
def ablate_heads(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    heads: Iterable[tuple[int, int]],
    kind: AblationKind = "zero",
    *,
    mean_tokens: Int[Tensor, "batch2 pos2"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with the given heads' outputs (``hook_z``) ablated.

    Kinds:

    * ``"zero"``: the heads' ``z`` is set to 0 (later attention patterns may change).
    * ``"mean"``: ``z`` is replaced by its mean over sequences and positions of
      ``mean_tokens`` (default: ``tokens``).
    * ``"pattern_preserving"``: every head's attention pattern is first recorded on the
      unablated run, then frozen while the heads' ``z`` is zeroed, so only value paths (and the
      direct path) change (Olsson et al. 2022; METRICS.md's definition).

    Zero/mean ablation asks whether a head is needed at all; pattern-preserving ablation asks
    whether it is needed *through the values it writes* while every later head keeps looking
    where it looked. A previous-token head acts through the induction head's keys, i.e.
    through the layer-1 pattern, which this ablation freezes: zeroing it pattern-preservingly
    changes in-context accuracy only a little (the mechanistic expectation), while zero/mean
    ablation of it, and pattern-preserving ablation of the induction head, destroy it.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16))
        >>> ablate_heads(model, torch.tensor([[1, 2, 3]]), [(0, 0)], "mean").shape
        torch.Size([1, 3, 65])
    """
    tokens = _check_tokens(model, tokens)
    heads = _check_heads(model, heads)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks: list[tuple[str, Callable[..., Tensor]]] = []
    if kind == "mean":
        ref = tokens if mean_tokens is None else _check_tokens(model, mean_tokens)
        names = {f"blocks.{ly}.attn.hook_z" for ly in by_layer}
        _, cache = model.run_with_cache(ref, names_filter=lambda n: n in names)
        means = {n: cache[n].mean(dim=(0, 1)) for n in names}  # [head, d_head]
    elif kind not in ("zero", "pattern_preserving"):
        raise ValueError(f"kind={kind!r}; expected 'zero', 'mean' or 'pattern_preserving'")
    if kind == "pattern_preserving":
        pnames = {f"blocks.{ly}.attn.hook_pattern" for ly in range(model.cfg.n_layers)}
        _, pcache = model.run_with_cache(tokens, names_filter=lambda n: n in pnames)
        for name in pnames:
            hooks.append((name, lambda p, hook, saved=pcache[name]: saved.to(p.dtype)))
    for layer, hs in by_layer.items():
        name = f"blocks.{layer}.attn.hook_z"
        idx = torch.tensor(hs)

        def z_hook(z: Tensor, hook: Any, name: str = name, idx: Tensor = idx) -> Tensor:
            z = z.clone()
            z[:, :, idx] = 0.0 if kind != "mean" else means[name][idx].to(z.dtype)
            return z

        hooks.append((name, z_hook))
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


@torch.no_grad()
def _losses(logits: Tensor, targets: Tensor, labels: Tensor, min_label: int) -> dict[str, float]:
    logp = logits.float().log_softmax(-1)
    nll = -logp.gather(-1, targets[..., None])[..., 0]
    correct = (logits.argmax(-1) == targets).float()
    glob, ic = labels == 0, labels >= min_label
    nan = float("nan")
    return {
        "global_loss": nll[glob].mean().item() if glob.any() else nan,
        "in_context_loss": nll[ic].mean().item() if ic.any() else nan,
        "global_acc": correct[glob].mean().item() if glob.any() else nan,
        "in_context_acc": correct[ic].mean().item() if ic.any() else nan,
    }


@torch.no_grad()
def ablation_effects(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch pos"],
    labels: Int[Tensor, "batch pos"],
    heads: Iterable[tuple[int, int]] | None = None,
    kinds: Sequence[AblationKind] = ("zero", "mean", "pattern_preserving"),
    *,
    min_label: int = 2,
) -> pd.DataFrame:
    """Effect of ablating each head on the in-context and global (bigram) losses.

    ``logits[:, t]`` predicts ``targets[:, t]``, whose label is ``labels[:, t]`` (as in
    :class:`tlassoc.data.TriggerBatch`): global positions have label 0, in-context positions
    label ``>= min_label``. One row for the unablated model (``kind="none"``) and one per
    (head, kind), with ``global_loss, in_context_loss, global_acc, in_context_acc`` and their
    changes ``d_*`` (ablated minus unablated).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=16))
        >>> t = torch.randint(0, 65, (2, 8))
        >>> df = ablation_effects(model, t, t.roll(-1, 1), torch.zeros_like(t), kinds=["zero"])
        >>> df["kind"].tolist()
        ['none', 'zero', 'zero']
    """
    tokens = _check_tokens(model, tokens)
    targets, labels = targets.to(tokens.device), labels.to(tokens.device)
    if heads is None:
        heads = [(ly, h) for ly in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    base = _losses(model(tokens), targets, labels, min_label)
    rows = [{"head": "none", "layer": -1, "head_index": -1, "kind": "none", **base}]
    for layer, head in _check_heads(model, heads):
        for kind in kinds:
            stats = _losses(
                ablate_heads(model, tokens, [(layer, head)], kind), targets, labels, min_label
            )
            rows.append(
                {
                    "head": f"{layer}.{head}",
                    "layer": layer,
                    "head_index": head,
                    "kind": kind,
                    **stats,
                }
            )
    df = pd.DataFrame(rows)
    for key in ("global_loss", "in_context_loss", "global_acc", "in_context_acc"):
        df[f"d_{key}"] = df[key] - base[key]
    return df


def _isnan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)
