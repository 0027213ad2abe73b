"""Pieces shared by the experiments' measurements: settings checks, training one model, the
per-seed loop over encodings (or variants), the :class:`Result`, trigger rates.

The report side (verdicts, tables, setting paragraphs) is in :mod:`._report_kit`.

Example:
    >>> check_runs(("relative", "standard"), (0, 1))
    >>> label("relative"), label("standard")
    ('RPE', 'APE')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tlassoc.config import POSITIONAL_TYPES
from tlassoc.config.train import check_int
from tlassoc.experiments.framework import Result, environment

#: The training part of the quick (test) settings of the experiments that train small models
#: on the trigger or analogy task: d 32, 60 steps, batch 16, sequences of 32.
QUICK_TRAINING: dict[str, Any] = {
    "model.d_model": 32,
    "train.steps": 60,
    "train.batch_size": 16,
    "train.log_every": 30,
    "train.eval_batch_size": 16,
    "task.seq_len": 32,
}

#: Display labels of the positional encodings (``positional_embedding_type`` values).
LABELS = {
    "relative": "RPE",
    "standard": "APE",
    "none": "NoPE",
    "alibi": "ALiBi",
    "rotary": "RoPE",
}


def label(encoding: str) -> str:
    """The display label of a ``positional_embedding_type`` (RPE, APE, ...)."""
    return LABELS.get(encoding, encoding)


# ------------------------------------------------------------------------------------------------
# Settings checks (one-line ValueErrors)
# ------------------------------------------------------------------------------------------------


def check_encodings(
    encodings: Sequence[str], allowed: Sequence[str] = POSITIONAL_TYPES, distinct: bool = True
) -> None:
    """A one-line error unless ``encodings`` is non-empty, from ``allowed`` (and distinct).

    Example:
        >>> check_encodings(("none",), allowed=("relative", "standard"))
        Traceback (most recent call last):
        ...
        ValueError: encodings=('none',); expected values in ('relative', 'standard')
    """
    if not encodings or any(e not in allowed for e in encodings):
        raise ValueError(f"encodings={tuple(encodings)!r}; expected values in {allowed}")
    if distinct and len(set(encodings)) != len(encodings):
        raise ValueError(f"encodings={tuple(encodings)!r}; expected each encoding once")


def check_seeds(seeds: Sequence[int], distinct: bool = True) -> None:
    """A one-line error unless ``seeds`` is non-empty, of integers >= 0 (and distinct).

    Example:
        >>> check_seeds((0, 0))
        Traceback (most recent call last):
        ...
        ValueError: seeds=(0, 0); expected distinct seeds
    """
    if not seeds:
        raise ValueError("seeds=(); expected at least one seed")
    for s in seeds:
        check_int("seeds", s, minimum=0)
    if distinct and len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={tuple(seeds)!r}; expected distinct seeds")


def check_runs(encodings: Sequence[str], seeds: Sequence[int]) -> None:
    """One-line errors for bad ``encodings`` or ``seeds`` (at least one of each, no repeats).

    Example:
        >>> check_runs(("sinusoidal",), (0,))
        Traceback (most recent call last):
        ...
        ValueError: encodings=('sinusoidal',); expected values in ('standard', 'relative', 'alibi', 'rotary', 'none')
    """  # noqa: E501
    check_encodings(encodings)
    check_seeds(seeds)


def check_number(name: str, value: Any, interval: str = "[0, 1]", what: str = "a number") -> float:
    """``float(value)``, or a one-line error unless ``value`` is a number (not a bool) in
    ``interval``, written as in the message: ``"[0, 1]"``, ``"(0, 1]"``, ``"(0, 0.5)"``.

    Example:
        >>> check_number("p", 1), check_number("p", 0.5, "(0, 1)")
        (1.0, 0.5)
        >>> check_number("p", 0, "(0, 1]", what="a probability")
        Traceback (most recent call last):
        ...
        ValueError: p=0; expected a probability in (0, 1]
    """
    low, high = (float(x) for x in interval[1:-1].split(","))
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = (low <= value if interval[0] == "[" else low < value) and (
            value <= high if interval[-1] == "]" else value < high
        )
    if not ok:
        raise ValueError(f"{name}={value!r}; expected {what} in {interval}")
    return float(value)


def check_ffn(model: Any, why: str = "the global bigram memory") -> None:
    """A one-line error when ``model`` has no feed-forward layer (``why``: what it stores)."""
    if model.ffn_type is None:
        raise ValueError(f"model.ffn_type=None; expected 'linear' or 'relu' ({why})")


def with_n_ctx(model: Any, n_ctx: int) -> Any:
    """``model`` with ``n_ctx`` (the same object when it already has it)."""
    return model if model.n_ctx == n_ctx else model.replace(n_ctx=n_ctx)


def check_config(config: Any, cls: type, article: str = "a") -> None:
    """A one-line ``TypeError`` unless ``config`` is a ``cls`` ("expected a(n) <cls>")."""
    if not isinstance(config, cls):
        raise TypeError(f"config={type(config).__name__}; expected {article} {cls.__name__}")


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def model_config(model: Any, encoding: str, seed: int) -> Any:
    """``model`` with the positional encoding, a display name and the weight seed replaced."""
    return model.replace(positional_embedding_type=encoding, model_name=label(encoding), seed=seed)


def train_model(
    model_cfg: Any,
    task: Any,
    train_cfg: Any,
    *,
    progress: bool = True,
    evaluators: Sequence[Any] = (),
    tokenizer: Any = None,
) -> tuple[Any, Any, float]:
    """A new :class:`~tlassoc.model.AssocTransformer` of ``model_cfg`` trained on ``task``.

    Returns:
        ``(model, train result, seconds of training)``; the model is left in train mode.
    """
    from tlassoc.model import AssocTransformer
    from tlassoc.training import train

    model = AssocTransformer(model_cfg, tokenizer=tokenizer)
    t0 = time.perf_counter()
    result = train(model, task, train_cfg, progress=progress, evaluators=evaluators)
    return model, result, time.perf_counter() - t0


def train_one(
    config: Any,
    encoding: str,
    seed: int,
    task: Any,
    *,
    progress: bool = True,
    evaluators: Sequence[Any] = (),
) -> tuple[Any, dict[str, Any]]:
    """Train the model of one encoding and seed (``model.seed = train.seed = seed``).

    Returns:
        ``(model, record)``: the trained model (in eval mode) and ``{"train_seconds",
        "final": last logged metrics, "history": logged records}``.

    Example:
        >>> from tlassoc import recipes
        >>> from tlassoc.data import make_task
        >>> run = recipes.get("tutorial").override({"train.steps": 2, "train.batch_size": 4,
        ...     "model.d_model": 16, "task.seq_len": 16, "train.eval_batch_size": 2})
        >>> model, rec = train_one(run, "relative", 0, make_task(run.task, 4), progress=False)
        >>> rec["final"]["step"]
        2
    """
    model, result, seconds = train_model(
        model_config(config.model, encoding, seed),
        task,
        config.train.replace(seed=seed),
        progress=progress,
        evaluators=evaluators,
    )
    record = {
        "train_seconds": seconds,
        "final": {k: v for k, v in result.final_metrics.items() if k != "seconds"},
        "history": result.history,
    }
    return model.eval(), record


# ------------------------------------------------------------------------------------------------
# The per-seed loop and the Result
# ------------------------------------------------------------------------------------------------


@dataclass
class Runs:
    """What :func:`run_grid` collects: one record per seed, and the models and extras of every
    run under ``"<name>-seed<s>"``."""

    per_seed: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


def run_grid(
    seeds: Sequence[int],
    names: Sequence[str],
    run: Callable[[str, int], tuple[Any, ...]],
    head: Callable[[int], dict[str, Any]] | None = None,
) -> Runs:
    """``run(name, seed)`` for every seed, and within it every name (encoding or variant).

    ``run`` returns ``(model, record)`` or ``(model, record, extra)``: ``record`` becomes
    ``per_seed[i][name]``; ``model`` and ``extra`` go to ``models`` and ``extras``. ``head(seed)``
    gives the keys a seed's record starts with.

    Example:
        >>> runs = run_grid((0, 1), ("a",), lambda name, seed: (None, seed * 10))
        >>> runs.per_seed, sorted(runs.models)
        ([{'a': 0}, {'a': 10}], ['a-seed0', 'a-seed1'])
    """
    runs = Runs()
    for seed in seeds:
        record: dict[str, Any] = dict(head(seed)) if head is not None else {}
        for name in names:
            model, record[name], *extra = run(name, seed)
            runs.models[f"{name}-seed{seed}"] = model
            if extra:
                runs.extras[f"{name}-seed{seed}"] = extra[0]
        runs.per_seed.append(record)
    return runs


def crossing_step(
    history: list[dict[str, Any]], key: str, threshold: float, below: bool = False
) -> int | None:
    """The first logged step where ``history[i][key] >= threshold`` (``<=`` with ``below``),
    or ``None`` if it never does (missing and NaN values are passed over).

    Example:
        >>> h = [{"step": 0, "p": 0.1}, {"step": 5, "p": 0.95}, {"step": 10, "p": 0.99}]
        >>> crossing_step(h, "p", 0.9), crossing_step(h, "p", 0.999)
        (5, None)
    """
    for rec in history:
        value = rec.get(key)
        if value is None or value != value:
            continue
        if (value <= threshold) if below else (value >= threshold):
            return int(rec["step"])
    return None


def make_result(
    name: str,
    config: Any,
    per_seed: list[dict[str, Any]],
    t0: float,
    artifacts: dict[str, Any],
    env: dict[str, Any] | None = None,
) -> Result:
    """The :class:`Result` of a measurement that started at ``t0`` (``time.perf_counter()``),
    with the machine (``env``, default :func:`environment`)."""
    return Result(
        name,
        config.to_dict(),
        list(config.seeds),
        per_seed,
        seconds=time.perf_counter() - t0,
        environment=environment() if env is None else env,
        artifacts=artifacts,
    )


def trigger_rates(task: Any, n_sequences: int = 4096, seed: int = 0) -> torch.Tensor:
    """Fraction of training sequences in which each token is a trigger (``[d_vocab]``).

    Example:
        >>> from tlassoc.config import TaskConfig
        >>> from tlassoc.data import make_task
        >>> rates = trigger_rates(make_task(TaskConfig(n_triggers=5), 8), n_sequences=16)
        >>> int((rates == 1.0).sum())  # fixed mode: the five most frequent tokens, always
        5
    """
    batch = task.sample(seed=seed, batch_size=n_sequences, seq_len=2)
    d_vocab = task.d_vocab if hasattr(task, "d_vocab") else task.bigram.d_vocab
    triggers = batch.triggers.cpu()
    hits = torch.zeros(n_sequences, d_vocab).scatter_(1, triggers, 1.0)
    return hits.mean(0)


def trained_queries(task: Any, min_rate: float) -> list[int]:
    """The tokens that are triggers in at least ``min_rate`` of ``task``'s sequences."""
    rates = trigger_rates(task)
    return [int(i) for i in (rates >= min_rate).nonzero().flatten()]


__all__ = [
    "LABELS",
    "Runs",
    "check_config",
    "check_encodings",
    "check_ffn",
    "check_number",
    "check_runs",
    "check_seeds",
    "crossing_step",
    "label",
    "make_result",
    "model_config",
    "run_grid",
    "train_model",
    "train_one",
    "trained_queries",
    "trigger_rates",
    "with_n_ctx",
]
