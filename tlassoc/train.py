"""Training on the trigger task: the papers' recipes, staged unfreezing, metrics, checkpoints.

:func:`train` runs SGD (with momentum) or AdamW on batches of a
:class:`~tlassoc.data.TriggerBigramTask`, with a learning-rate schedule, weight decay, loss on all
positions or only on the in-context ones (label >= 2), and parameters released at given steps.
Every ``log_every`` steps it evaluates a fixed held-out batch (global-bigram loss, in-context loss,
accuracies, attention probes and the memory recall probes of :mod:`tlassoc.memory.probes`) and,
with ``out_dir``, appends the record to ``out_dir/metrics.jsonl``. Every ``checkpoint_every``
steps it writes a checkpoint (model, optimizer state, data-generator state, step), each file
atomically; ``resume=True`` continues from the last one and ends with the same bits as a run that
was never interrupted. Ctrl-C finishes the current step, writes a checkpoint and re-raises
``KeyboardInterrupt``.

Recipes (PAPER.md §3): :meth:`TrainConfig.simplified` (SGD, momentum 0.9, weight decay 1e-4,
batch 512, lr 0.2, loss on label >= 2), :meth:`TrainConfig.full` (AdamW, lr 0.01, weight decay
0.01, betas (0.9, 0.99), batch 64, loss on all tokens), :meth:`TrainConfig.staged` (the
simplified recipe with ``W_O²``, ``W_K²``, ``W_K¹`` released one after another), and
:data:`RECIPES`, which pairs each with its model configuration.

The module itself is callable: ``tlassoc.train(model, task, config)`` is :func:`train`, while
``tlassoc.train.TrainConfig`` and the other names stay reachable as module attributes.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> from tlassoc.data import BigramModel, TriggerBigramTask
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64))
    >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=32, batch_size=8)
    >>> cfg = TrainConfig.simplified(steps=3, batch_size=8, progress=False, probes=False)
    >>> result = train(model, task, cfg)
    >>> result.step, len(result.losses)
    (3, 3)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from tlassoc._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from tlassoc.config import AssocConfig
from tlassoc.model import AssocTransformer, CheckpointError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "linear")
LOSS_ON = ("all", "in_context")
METRICS_FILE = "metrics.jsonl"
LATEST_FILE = "latest.json"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_META_FILE = "train_state.json"


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """How to train: optimizer, schedule, batches, loss positions, staging, logging, checkpoints.

    Args:
        steps: Number of optimizer steps.
        batch_size: Sequences per batch (``None``: the task's ``batch_size``).
        seq_len: Training sequence length (``None``: the task's ``seq_len``).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"`` (with ``betas``).
        lr: Peak learning rate.
        momentum: SGD momentum.
        betas: AdamW betas.
        weight_decay: Weight decay (SGD: L2 added to the gradient; AdamW: decoupled).
        schedule: ``"constant"``, ``"cosine"`` (to 0 at ``steps``) or ``"linear"`` (to 0),
            after ``warmup_steps`` of linear warm-up.
        warmup_steps: Steps of linear warm-up from 0 to ``lr``.
        loss_on: ``"in_context"``: cross-entropy only on targets with label >= 2 (the induction
            head's job); ``"all"``: on every target with label >= 0.
        unfreeze: Staged training: ``((step, patterns), ...)``. A parameter matched by a stage's
            ``fnmatch`` patterns is held frozen until that step and trainable from it on (even
            if the model config froze it). Parameters in no stage keep their ``requires_grad``.
        grad_clip: Clip the global gradient norm to this value (``None``: no clipping).
        seed: Seed of the training-data generator (the model's weights have their own seed in
            :class:`~tlassoc.config.AssocConfig`).
        log_every: Evaluate and log metrics every this many steps (0: only at the end).
        eval_batch_size: Sequences in the fixed evaluation batch.
        eval_seed: Seed of the evaluation batch.
        probes: Compute the memory recall probes when logging.
        checkpoint_every: Write a checkpoint every this many steps (0: only at the end and on
            Ctrl-C); needs ``out_dir``.
        keep_checkpoints: Number of most recent checkpoints kept on disk.
        out_dir: Folder for ``metrics.jsonl`` and ``checkpoints/`` (``None``: write nothing).
        resume: Continue from the last checkpoint in ``out_dir`` (start fresh if there is none).
        progress: Show a tqdm bar with the live loss and in-context accuracy.
        device: Device for training (``None``: the model's device).

    Example:
        >>> TrainConfig.full().optimizer, TrainConfig.simplified().lr
        ('adamw', 0.2)
    """

    steps: int = 1000
    batch_size: int | None = 512
    seq_len: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    loss_on: str = "in_context"
    unfreeze: tuple[tuple[int, tuple[str, ...]], ...] = ()
    grad_clip: float | None = None
    seed: int = 0
    log_every: int = 50
    eval_batch_size: int = 64
    eval_seed: int = 12345
    probes: bool = True
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    out_dir: str | None = None
    resume: bool = False
    progress: bool = True
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "checkpoint_every", "warmup_steps"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        _check_int("keep_checkpoints", self.keep_checkpoints, minimum=1)
        _check_int("seed", self.seed, minimum=None)
        _check_int("eval_seed", self.eval_seed, minimum=None)
        for name in ("batch_size", "seq_len"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}={v!r}; expected a finite number")
            if v < 0:
                raise ValueError(f"{name}={v!r}; expected a number >= 0")
        if self.grad_clip is not None and not (
            isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0
        ):
            raise ValueError(f"grad_clip={self.grad_clip!r}; expected a positive number or None")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas!r}; expected two numbers in [0, 1)")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("loss_on", self.loss_on, LOSS_ON)
        stages = []
        for stage in self.unfreeze:
            try:
                step, patterns = stage
            except (TypeError, ValueError):
                raise ValueError(f"unfreeze stage {stage!r}; expected (step, patterns)") from None
            _check_int("unfreeze step", step, minimum=0)
            if isinstance(patterns, str):
                patterns = (patterns,)
            patterns = tuple(patterns)
            if not patterns or not all(isinstance(p, str) and p for p in patterns):
                raise ValueError(
                    f"unfreeze patterns {patterns!r}; expected parameter-name patterns"
                )
            stages.append((int(step), patterns))
        self.unfreeze = tuple(sorted(stages))
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir (the folder holding the checkpoints)")

    # --- recipes --------------------------------------------------------------------------------
    @classmethod
    def simplified(cls, **overrides: Any) -> TrainConfig:
        """Bietti et al.'s recipe for the simplified model: SGD, momentum 0.9, weight decay 1e-4,
        batch 512, lr 0.2 (the code's default; the paper's figure uses 0.03), 1,000 steps, loss
        only on in-context targets (label >= 2). Use it with :func:`tlassoc.presets.rpe`,
        :func:`~tlassoc.presets.ape` or :func:`~tlassoc.presets.bietti_simplified`, whose
        embeddings, positions, unembedding, ``W_V``/``W_O`` of layer 0 and ``W_V`` of layer 1 are
        frozen.

        Example:
            >>> TrainConfig.simplified(lr=0.03).momentum
            0.9
        """
        base: dict[str, Any] = dict(
            steps=1000,
            batch_size=512,
            optimizer="sgd",
            lr=0.2,
            momentum=0.9,
            weight_decay=1e-4,
            loss_on="in_context",
        )
        return cls(**{**base, **overrides})

    @classmethod
    def full(cls, **overrides: Any) -> TrainConfig:
        """The full model's recipe: AdamW, lr 0.01, weight decay 0.01, betas (0.9, 0.99),
        batch 64, loss on all tokens.

        Example:
            >>> TrainConfig.full().betas
            (0.9, 0.99)
        """
        base: dict[str, Any] = dict(
            steps=1000,
            batch_size=64,
            optimizer="adamw",
            lr=0.01,
            betas=(0.9, 0.99),
            weight_decay=0.01,
            loss_on="all",
        )
        return cls(**{**base, **overrides})

    @classmethod
    def staged(cls, steps: int = 1000, **overrides: Any) -> TrainConfig:
        """The simplified recipe with the matrices released top-down: ``W_O²`` at step 0,
        ``W_K²`` at ``steps // 3``, ``W_K¹`` at ``2 * steps // 3``.

        Example:
            >>> [s for s, _ in TrainConfig.staged(steps=90).unfreeze]
            [0, 30, 60]
        """
        stages = (
            (0, ("blocks.1.attn.W_O",)),
            (steps // 3, ("blocks.1.attn.W_K",)),
            (2 * steps // 3, ("blocks.0.attn.W_K",)),
        )
        return cls.simplified(**{"steps": steps, "unfreeze": stages, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (inverse: ``TrainConfig(**d)``)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["unfreeze"] = [[s, list(p)] for s, p in self.unfreeze]
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def full_model_config(**overrides: Any) -> AssocConfig:
    """The realistic counterpart of the simplified model (PAPER.md §2): pre-LayerNorm, 4 heads,
    learned query, ReLU feed-forward layers in both layers, everything trainable.

    Example:
        >>> full_model_config(d_model=64).n_heads
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


def _recipes() -> dict[str, tuple[Callable[..., AssocConfig], Callable[..., TrainConfig]]]:
    from tlassoc import presets

    return {
        "rpe": (presets.rpe, TrainConfig.simplified),
        "ape": (presets.ape, TrainConfig.simplified),
        "bietti": (presets.bietti_simplified, TrainConfig.simplified),
        "bietti-ffn": (
            lambda **kw: presets.bietti_simplified(**{"ffn_type": "linear", **kw}),
            lambda **kw: TrainConfig.simplified(**{"loss_on": "all", **kw}),
        ),
        "staged-rpe": (presets.rpe, TrainConfig.staged),
        "staged-ape": (presets.ape, TrainConfig.staged),
        "nope": (presets.nope, TrainConfig.simplified),
        "full": (full_model_config, TrainConfig.full),
    }


#: Recipe names accepted by :func:`recipe` and ``tlassoc train``.
RECIPES: tuple[str, ...] = tuple(_recipes())


def recipe(name: str, **train_overrides: Any) -> tuple[AssocConfig, TrainConfig]:
    """The model configuration and training configuration of a named recipe.

    Names: ``rpe``, ``ape`` (the simplified model, d = 128), ``bietti`` (d = 256, as published),
    ``bietti-ffn`` (with the linear feed-forward bigram memory, loss on all tokens),
    ``staged-rpe``/``staged-ape`` (top-down staged unfreezing), ``nope`` (three layers, no
    positions) and ``full`` (pre-LN, multi-head, ReLU MLP, AdamW).

    Example:
        >>> model_cfg, train_cfg = recipe("full", steps=10)
        >>> model_cfg.normalization_type, train_cfg.optimizer, train_cfg.steps
        ('LN', 'adamw', 10)
    """
    table = _recipes()
    if name not in table:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(table)}")
    model_fn, train_fn = table[name]
    return model_fn(), train_fn(**train_overrides)


# ------------------------------------------------------------------------------------------------
# Losses and evaluation
# ------------------------------------------------------------------------------------------------


def loss_mask(labels: Int[Tensor, "batch pos"], loss_on: str) -> Tensor:
    """Boolean mask of the targets the loss is taken on (``"in_context"``: label >= 2;
    ``"all"``: label >= 0).

    Example:
        >>> loss_mask(torch.tensor([[0, 1, 2, -1]]), "in_context").tolist()
        [[False, False, True, False]]
    """
    _check_choice("loss_on", loss_on, LOSS_ON)
    return labels >= 2 if loss_on == "in_context" else labels >= 0


def masked_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over the ``True`` positions of ``mask`` (0 if none)."""
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    m = mask.flatten().to(nll.dtype)
    return (nll * m).sum() / m.sum().clamp(min=1)


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    n = int(mask.sum())
    return float((values * mask).sum() / n) if n else float("nan")


@torch.no_grad()
def evaluate(model: AssocTransformer, batch: Any) -> dict[str, float]:
    """Losses and accuracies of ``model`` on one :class:`~tlassoc.data.TriggerBatch`.

    Keys: ``loss`` (all targets with label >= 0), ``loss_global`` (label 0: global bigrams),
    ``loss_in_context`` (label >= 2), ``acc_ge1`` / ``acc_ge2`` (argmax accuracy on label >= 1 /
    >= 2), ``prev_token_acc`` (fraction of query positions t >= 1 whose layer-0 attention argmax
    is t - 1, head 0) and ``induction_attn_acc`` (see
    :func:`tlassoc.memory.probes.induction_attention_accuracy`).

    Example:
        >>> from tlassoc import presets
        >>> from tlassoc.data import BigramModel, TriggerBigramTask
        >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=2)
        >>> m = AssocTransformer(presets.rpe(d_model=16, n_ctx=16))
        >>> sorted(evaluate(m, task.sample(seed=0)))[:3]
        ['acc_ge1', 'acc_ge2', 'induction_attn_acc']
    """
    from tlassoc.memory.probes import induction_attention_accuracy, previous_token_accuracy

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    tokens, targets, labels = batch.tokens.to(dev), batch.targets.to(dev), batch.labels.to(dev)
    names = {"blocks.0.attn.hook_pattern"}
    if model.cfg.n_layers > 1:
        names.add("blocks.1.attn.hook_pattern")
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    nll = nll.view_as(targets)
    correct = (logits.argmax(-1) == targets).to(nll.dtype)
    out = {
        "loss": _masked_mean(nll, labels >= 0),
        "loss_global": _masked_mean(nll, labels == 0),
        "loss_in_context": _masked_mean(nll, labels >= 2),
        "acc_ge1": _masked_mean(correct, labels >= 1),
        "acc_ge2": _masked_mean(correct, labels >= 2),
    }
    pattern0 = cache["blocks.0.attn.hook_pattern"][:, 0]
    out["prev_token_acc"] = float(previous_token_accuracy(pattern0)[1:].mean())
    if model.cfg.n_layers > 1:
        pattern1 = cache["blocks.1.attn.hook_pattern"][:, 0]
        out["induction_attn_acc"] = induction_attention_accuracy(pattern1, tokens)
    model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------
# Results and checkpoints
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: The trained model (the same object that was passed in).
        step: Number of optimizer steps done.
        losses: Training loss at every step run in this call (not the resumed part).
        history: One metrics record per logged step (resumed runs include the earlier records).
        out_dir: Where metrics and checkpoints were written (or ``None``).
        seconds: Wall time of this call.
    """

    model: AssocTransformer
    step: int
    losses: list[float]
    history: list[dict[str, Any]]
    out_dir: Path | None
    seconds: float

    @property
    def final_metrics(self) -> dict[str, Any]:
        """The last logged metrics record (empty if nothing was logged)."""
        return self.history[-1] if self.history else {}


def _flatten_optimizer(
    state: dict[str, Any],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        keys = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous()
                keys[key] = "tensor"
            else:
                keys[key] = value
        meta["state"][str(idx)] = keys
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, keys in meta["state"].items():
        entry = {}
        for key, kind in keys.items():
            entry[key] = tensors[f"optim.{idx}.{key}"] if kind == "tensor" else kind
        state[int(idx)] = entry
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: str | os.PathLike[str],
    model: AssocTransformer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    config: TrainConfig,
) -> Path:
    """Write a resumable checkpoint into ``folder`` (model, optimizer, data generator, step).

    ``folder/model.safetensors`` + ``config.json`` (:meth:`AssocTransformer.save`),
    ``folder/train_state.safetensors`` (optimizer tensors and the generator state as uint8) and
    ``folder/train_state.json`` (step, training config, optimizer hyper-parameters). Every file
    is written atomically; no pickle.
    """
    from safetensors.torch import save as st_save

    folder = Path(folder)
    model.save(folder)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    tensors["generator_state"] = generator.get_state().contiguous()
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    atomic_write_bytes(folder / TRAIN_STATE_FILE, st_save(tensors))
    atomic_write_json(
        folder / TRAIN_META_FILE,
        {
            "step": step,
            "optimizer": meta,
            "train_config": config.to_dict(),
            "requires_grad": requires_grad,
        },
    )
    return folder


def load_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns a dict with ``model`` (an :class:`AssocTransformer`), ``step``, ``optimizer_state``
    (a ``state_dict`` for ``load_state_dict``), ``generator_state`` and ``train_config`` (a dict).

    Raises:
        CheckpointError: a file is missing, pickled or inconsistent.
    """
    from safetensors.torch import load as st_load

    folder = Path(folder)
    model = AssocTransformer.load(folder)
    state_path, meta_path = folder / TRAIN_STATE_FILE, folder / TRAIN_META_FILE
    for p in (state_path, meta_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} is missing")
    raw = state_path.read_bytes()
    if raw[:1] == b"\x80" or raw[:2] == b"PK":
        raise CheckpointError(f"{state_path} looks like a pickle; tlassoc loads only safetensors")
    try:
        tensors = st_load(raw)
        meta = json.loads(meta_path.read_text())
        opt_state = _unflatten_optimizer(tensors, meta["optimizer"])
        gen_state = tensors["generator_state"]
        step = int(meta["step"])
    except Exception as err:  # noqa: BLE001 - any parse failure is a broken checkpoint
        raise CheckpointError(f"checkpoint {folder} is unreadable: {err}") from None
    for name, param in model.named_parameters():
        param.requires_grad_(bool(meta.get("requires_grad", {}).get(name, param.requires_grad)))
    return {
        "model": model,
        "step": step,
        "optimizer_state": opt_state,
        "generator_state": gen_state,
        "train_config": meta["train_config"],
    }


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The folder of the last complete checkpoint under ``out_dir`` (``None`` if there is none).

    Example:
        >>> import tempfile
        >>> latest_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    pointer = Path(out_dir) / "checkpoints" / LATEST_FILE
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{pointer} is not a valid checkpoint pointer: {err}") from None
    folder = pointer.parent / str(name)
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} points to {folder}, which does not exist")
    return folder


def _write_checkpoint(
    out_dir: Path,
    model: AssocTransformer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    config: TrainConfig,
) -> Path:
    root = out_dir / "checkpoints"
    name = f"step-{step:08d}"
    folder = root / name
    if folder.exists():
        shutil.rmtree(folder)
    save_checkpoint(folder, model, optimizer, generator, step, config)
    atomic_write_json(root / LATEST_FILE, {"checkpoint": name, "step": step})
    old = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (config.keep_checkpoints - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return folder


def _write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(rec) + "\n" for rec in history)
    atomic_write_text(out_dir / METRICS_FILE, text)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of ``config.lr`` at ``step`` (warm-up, then the schedule).

    Example:
        >>> lr_factor(TrainConfig(steps=10, schedule="linear"), 5)
        0.5
    """
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    frac = min(1.0, (step - config.warmup_steps) / span)
    if config.schedule == "linear":
        return 1.0 - frac
    return 0.5 * (1.0 + math.cos(math.pi * frac))


def _staged_names(model: AssocTransformer, config: TrainConfig) -> dict[str, int]:
    """Parameter name -> step it is released at (the earliest matching stage)."""
    names = [n for n, _ in model.named_parameters()]
    release: dict[str, int] = {}
    for step, patterns in config.unfreeze:
        for pattern in patterns:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(
                    f"unfreeze pattern {pattern!r} matches no parameter of this model; "
                    f"parameters: {names}"
                )
            for n in hits:
                release.setdefault(n, step)
    return release


def _make_optimizer(
    params: Sequence[torch.nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )


class _Interrupt:
    """Turns SIGINT into a flag checked between steps (main thread only)."""

    def __init__(self) -> None:
        self.flag = False
        self._old: Any = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum: int, frame: Any) -> None:
                if self.flag:  # a second Ctrl-C stops at once
                    raise KeyboardInterrupt
                self.flag = True

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(
    model: AssocTransformer,
    task: Any,
    config: TrainConfig | None = None,
    *,
    callback: Callable[[int, AssocTransformer, float], None] | None = None,
    bigram: Any = None,
) -> TrainResult:
    """Train ``model`` in place on batches of ``task``.

    Args:
        model: The model; its frozen parameters (``requires_grad=False``) stay as they are.
        task: A :class:`~tlassoc.data.TriggerBigramTask` (anything with ``sample(generator=,
            batch_size=, seq_len=)`` returning batches with ``tokens``, ``targets``, ``labels``).
        config: How to train (default: :meth:`TrainConfig.simplified`).
        callback: Called as ``callback(step, model, loss)`` after every completed step.
        bigram: Bigram model for the ``W_F`` probe (default: ``task.bigram``).

    Returns:
        A :class:`TrainResult`. With ``config.resume`` and a checkpoint in ``config.out_dir``,
        the model's weights are replaced by the checkpoint's, and training continues from its
        step: the final weights equal those of an uninterrupted run, bit for bit.

    Raises:
        KeyboardInterrupt: after writing a checkpoint (when ``out_dir`` is set) on Ctrl-C.

    Example:
        >>> from tlassoc import presets
        >>> from tlassoc.data import BigramModel, TriggerBigramTask
        >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=4)
        >>> m = AssocTransformer(presets.ape(d_model=16, n_ctx=16))
        >>> r = train(m, task, TrainConfig.full(steps=2, progress=False, probes=False))
        >>> r.step
        2
    """
    from tqdm.auto import tqdm

    config = config if config is not None else TrainConfig.simplified()
    if not isinstance(model, AssocTransformer):
        raise ValueError(f"model must be an AssocTransformer, got {type(model).__name__}")
    t_start = time.perf_counter()
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    model.to(device)
    out_dir = Path(config.out_dir) if config.out_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if bigram is None:
        bigram = getattr(task, "bigram", None)
    release = _staged_names(model, config)
    trainable = [p for n, p in model.named_parameters() if p.requires_grad or n in release]
    if not trainable:
        raise ValueError("the model has no trainable parameter (all are frozen)")
    optimizer = _make_optimizer(trainable, config)
    generator = torch.Generator().manual_seed(config.seed)
    start, history = 0, []

    if config.resume:
        assert out_dir is not None
        folder = latest_checkpoint(out_dir)
        if folder is not None:
            ckpt = load_checkpoint(folder)
            saved_cfg = {k: v for k, v in ckpt["model"].cfg.to_dict().items() if k != "device"}
            own_cfg = {k: v for k, v in model.cfg.to_dict().items() if k != "device"}
            if saved_cfg != own_cfg:
                raise CheckpointError(
                    f"checkpoint {folder} holds a model with a different configuration"
                )
            with torch.no_grad():
                model.load_state_dict(ckpt["model"].state_dict())
            for (_, p), (_, q) in zip(
                model.named_parameters(), ckpt["model"].named_parameters(), strict=True
            ):
                p.requires_grad_(q.requires_grad)
            optimizer.load_state_dict(ckpt["optimizer_state"])
            generator.set_state(ckpt["generator_state"])
            start = ckpt["step"]
            history = [r for r in read_metrics(out_dir) if r.get("step", 0) <= start]
    if start > config.steps:
        raise ValueError(
            f"checkpoint is at step {start}, beyond config.steps={config.steps}; expected "
            "steps >= the checkpoint's step"
        )

    eval_batch = task.sample(
        seed=config.eval_seed,
        batch_size=config.eval_batch_size,
        seq_len=config.seq_len or task.seq_len,
    )
    params_by_name = dict(model.named_parameters())
    losses: list[float] = []
    step = start
    completed = start
    consistent = True  # the model/optimizer/generator describe `step` completed steps
    bar = tqdm(
        total=config.steps,
        initial=start,
        disable=not config.progress,
        desc=model.cfg.model_name,
        dynamic_ncols=True,
    )
    ema_acc: float | None = None

    def log(step_now: int) -> None:
        rec: dict[str, Any] = {"step": step_now, "lr": config.lr * lr_factor(config, step_now)}
        if losses:
            rec["train_loss"] = losses[-1]
        rec.update(evaluate(model, eval_batch))
        if config.probes:
            from tlassoc.memory.probes import recall_probes

            rec.update(
                recall_probes(
                    model,
                    triggers=_task_triggers(task),
                    bigram=bigram,
                    n_positions=config.seq_len or task.seq_len,
                )
            )
        rec["seconds"] = time.perf_counter() - t_start
        history.append(rec)
        if out_dir is not None:
            _write_metrics(out_dir, history)

    try:
        with _Interrupt() as interrupt:
            if start == 0 and config.log_every:
                log(0)
            model.train()
            for step in range(start, config.steps):
                for name, at in release.items():
                    params_by_name[name].requires_grad_(step >= at)
                batch = task.sample(
                    generator=generator,
                    batch_size=config.batch_size or task.batch_size,
                    seq_len=config.seq_len or task.seq_len,
                )
                consistent = False
                tokens = batch.tokens.to(device)
                targets, labels = batch.targets.to(device), batch.labels.to(device)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(config, step)
                logits = model(tokens)
                mask = loss_mask(labels, config.loss_on)
                loss = masked_loss(logits, targets, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                optimizer.step()
                completed = step + 1
                consistent = True
                loss_value = float(loss.detach())
                losses.append(loss_value)
                with torch.no_grad():
                    ic = labels >= 2
                    if bool(ic.any()):
                        acc = float(((logits.argmax(-1) == targets) & ic).sum() / ic.sum())
                        ema_acc = acc if ema_acc is None else 0.9 * ema_acc + 0.1 * acc
                done = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", icl_acc=f"{ema_acc or 0.0:.2f}")
                if callback is not None:
                    callback(done, model, loss_value)
                if config.log_every and (done % config.log_every == 0 or done == config.steps):
                    log(done)
                if (
                    out_dir is not None
                    and config.checkpoint_every
                    and (done % config.checkpoint_every == 0)
                ):
                    _write_checkpoint(out_dir, model, optimizer, generator, done, config)
                if interrupt.flag:
                    raise KeyboardInterrupt
            if config.log_every == 0:
                log(completed)
            if out_dir is not None and not (
                config.checkpoint_every
                and completed % config.checkpoint_every == 0
                and completed > start
            ):
                _write_checkpoint(out_dir, model, optimizer, generator, completed, config)
    except KeyboardInterrupt:
        if out_dir is not None and consistent:
            _write_checkpoint(out_dir, model, optimizer, generator, completed, config)
        raise
    finally:
        bar.close()
        model.eval()
    return TrainResult(model, completed, losses, history, out_dir, time.perf_counter() - t_start)


def _task_triggers(task: Any) -> Tensor | None:
    if getattr(task, "trigger_mode", None) == "fixed":
        return task.fixed_triggers
    return None


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r}; expected an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r}; expected an integer >= {minimum}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {list(choices)}")


__all__ = [
    "RECIPES",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "full_model_config",
    "latest_checkpoint",
    "load_checkpoint",
    "loss_mask",
    "lr_factor",
    "masked_loss",
    "read_metrics",
    "recipe",
    "save_checkpoint",
    "train",
]


class _CallableModule(types.ModuleType):
    """Lets ``tlassoc.train(model, task, config)`` call :func:`train` while ``tlassoc.train`` stays
    the module (so ``tlassoc.train.TrainConfig`` and ``import tlassoc.train`` keep working)."""

    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
