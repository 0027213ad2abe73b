"""The training loop: optimizer steps on trigger-task batches, logging, checkpoints, resume.

:func:`train` runs SGD (with momentum) or AdamW on batches of a task, with a learning-rate
schedule, weight decay, loss on all positions or only the in-context ones (label >= 2) and
parameters released at given steps (:class:`~tlassoc.config.TrainConfig`). Every ``log_every``
steps it evaluates a fixed held-out batch (:func:`~tlassoc.training.evaluate.evaluate`) plus the
caller's ``evaluators`` (e.g. :func:`tlassoc.memory.probe_evaluator`) and, with ``out_dir``,
writes the records to ``out_dir/metrics.jsonl``. Every ``checkpoint_every`` steps it writes a
checkpoint; ``resume=True`` continues from the last one and ends with the same bits as a run
that was never interrupted. Ctrl-C finishes the current step, writes a checkpoint and re-raises
``KeyboardInterrupt``.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> from tlassoc.data import BigramModel, TriggerBigramTask
    >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64))
    >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=32, batch_size=8)
    >>> cfg = TrainConfig.simplified(steps=3, batch_size=8)
    >>> result = train(model, task, cfg, progress=False)
    >>> result.step, len(result.losses)
    (3, 3)
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlassoc._io import atomic_write_text
from tlassoc.config.train import TrainConfig
from tlassoc.model import AssocTransformer, CheckpointError
from tlassoc.training.checkpoint import latest_checkpoint, load_checkpoint, write_checkpoint
from tlassoc.training.evaluate import evaluate, loss_mask, masked_loss

METRICS_FILE = "metrics.jsonl"

#: An extra evaluator: called with the model (in eval mode, no grad) at every logging step;
#: returns numbers to add to the metrics record.
Evaluator = Callable[[AssocTransformer], dict[str, float]]


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


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``metrics.jsonl`` atomically (strict JSON: non-finite numbers become ``null``)."""
    lines = (json.dumps({k: _strict(v) for k, v in rec.items()}) for rec in history)
    atomic_write_text(out_dir / METRICS_FILE, "".join(line + "\n" for line in lines))


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not JSON: {err}") from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path} line {number} is a {type(record).__name__}; expected an object"
            )
        records.append(record)
    return records


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


@dataclass
class _State:
    """Everything a step changes, in one place (what a checkpoint stores)."""

    model: AssocTransformer
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int
    history: list[dict[str, Any]]


def _resume(state: _State, out_dir: Path) -> None:
    folder = latest_checkpoint(out_dir)
    if folder is None:
        return
    ckpt = load_checkpoint(folder)
    saved = {k: v for k, v in ckpt["model"].cfg.to_dict().items() if k != "device"}
    own = {k: v for k, v in state.model.cfg.to_dict().items() if k != "device"}
    if saved != own:
        raise CheckpointError(f"checkpoint {folder} holds a model with a different configuration")
    with torch.no_grad():
        state.model.load_state_dict(ckpt["model"].state_dict())
    for (_, p), (_, q) in zip(
        state.model.named_parameters(), ckpt["model"].named_parameters(), strict=True
    ):
        p.requires_grad_(q.requires_grad)
    state.optimizer.load_state_dict(ckpt["optimizer_state"])
    state.generator.set_state(ckpt["generator_state"])
    state.step = ckpt["step"]
    state.history = [r for r in read_metrics(out_dir) if r.get("step", 0) <= state.step]


def _step(state: _State, task: Any, config: TrainConfig, trainable: list, device: Any) -> tuple:
    """One optimizer step; returns ``(loss, in-context accuracy or None)``."""
    batch = task.sample(generator=state.generator, batch_size=config.batch_size)
    tokens = batch.tokens.to(device)
    targets, labels = batch.targets.to(device), batch.labels.to(device)
    for group in state.optimizer.param_groups:
        group["lr"] = config.lr * lr_factor(config, state.step)
    logits = state.model(tokens)
    loss = masked_loss(logits, targets, loss_mask(labels, config.loss_on))
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
    state.optimizer.step()
    with torch.no_grad():
        ic = labels >= 2
        acc = float(((logits.argmax(-1) == targets) & ic).sum() / ic.sum()) if ic.any() else None
    return float(loss.detach()), acc


