"""The training loop: optimizer steps on trigger-task batches, logging, checkpoints, resume.

:func:`train` runs SGD (with momentum) or AdamW on batches of a task, with a learning-rate
schedule, weight decay, loss on all positions or only the in-context ones (label >= 2) and
parameters released at given steps (:class:`~tlassoc.config.TrainConfig`). Every ``log_every``
steps it evaluates a fixed held-out batch (:func:`~tlassoc.training.evaluate.evaluate`) plus the
caller's ``evaluators`` (e.g. :func:`tlassoc.memory.probe_evaluator`) and, with ``out_dir``,
writes the records to ``out_dir/metrics.jsonl``. Every ``checkpoint_every`` steps it writes a
checkpoint; ``resume=True`` continues from the last one and ends with the same bits as a run
that was never interrupted. Ctrl-C finishes the current step, writes a checkpoint and re-raises
``KeyboardInterrupt`` (a second Ctrl-C stops at once; the last complete checkpoint stays valid).

Safety (``docs/reliability.md``): the output folder is locked for the whole call; a NaN or
infinite loss or weight stops the run with :class:`DivergenceError` naming the step, and no
checkpoint of a non-finite state is ever written; a resume verifies the checkpoint's hashes,
refuses changed settings unless ``accept_changes=True`` and refuses a ``metrics.jsonl`` that no
longer matches the checkpoint.

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
import functools
import hashlib
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlassoc._io import atomic_write_text, folder_lock
from tlassoc.config.train import TrainConfig
from tlassoc.model import AssocTransformer, CheckpointError, check_attention_memory
from tlassoc.training.checkpoint import (
    DivergenceError,
    clean_stale,
    clear_run,
    latest_checkpoint,
    load_checkpoint,
    non_finite,
    remove_after,
    resume_differences,
    run_files,
    write_checkpoint,
)
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


def metrics_text(history: list[dict[str, Any]]) -> str:
    """The text of ``metrics.jsonl`` for ``history``: one strict-JSON object per line
    (non-finite numbers become ``null``).

    Example:
        >>> metrics_text([{"step": 0, "loss": float("nan")}])
        '{"step": 0, "loss": null}\\n'
    """
    lines = (json.dumps({k: _strict(v) for k, v in rec.items()}) for rec in history)
    return "".join(line + "\n" for line in lines)


def write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``metrics.jsonl`` atomically (strict JSON: non-finite numbers become ``null``)."""
    atomic_write_text(Path(out_dir) / METRICS_FILE, metrics_text(history))


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a folder holding one is accepted too).

    Raises:
        CheckpointError: a line is not JSON or not a JSON object (file and line are named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text ({err}); expected JSON lines") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CheckpointError(
                f"{path} line {number} is not JSON ({err}); expected one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise CheckpointError(
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


def _resume(state: _State, out: Path, config: TrainConfig, accept_changes: bool) -> Path | None:
    """Load the last checkpoint of ``out`` into ``state``; ``None`` when there is none."""
    folder = latest_checkpoint(out)
    if folder is None:
        warnings.warn(
            f"resume=True, but {out} holds no checkpoint; starting from step 0", stacklevel=3
        )
        return None
    ckpt = load_checkpoint(folder)
    if ckpt["step"] > config.steps:
        raise ValueError(
            f"train.steps={config.steps}, but the checkpoint {folder.name} is at step "
            f"{ckpt['step']}; expected steps >= the checkpoint's step"
        )
    saved = {"model": ckpt["model"].cfg.to_dict(), "train": ckpt["train_config"]}
    requested = {"model": state.model.cfg.to_dict(), "train": config.to_dict()}
    changes = resume_differences(saved, requested)
    if changes and not accept_changes:
        raise CheckpointError(
            f"{folder} was written with other settings: {'; '.join(changes)}; expected the same "
            f"settings to resume (e.g. --set {changes[0].split(' (now')[0]}), or accept_changes="
            "True (--accept-changes) to continue with the new ones"
        )
    _load_into(state, ckpt, folder)
    records = read_metrics(out)
    if any(not isinstance(r.get("step"), int) for r in records):
        raise CheckpointError(f"{out / METRICS_FILE} has a record without an integer 'step'")
    records = [r for r in records if r["step"] <= state.step]
    expected = ckpt["extra"].get("metrics_sha256")
    found = hashlib.sha256(metrics_text(records).encode()).hexdigest()
    if expected is not None and found != expected and not accept_changes:
        raise CheckpointError(
            f"{out / METRICS_FILE} does not hold the {ckpt['extra'].get('metrics_records')} "
            f"records up to step {state.step} that {folder.name} was written with "
            f"({len(records)} found, sha256 differs); expected the file as the run left it, or "
            "accept_changes=True (--accept-changes) to continue with it as it is"
        )
    state.history = records
    remove_after(out, state.step)
    return folder


def _load_into(state: _State, ckpt: dict[str, Any], folder: Path) -> None:
    saved_model = ckpt["model"]
    mine = state.model.state_dict()
    for name, tensor in saved_model.state_dict().items():
        if name in mine and mine[name].shape != tensor.shape:
            raise CheckpointError(
                f"{folder / 'model.safetensors'}: {name} has shape {tuple(tensor.shape)}, the "
                f"model to resume has {tuple(mine[name].shape)}; expected the same model settings"
            )
    try:
        with torch.no_grad():
            state.model.load_state_dict(saved_model.state_dict())
        for (_, p), (_, q) in zip(
            state.model.named_parameters(), saved_model.named_parameters(), strict=True
        ):
            p.requires_grad_(q.requires_grad)
        state.optimizer.load_state_dict(ckpt["optimizer_state"])
        state.generator.set_state(ckpt["generator_state"])
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{folder} does not fit the model or optimizer to resume ({first}); expected the "
            "same model and trainable parameters"
        ) from None
    state.step = ckpt["step"]


