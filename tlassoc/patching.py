"""Activation patching, path patching and ablations of previous-token and induction heads.

Patched runs are **batched**: for ``P`` patches of a batch of ``n`` prompts, the base input is
repeated ``P`` times and one hook per layer writes the source activation into copy ``i`` at
(head ``i``, position ``i``), so a chunk of ``batch_size`` patches costs one forward pass instead
of ``batch_size``. Head-output patches (``z``/``result``) of an AssocTransformer also reuse the
unpatched run's cache: nothing below the patched layer is recomputed, a per-position patch at
the last layer recomputes one row of logits, and one at an earlier layer updates the next
block incrementally (:meth:`tlassoc.model.TransformerBlock.forward_incremental`; the model
runs on from there with ``start_at_layer``). The numbers equal
``transformer_lens.patching``'s one-run-per-patch loop (the tests check max abs difference
<= 1e-5). Works on the three model kinds of :mod:`tlassoc.heads.adapter`; call
``model.eval()`` first. Background in docs/heads_and_patching.md.

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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc.heads.adapter import (
    Model,
    bos_token_id,
    check_head,
    check_layer,
    check_model,
    check_tokens,
    model_device,
    special_token_ids,
)
from tlassoc.heads.patterns import attention_patterns
from tlassoc.metrics import masked_accuracy, masked_mean
from tlassoc.model import INCREMENTAL_HOOKS

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

#: A patching metric: ``logits [rows, pos, d_vocab] -> [rows]``, one value per row. The batched
#: engine calls it on ``B`` patched copies of the ``n`` prompts at once (``rows = B * n``,
#: copy-major: row ``r`` is prompt ``r % n``). A metric that closes over per-prompt targets of
#: length ``n`` must tile them to the rows it is given, e.g.
#: ``targets.repeat(logits.shape[0] // n)``, as :func:`induction_logprob_metric` does; one that
#: does not gets a ``ValueError`` that says so.
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
    model: Model,
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
    check_model(model)
    if corrupt not in ("first", "second"):
        raise ValueError(f"corrupt={corrupt!r}; expected 'first' or 'second'")
    if repeat_len < 2:
        raise ValueError(f"repeat_len={repeat_len}; expected >= 2")
    special = special_token_ids(model)
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
            raise ValueError("prepend_bos=True; expected a model with a BOS token")
        col = torch.full((n_samples, 1), bos)
        clean, corrupted = torch.cat([col, clean], 1), torch.cat([col, corrupted], 1)
    device = model_device(model)
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


def _default_batch_size(model: Model, n_prompts: int, n_pos: int) -> int:
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
def _evaluate(
    model: Model, tokens: Tensor, metric: Metric, hooks: list, n_prompts: int | None = None
) -> Tensor:
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks) if hooks else model(tokens)
    return _call_metric(metric, logits, n_prompts)


def _tiling_hint(rows: int, n_prompts: int, what: str) -> str:
    return (
        f"metric {what} on logits of {rows // n_prompts} patched copies of the {n_prompts} "
        f"prompts ({rows} rows; row r is prompt r % {n_prompts}); a metric that closes over "
        f"per-prompt targets of length {n_prompts} must tile them to the rows it is given, "
        "e.g. targets.repeat(logits.shape[0] // len(targets)) (see tlassoc.patching.Metric)"
    )


def _call_metric(metric: Metric, logits: Tensor, n_prompts: int | None = None) -> Tensor:
    """``metric(logits)``, checked: one value per row. ``n_prompts``: the number of distinct
    prompts when ``logits`` holds tiled copies of them (the error then explains the tiling)."""
    tiled = n_prompts is not None and logits.shape[0] != n_prompts
    try:
        values = metric(logits)
    except (RuntimeError, IndexError, ValueError) as err:
        if not tiled:
            raise
        assert n_prompts is not None
        raise ValueError(
            _tiling_hint(logits.shape[0], n_prompts, f"raised {type(err).__name__}: {err};")
        ) from err
    values = torch.as_tensor(values)
    if tiled and values.ndim == 1 and values.shape[0] == n_prompts:
        assert n_prompts is not None
        raise ValueError(_tiling_hint(logits.shape[0], n_prompts, f"returned {n_prompts} values"))
    return _check_metric(values, logits.shape[0])


def _check_metric(values: Any, batch: int) -> Tensor:
    values = torch.as_tensor(values)
    if values.ndim != 1 or values.shape[0] != batch:
        raise ValueError(
            f"metric must return one value per prompt ([batch={batch}]), got shape "
            f"{tuple(values.shape)}"
        )
    return values.float()


def _run_patches(
    model: Model,
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
        values = _evaluate(model, base.repeat(B, 1), metric, hooks, n_prompts=n)
        out[start:stop] = values.reshape(B, n).mean(1).cpu()
    return out


def _fast_output_patching(model: Model, act: str) -> bool:
    """Whether head-output patches can start from the base run's cache (AssocTransformer)."""
    return act in ("z", "result") and check_model(model) == "assoc"


def _incremental_ok(model: Model, layer: int) -> bool:
    """Block ``layer`` exists and supports the incremental update (no relative positions)."""
    return layer < model.cfg.n_layers and model.blocks[layer].supports_incremental