def train(
    model: AssocTransformer,
    task: Any,
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluators: Sequence[Evaluator] = (),
    callback: Callable[[int, AssocTransformer, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on batches of ``task``.

    Args:
        model: The model; its frozen parameters (``requires_grad=False``) stay as they are.
            Training runs on the model's device.
        task: A :class:`~tlassoc.data.TriggerBigramTask` (anything with ``seq_len`` and
            ``sample(generator=, batch_size=)`` / ``sample(seed=, batch_size=)`` returning
            batches with ``tokens``, ``targets``, ``labels``).
        config: How to train (default: :meth:`TrainConfig.simplified`).
        out_dir: Folder for ``metrics.jsonl`` and ``checkpoints/`` (``None``: write nothing).
        resume: Continue from the last checkpoint in ``out_dir`` (start fresh if there is none).
        progress: Show a tqdm bar with the live loss and in-context accuracy.
        evaluators: Extra measurements logged with every metrics record.
        callback: Called as ``callback(step, model, loss)`` after every completed step.

    Returns:
        A :class:`TrainResult`. With ``resume`` and a checkpoint in ``out_dir``, the model's
        weights are replaced by the checkpoint's and training continues from its step: the
        final weights equal those of an uninterrupted run, bit for bit.

    Raises:
        KeyboardInterrupt: after writing a checkpoint (when ``out_dir`` is set) on Ctrl-C.

    Example:
        >>> from tlassoc import presets
        >>> from tlassoc.data import BigramModel, TriggerBigramTask
        >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=4)
        >>> m = AssocTransformer(presets.ape(d_model=16, n_ctx=16))
        >>> train(m, task, TrainConfig.full(steps=2, batch_size=4), progress=False).step
        2
    """
    config = config if config is not None else TrainConfig.simplified()
    if not isinstance(model, AssocTransformer):
        raise TypeError(f"model={type(model).__name__}; expected an AssocTransformer")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config={type(config).__name__}; expected a TrainConfig")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the folder holding the checkpoints)")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    release = _staged_names(model, config)
    trainable = [p for n, p in model.named_parameters() if p.requires_grad or n in release]
    if not trainable:
        raise ValueError("the model has no trainable parameter (all are frozen)")
    state = _State(
        model,
        _make_optimizer(trainable, config),
        torch.Generator().manual_seed(config.seed),
        0,
        [],
    )
    if resume:
        _resume(state, out)  # type: ignore[arg-type]
    if state.step > config.steps:
        raise ValueError(
            f"checkpoint is at step {state.step}, beyond steps={config.steps}; expected "
            "steps >= the checkpoint's step"
        )
    return _run(state, task, config, out, release, trainable, progress, evaluators, callback)


def _run(
    state: _State,
    task: Any,
    config: TrainConfig,
    out: Path | None,
    release: dict[str, int],
    trainable: list,
    progress: bool,
    evaluators: Sequence[Evaluator],
    callback: Callable | None,
) -> TrainResult:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    model, start = state.model, state.step
    device = next(model.parameters()).device
    eval_batch = task.sample(seed=config.eval_seed, batch_size=config.eval_batch_size)
    params = dict(model.named_parameters())
    losses: list[float] = []
    consistent = True  # model/optimizer/generator describe `state.step` completed steps
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc=model.cfg.model_name)
    ema: float | None = None

    def log() -> None:
        rec: dict[str, Any] = {"step": state.step, "lr": config.lr * lr_factor(config, state.step)}
        if losses:
            rec["train_loss"] = losses[-1]
        rec.update(evaluate(model, eval_batch))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for evaluator in evaluators:
                rec.update(evaluator(model))
        model.train(was_training)
        rec["seconds"] = time.perf_counter() - t_start
        state.history.append(rec)
        if out is not None:
            write_metrics(out, state.history)

    def checkpoint() -> None:
        assert out is not None
        write_checkpoint(
            out, model, state.optimizer, state.generator, state.step, config,
            keep=config.keep_checkpoints,
        )  # fmt: skip

    try:
        with _Interrupt() as interrupt:
            if start == 0 and config.log_every:
                log()
            model.train()
            for step in range(start, config.steps):
                for name, at in release.items():
                    params[name].requires_grad_(step >= at)
                consistent = False
                loss, acc = _step(state, task, config, trainable, device)
                state.step, consistent = step + 1, True
                losses.append(loss)
                if acc is not None:
                    ema = acc if ema is None else 0.9 * ema + 0.1 * acc
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", icl_acc=f"{ema or 0.0:.2f}")
                if callback is not None:
                    callback(state.step, model, loss)
                done = state.step
                if config.log_every and (done % config.log_every == 0 or done == config.steps):
                    log()
                if (
                    out is not None
                    and config.checkpoint_every
                    and done % config.checkpoint_every == 0
                ):
                    checkpoint()
                if interrupt.flag:
                    raise KeyboardInterrupt
            if config.log_every == 0:
                log()
            if out is not None:
                checkpoint()
    except KeyboardInterrupt:
        if out is not None and consistent:
            checkpoint()
        raise
    finally:
        bar.close()
        model.eval()
    seconds = time.perf_counter() - t_start
    return TrainResult(model, state.step, losses, state.history, out, seconds)


__all__ = [
    "METRICS_FILE",
    "Evaluator",
    "TrainResult",
    "lr_factor",
    "read_metrics",
    "train",
    "write_metrics",
]