def _step(state: _State, task: Any, config: TrainConfig, trainable: list, device: Any) -> tuple:
    """One optimizer step; returns ``(loss, in-context accuracy or None)``.

    Raises :class:`DivergenceError` before the update when the loss is not finite, and after
    it when a weight is not finite.
    """
    batch = task.sample(generator=state.generator, batch_size=config.batch_size)
    tokens = batch.tokens.to(device)
    targets, labels = batch.targets.to(device), batch.labels.to(device)
    for group in state.optimizer.param_groups:
        group["lr"] = config.lr * lr_factor(config, state.step)
    logits = state.model(tokens)
    loss = masked_loss(logits, targets, loss_mask(labels, config.loss_on))
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergenceError(f"the loss is {value}")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
    state.optimizer.step()
    if not bool(torch.stack([torch.isfinite(p).all() for p in trainable]).all()):
        bad = non_finite(state.model)
        raise DivergenceError(f"the update made {bad[0] if bad else 'a weight'} NaN or infinite")
    with torch.no_grad():
        ic = labels >= 2
        acc = float(((logits.argmax(-1) == targets) & ic).sum() / ic.sum()) if ic.any() else None
    return value, acc


def _check_arguments(model: Any, task: Any, config: Any, out_dir: Any, flags: dict) -> None:
    if flags["resume"] and out_dir is None:
        raise ValueError("resume=True needs out_dir (the folder holding the checkpoints)")
    if flags["resume"] and flags["overwrite"]:
        raise ValueError("resume=True and overwrite=True; expected at most one of them")
    if not isinstance(model, AssocTransformer):
        raise TypeError(f"model={type(model).__name__}; expected an AssocTransformer")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config={type(config).__name__}; expected a TrainConfig")
    if not callable(getattr(task, "sample", None)) or not isinstance(
        getattr(task, "seq_len", None), int
    ):
        raise TypeError(
            f"task={type(task).__name__}; expected a task with sample() and an integer seq_len "
            "(e.g. tlassoc.data.make_task(TaskConfig()))"
        )
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir={out_dir!r}; expected a folder path or None")
    for name, value in flags.items():
        if name == "evaluators":
            if isinstance(value, (str, bytes)) or not all(callable(e) for e in value):
                raise TypeError(f"evaluators={value!r}; expected a sequence of callables")
        elif name == "callback":
            if value is not None and not callable(value):
                raise TypeError(f"callback={value!r}; expected a callable or None")
        elif not isinstance(value, bool):
            raise TypeError(f"{name}={value!r}; expected True or False")