def _output_patch_hooks(model: Model, layers: list[int], act: str, per_position: bool) -> set:
    """The hooks :func:`_run_output_patches` caches on the base run."""
    names = set()
    for ly in layers:
        names |= {f"blocks.{ly}.{ACTIVATIONS[act]}", f"blocks.{ly}.hook_resid_pre"}
        if per_position and _incremental_ok(model, ly + 1):
            names |= {f"blocks.{ly + 1}.{h}" for h in INCREMENTAL_HOOKS}
    return names


@torch.no_grad()
def _run_output_patches(
    model: Model,
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
    output, so the base run is cached once and each patched copy starts there
    (:func:`_patch_all_positions`, :func:`_patch_one_position`). Patches are grouped by layer,
    so every batch of copies starts at one layer.
    """
    n, n_pos = base.shape
    size = batch_size or _default_batch_size(model, n, n_pos)
    layers = sorted(set(patches[:, 0].tolist()))
    per_position = bool((patches[:, 2] >= 0).all())
    names = _output_patch_hooks(model, layers, act, per_position)
    base_logits, cache = model.run_with_cache(base, names_filter=lambda name: name in names)
    out = torch.empty(len(patches))
    steps = []
    for layer in layers:
        rows = (patches[:, 0] == layer).nonzero()[:, 0]
        steps += [(layer, rows[a:b]) for a, b in _chunks(len(rows), size)]
    for layer, rows in _progress(steps, len(steps), progress, f"patching {act}"):
        chunk = patches[rows].to(base.device)
        src = source[f"blocks.{layer}.{ACTIVATIONS[act]}"]
        if per_position:
            logits = _patch_one_position(model, layer, cache, src, act, chunk, base_logits)
        else:
            logits = _patch_all_positions(model, layer, cache, src, act, chunk)
        values = _call_metric(metric, logits, n_prompts=n)
        out[rows.cpu()] = values.reshape(len(chunk), n).mean(1).cpu()
    return out


def _patch_all_positions(
    model: Model, layer: int, cache: Any, src: Tensor, act: str, chunk: Tensor
) -> Float[Tensor, "copies_batch pos d_vocab"]:
    """Logits of each copy with head ``chunk[c, 1]``'s activation replaced at every position:
    layer ``layer``'s output projection recomputed from the cached activation, then the later
    blocks, ``ln_final`` and the unembedding."""
    block = model.blocks[layer]
    act_base = cache[f"blocks.{layer}.{ACTIVATIONS[act]}"]  # [n, pos, head, d]
    n, n_pos = act_base.shape[:2]
    B = len(chunk)
    mask = torch.zeros(B, act_base.shape[2], n_pos, dtype=torch.bool, device=act_base.device)
    _fill(mask, torch.arange(B), chunk[:, 1], chunk[:, 2])
    mask = mask.transpose(1, 2)[:, None, :, :, None]  # [B, 1, pos, head, 1]
    patched = torch.where(mask, src.to(act_base.dtype)[None], act_base[None])
    attn_out = block.attn.project(patched.reshape(B * n, *act_base.shape[1:]), act)
    resid = block.add_mlp(cache[f"blocks.{layer}.hook_resid_pre"].repeat(B, 1, 1) + attn_out)
    return model(resid, start_at_layer=layer + 1)


def _patch_one_position(
    model: Model,
    layer: int,
    cache: Any,
    src: Tensor,
    act: str,
    chunk: Tensor,
    base_logits: Tensor,
) -> Float[Tensor, "copies_batch pos d_vocab"]:
    """Logits of each copy with head ``chunk[c, 1]``'s activation replaced at position
    ``p = chunk[c, 2]`` only, which changes only row ``p`` of the residual stream after layer
    ``l``. At the last layer only row ``p`` of the logits is recomputed; otherwise the next
    block is updated incrementally (:meth:`~tlassoc.model.TransformerBlock.forward_incremental`)
    when it can be, and the remaining blocks, ``ln_final`` and the unembedding run in full."""
    block = model.blocks[layer]
    act_base = cache[f"blocks.{layer}.{ACTIVATIONS[act]}"]  # [n, pos, head, d]
    resid_pre = cache[f"blocks.{layer}.hook_resid_pre"]
    n, n_pos = act_base.shape[:2]
    B, pos, idx = len(chunk), chunk[:, 2], torch.arange(len(chunk), device=chunk.device)
    # row p of the patched activation: the base row with one head from the source
    row = act_base[:, pos].transpose(0, 1).clone()  # [B, n, head, d]
    row[idx, :, chunk[:, 1]] = src.to(act_base.dtype)[:, pos, chunk[:, 1]].transpose(0, 1)
    attn_row = block.attn.project(row.reshape(B * n, 1, *row.shape[2:]), act)
    new = resid_pre[:, pos].transpose(0, 1).reshape(B * n, 1, -1) + attn_row
    new = block.add_mlp(new).reshape(B, n, -1)  # resid_post of layer l at row p
    if layer == model.cfg.n_layers - 1:
        logits = base_logits[None].repeat(B, 1, 1, 1)
        logits[idx, :, pos] = model(new, start_at_layer=model.cfg.n_layers)
        return logits.reshape(B * n, n_pos, -1)
    nxt = layer + 1
    if _incremental_ok(model, nxt):
        cached = {h: cache[f"blocks.{nxt}.{h}"] for h in INCREMENTAL_HOOKS}
        resid = model.blocks[nxt].forward_incremental(cached, new, pos)
        return model(resid, start_at_layer=nxt + 1)
    resid = block.add_mlp(resid_pre + block.attn.project(act_base, act))[None].repeat(B, 1, 1, 1)
    resid[idx, :, pos] = new
    return model(resid.reshape(B * n, n_pos, -1), start_at_layer=nxt)


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
    model: Model,
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
        model: Any of the three model kinds, in eval mode.
        prompts: :class:`InductionPrompts` or a ``(clean, corrupted)`` pair of equal shapes.
        metric: ``logits [rows, pos, vocab] -> [rows]``; default
            :func:`induction_logprob_metric` (needs :class:`InductionPrompts`). It is called on
            tiled copies of the prompts (``rows`` = copies x prompts, row ``r`` is prompt
            ``r % n_prompts``): per-prompt targets must be tiled (see :data:`Metric`).
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
    check_model(model)
    if act not in ACTIVATIONS:
        raise ValueError(f"act={act!r}; expected one of {list(ACTIVATIONS)}")
    metric = _default_metric(prompts, metric)
    base, src_tokens = (_tokens(model, x) for x in _base_and_source(prompts, direction))
    if base.shape != src_tokens.shape:
        raise ValueError(
            f"clean and corrupted prompts differ in shape: {tuple(base.shape)} vs "
            f"{tuple(src_tokens.shape)}"
        )
    L = model.cfg.n_layers
    layer_list = list(range(L)) if layers is None else [int(x) for x in layers]
    for layer in layer_list:
        check_layer(layer, L)
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
            raise ValueError(f"position {p}; expected 0 <= position < {n_pos}")
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


def _tokens(model: Model, tokens: Any) -> Tensor:
    return check_tokens(tokens, model.cfg.d_vocab, model_device(model))


def _clean_corrupted(model: Model, prompts: Any, metric: Metric) -> tuple[float, float]:
    clean, corrupted = _base_and_source(prompts, "noise")
    c = _evaluate(model, _tokens(model, clean), metric, []).mean().item()
    k = _evaluate(model, _tokens(model, corrupted), metric, []).mean().item()
    return c, k


# ------------------------------------------------------------------------------------------------
# Path patching: sender head -> receiver keys
# ------------------------------------------------------------------------------------------------


def path_patch_keys(
    model: Model,
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
    check_model(model)
    if not 0 <= sender_layer < receiver_layer < model.cfg.n_layers:
        raise ValueError(
            f"sender_layer {sender_layer} and receiver_layer {receiver_layer} must satisfy "
            f"0 <= sender < receiver < n_layers={model.cfg.n_layers}"
        )
    metric = _default_metric(prompts, metric)
    base, src_tokens = (_tokens(model, x) for x in _base_and_source(prompts, direction))
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

        values = _evaluate(model, base.repeat(B, 1), metric, [(k_name, hook)], n_prompts=n)
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


def _check_heads(model: Model, heads: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for layer, head in heads:
        layer, head = int(layer), int(head)
        out.append((check_layer(layer, model.cfg.n_layers), check_head(head, model.cfg.n_heads)))
    return out


@torch.no_grad()
def ablate_heads(
    model: Model,
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
      direct path) change (Olsson et al. 2022; see docs/method.md, Head metrics).

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
    check_model(model)
    tokens = _tokens(model, tokens)
    heads = _check_heads(model, heads)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks: list[tuple[str, Callable[..., Tensor]]] = []
    if kind == "mean":
        ref = tokens if mean_tokens is None else _tokens(model, mean_tokens)
        names = {f"blocks.{ly}.attn.hook_z" for ly in by_layer}
        _, cache = model.run_with_cache(ref, names_filter=lambda n: n in names)
        means = {n: cache[n].mean(dim=(0, 1)) for n in names}  # [head, d_head]
    elif kind not in ("zero", "pattern_preserving"):
        raise ValueError(f"kind={kind!r}; expected 'zero', 'mean' or 'pattern_preserving'")
    if kind == "pattern_preserving":
        saved = attention_patterns(model, tokens)  # [batch, layer, head, q, k]
        for ly in range(model.cfg.n_layers):
            name = f"blocks.{ly}.attn.hook_pattern"
            hooks.append((name, lambda p, hook, A=saved[:, ly]: A.to(p.dtype)))
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
    glob, ic = labels == 0, labels >= min_label
    return {
        "global_loss": masked_mean(nll, glob),
        "in_context_loss": masked_mean(nll, ic),
        "global_acc": masked_accuracy(logits, targets, glob),
        "in_context_acc": masked_accuracy(logits, targets, ic),
    }


@torch.no_grad()
def ablation_effects(
    model: Model,
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
    check_model(model)
    tokens = _tokens(model, tokens)
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
