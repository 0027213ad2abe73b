"""Pieces shared by the paper experiments (``knowledge_hijack``, ``stronger_amt``, ``analogy``,
``ood_outputs``): settings checks, one model per encoding and seed, trigger rates, report parts.

Example:
    >>> check_runs(("relative", "standard"), (0, 1))
    >>> label("relative"), label("standard")
    ('RPE', 'APE')
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from tlassoc.config import POSITIONAL_TYPES
from tlassoc.config.train import check_int
from tlassoc.experiments.framework import ClaimOutcome, Result, fmt, mean_interval

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


def check_runs(encodings: Sequence[str], seeds: Sequence[int]) -> None:
    """One-line errors for bad ``encodings`` or ``seeds`` (at least one of each, no repeats).

    Example:
        >>> check_runs(("sinusoidal",), (0,))
        Traceback (most recent call last):
        ...
        ValueError: encodings=('sinusoidal',); expected values in ('standard', 'relative', 'alibi', 'rotary', 'none')
    """  # noqa: E501
    if not encodings or any(e not in POSITIONAL_TYPES for e in encodings):
        raise ValueError(f"encodings={tuple(encodings)!r}; expected values in {POSITIONAL_TYPES}")
    if len(set(encodings)) != len(encodings):
        raise ValueError(f"encodings={tuple(encodings)!r}; expected each encoding once")
    if not seeds:
        raise ValueError("seeds=(); expected at least one seed")
    for s in seeds:
        check_int("seeds", s, minimum=0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={tuple(seeds)!r}; expected distinct seeds")


def model_config(model: Any, encoding: str, seed: int) -> Any:
    """``model`` with the positional encoding, a display name and the weight seed replaced."""
    return model.replace(positional_embedding_type=encoding, model_name=label(encoding), seed=seed)


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
    from tlassoc.model import AssocTransformer
    from tlassoc.training import train

    model = AssocTransformer(model_config(config.model, encoding, seed))
    t0 = time.perf_counter()
    result = train(
        model, task, config.train.replace(seed=seed), progress=progress, evaluators=evaluators
    )
    record = {
        "train_seconds": time.perf_counter() - t0,
        "final": {k: v for k, v in result.final_metrics.items() if k != "seconds"},
        "history": result.history,
    }
    return model.eval(), record


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


def verdict_lines(outcomes: Sequence[ClaimOutcome]) -> list[str]:
    """``## Verdict`` with one paragraph per claim: meaning, statement, per-seed values, mean."""
    lines = ["## Verdict", ""]
    for o in outcomes:
        state = "holds" if o.holds else "does not hold"
        values = ", ".join(fmt(v) for v in o.values)
        lines += [
            f"**{o.claim.name}** {state}. {o.claim.meaning} Checked as `{o.claim.statement}` "
            f"for every seed; measured {values} (mean {fmt(o.mean)} [{fmt(o.low)}, "
            f"{fmt(o.high)}]).",
            "",
        ]
    if not all(o.holds for o in outcomes):
        lines += [
            "Not every claim reproduces at these settings; the numbers are the measured ones "
            "(no setting was tuned to make a claim pass).",
            "",
        ]
    return lines


def seed_table(result: Result, rows: Sequence[tuple[str, str]], digits: int = 3) -> list[str]:
    """A markdown table with one row per ``(name, metric path)``: per-seed values and the mean
    [95 % interval] over seeds (``n/a`` where a value is missing)."""
    head = " | ".join(f"seed {s}" for s in result.seeds)
    lines = [f"| quantity | {head} | mean [95 % interval] |"]
    lines.append("|---" * (len(result.seeds) + 2) + "|")
    for name, path in rows:
        values = []
        for rec in result.per_seed:
            value: Any = rec
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            values.append(value if isinstance(value, (int, float)) else None)
        mean, low, high = mean_interval([v for v in values if v is not None])
        cells = " | ".join(str(v) if isinstance(v, int) else fmt(v, digits) for v in values)
        lines.append(
            f"| {name} | {cells} | {fmt(mean, digits)} [{fmt(low, digits)}, {fmt(high, digits)}] |"
        )
    return lines


def setting_line(result: Result, what: str) -> str:
    """One paragraph: the model, the training, the seeds, the wall time and the machine."""
    c, env = result.config, result.environment
    m, t, task = c["model"], c["train"], c["task"]
    return (
        f"{what} Model: simplified two-layer transformer, d_model {m['d_model']}, "
        f"feed-forward {m['ffn_type'] or 'none'}, relative form {m['relative_form']} "
        f"(distances clipped at {m['max_relative_distance'] - 1}); trained at T_train = "
        f"{task['seq_len']} for {t['steps']} steps ({t['optimizer']}, lr {t['lr']}, "
        f"{t['schedule']} schedule, batch {t['batch_size']}, loss on {t['loss_on']}). "
        f"Encodings {', '.join(label(e) for e in c['encodings'])}; seeds "
        f"{', '.join(map(str, result.seeds))}. Wall time {result.seconds:.0f} s on "
        f"{env.get('machine')} with {env.get('cpu_count')} cores "
        f"({env.get('torch_threads')} torch threads)."
    )


def figure_list(figures: dict[str, Any]) -> list[str]:
    """The closing ``Figures:`` line of a report."""
    return ["", "Figures: " + ", ".join(f"`{n}`" for n in figures), ""]


__all__ = [
    "LABELS",
    "check_runs",
    "figure_list",
    "label",
    "model_config",
    "seed_table",
    "setting_line",
    "train_one",
    "trigger_rates",
    "verdict_lines",
]