def _check_sizes(model: AssocTransformer, task: Any, config: TrainConfig) -> None:
    """Numbers the model's dtype cannot hold, and batches whose attention would not fit."""
    dtype = model.cfg.dtype
    top = torch.finfo(dtype).max
    for name in ("lr", "weight_decay", "grad_clip"):
        value = getattr(config, name)
        if value is not None and value > top:
            raise ValueError(
                f"train.{name}={value!r}; expected at most {top:.5g}, the largest {dtype} number "
                "(the model's dtype)"
            )
    check_attention_memory(
        model.cfg, config.batch_size, task.seq_len, layers=model.cfg.n_layers, what="training"
    )


def train(
    model: AssocTransformer,
    task: Any,
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    accept_changes: bool = False,
    progress: bool = True,
    evaluators: Sequence[Evaluator] = (),
    callback: Callable[[int, AssocTransformer, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on batches of ``task``.

    With ``out_dir``, the folder is locked for the whole call (:func:`tlassoc._io.folder_lock`:
    a second run into it fails at once, naming the holder), and must not hold another run's
    files unless ``resume`` or ``overwrite`` says what to do with them.

    Args:
        model: The model; its frozen parameters (``requires_grad=False``) stay as they are.
            Training runs on the model's device.
        task: A :class:`~tlassoc.data.TriggerBigramTask` (anything with ``seq_len`` and
            ``sample(generator=, batch_size=)`` / ``sample(seed=, batch_size=)`` returning
            batches with ``tokens``, ``targets``, ``labels``).
        config: How to train (default: :meth:`TrainConfig.simplified`).
        out_dir: Folder for ``metrics.jsonl`` and ``checkpoints/`` (``None``: write nothing).
        resume: Continue from the last checkpoint in ``out_dir`` (start fresh, with a warning,
            if there is none). The checkpoint's model and training settings must equal the
            requested ones, except those in :data:`~tlassoc.training.checkpoint.RESUME_FREE`.
        overwrite: Replace a previous run's ``checkpoints/`` and ``metrics.jsonl`` in
            ``out_dir`` (other files are left alone).
        accept_changes: With ``resume``, continue even though settings differ from the
            checkpoint's (or ``metrics.jsonl`` was changed).
        progress: Show a tqdm bar with the live loss and in-context accuracy.
        evaluators: Extra measurements logged with every metrics record.
        callback: Called as ``callback(step, model, loss)`` after every completed step.

    Returns:
        A :class:`TrainResult`. With ``resume`` and a checkpoint in ``out_dir``, the model's
        weights are replaced by the checkpoint's and training continues from its step: the
        final weights equal those of an uninterrupted run, bit for bit. Resuming a finished run
        writes nothing.

    Raises:
        KeyboardInterrupt: after writing a checkpoint (when ``out_dir`` is set) on Ctrl-C.
        DivergenceError: the loss or a weight became NaN or infinite (the step is named; no
            checkpoint of that state is written, the earlier ones are kept).
        FolderLockedError: another process writes ``out_dir``.
        CheckpointError: the checkpoint to resume is damaged or does not fit.
        ValueError: bad settings, or ``out_dir`` holds a run and neither ``resume`` nor
            ``overwrite`` is set.

    Example:
        >>> from tlassoc import presets
        >>> from tlassoc.data import BigramModel, TriggerBigramTask
        >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=4)
        >>> m = AssocTransformer(presets.ape(d_model=16, n_ctx=16))
        >>> train(m, task, TrainConfig.full(steps=2, batch_size=4), progress=False).step
        2
    """
    config = config if config is not None else TrainConfig.simplified()
    flags = dict(resume=resume, overwrite=overwrite, accept_changes=accept_changes)
    flags.update(progress=progress, evaluators=evaluators, callback=callback)
    _check_arguments(model, task, config, out_dir, flags)
    _check_sizes(model, task, config)
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
    run = functools.partial(
        _run, state, task, config, release=release, trainable=trainable, progress=progress,
        evaluators=evaluators, callback=callback,
    )  # fmt: skip
    if out_dir is None:
        return run(None)
    out = Path(out_dir)
    with folder_lock(out):
        clean_stale(out)
        existing = run_files(out)
        if overwrite:
            clear_run(out)
        elif existing and not resume:
            raise ValueError(
                f"out_dir={str(out)!r} already holds a run ({', '.join(existing)}); expected an "
                "empty folder: resume=True (--resume) continues it, overwrite=True "
                "(--overwrite) replaces it"
            )
        if resume:
            _resume(state, out, config, accept_changes)
        return run(out)


def _run(
    state: _State,
    task: Any,
    config: TrainConfig,
    out: Path | None,
    *,
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

    def log(**extra: Any) -> None:
        rec: dict[str, Any] = {"step": state.step, "lr": config.lr * lr_factor(config, state.step)}
        if losses:
            rec["train_loss"] = losses[-1]
        if extra:
            rec.update(extra)
        else:
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
        text = metrics_text(state.history)
        extra = {
            "metrics_records": len(state.history),
            "metrics_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        write_checkpoint(
            out, model, state.optimizer, state.generator, state.step, config,
            keep=config.keep_checkpoints, extra=extra,
        )  # fmt: skip

    def due(step: int) -> bool:  # whether a metrics record belongs to this step
        if config.log_every:
            return step % config.log_every == 0 or step == config.steps
        return step == config.steps

    def logged(step: int) -> bool:
        return bool(state.history) and state.history[-1].get("step") == step

    try:
        with _Interrupt() as interrupt:
            if start == 0 and config.log_every and not logged(0):
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
                if config.log_every and due(state.step):
                    log()
                if out is not None and config.checkpoint_every:
                    if state.step % config.checkpoint_every == 0:
                        checkpoint()
                if interrupt.flag:
                    raise KeyboardInterrupt
            if due(state.step) and not logged(state.step):
                log()
            if out is not None:
                checkpoint()
    except KeyboardInterrupt:
        if out is not None and consistent:
            # the step's record may be missing (Ctrl-C inside log()): complete it first, so the
            # checkpoint and metrics.jsonl describe the same steps
            if due(state.step) and not logged(state.step):
                log()
            metrics = out / METRICS_FILE
            if not metrics.is_file() or metrics.read_text() != metrics_text(state.history):
                write_metrics(out, state.history)
            checkpoint()
        raise
    except DivergenceError as err:
        if consistent:  # refused while writing a checkpoint
            raise
        at = state.step + 1
        log(train_loss=None, diverged=True, step=at)
        kept = latest_checkpoint(out) if out is not None else None
        where = f"; last checkpoint kept: {kept}" if kept else "; no checkpoint was written"
        raise DivergenceError(
            f"training diverged at step {at} of {config.steps}: {err} (train.lr={config.lr:g})"
            f"{where if out is not None else ''}; expected finite values (try a smaller "
            "train.lr or train.grad_clip)"
        ) from None
    finally:
        bar.close()
        model.eval()
    seconds = time.perf_counter() - t_start
    return TrainResult(model, state.step, losses, state.history, out, seconds)


__all__ = [
    "METRICS_FILE",
    "DivergenceError",
    "Evaluator",
    "TrainResult",
    "lr_factor",
    "metrics_text",
    "read_metrics",
    "train",
    "write_metrics",
]
