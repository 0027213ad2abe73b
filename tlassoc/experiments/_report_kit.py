"""Pieces shared by the experiments' reports: the head (title, setting, verdicts, claims), the
per-seed tables, the setting paragraph and the closing figure list.

Example:
    >>> interval_cell([1.0, 2.0, 3.0, None])
    '2.000 [-0.484, 4.484]'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tlassoc.experiments._kit import label
from tlassoc.experiments.framework import (
    ClaimOutcome,
    Report,
    Result,
    claims_table,
    fmt,
    mean_interval,
)


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


def report_head(experiment: Any, result: Result, title: str, setting: str) -> list[str]:
    """The start of a report: ``# title``, the ``setting`` paragraph, the verdicts and the
    ``## Claims`` table of ``experiment``'s claims on ``result``."""
    outcomes = experiment.evaluate_claims(result)
    lines = [f"# {title}", "", setting, ""]
    return lines + verdict_lines(outcomes) + ["## Claims", "", claims_table(outcomes), ""]


def finish_report(lines: list[str], figures: dict[str, Any]) -> Report:
    """The :class:`Report` of ``lines`` closed by the ``Figures:`` line of ``figures``."""
    return Report("\n".join(lines + figure_list(figures)), figures)


def figure_list(figures: dict[str, Any]) -> list[str]:
    """The closing ``Figures:`` line of a report."""
    return ["", "Figures: " + ", ".join(f"`{n}`" for n in figures), ""]


def interval_cell(values: Sequence[Any], digits: int = 3) -> str:
    """``mean [low, high]``: the mean and 95 % interval over ``values`` (``None`` dropped)."""
    m, lo, hi = mean_interval([v for v in values if v is not None])
    return f"{fmt(m, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def trigger_task_rows(enc: str) -> list[tuple[str, str]]:
    """The first rows of a table of models trained on the trigger task with the loss on all
    tokens: in-context accuracy and the global-bigram loss."""
    return [
        ("in-context accuracy, label >= 2 (trigger task)", f"{enc}.final.acc_ge2"),
        ("global-bigram loss (nats; floor 2.453)", f"{enc}.final.loss_global"),
    ]


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
        cells = " | ".join(str(v) if isinstance(v, int) else fmt(v, digits) for v in values)
        lines.append(f"| {name} | {cells} | {interval_cell(values, digits)} |")
    return lines


def wall_time(result: Result) -> str:
    """``Wall time N s on <machine> with <n> cores (<t> torch threads).``"""
    env = result.environment
    return (
        f"Wall time {result.seconds:.0f} s on {env.get('machine')} with {env.get('cpu_count')} "
        f"cores ({env.get('torch_threads')} torch threads)."
    )


def seeds_line(result: Result) -> str:
    """``Seeds 0, 1, 2.`` and the :func:`wall_time` sentence."""
    return f"Seeds {', '.join(map(str, result.seeds))}. {wall_time(result)}"


def setting_line(result: Result, what: str) -> str:
    """One paragraph: the model, the training, the seeds, the wall time and the machine."""
    c = result.config
    m, t, task = c["model"], c["train"], c["task"]
    return (
        f"{what} Model: simplified two-layer transformer, d_model {m['d_model']}, "
        f"feed-forward {m['ffn_type'] or 'none'}, relative form {m['relative_form']} "
        f"(distances clipped at {m['max_relative_distance'] - 1}); trained at T_train = "
        f"{task['seq_len']} for {t['steps']} steps ({t['optimizer']}, lr {t['lr']}, "
        f"{t['schedule']} schedule, batch {t['batch_size']}, loss on {t['loss_on']}). "
        f"Encodings {', '.join(label(e) for e in c['encodings'])}; seeds "
        f"{', '.join(map(str, result.seeds))}. {wall_time(result)}"
    )


def encoding_tables(result: Result, rows_of: Callable[[str], list[tuple[str, str]]]) -> list[str]:
    """One ``## <label>`` section with a :func:`seed_table` per encoding of ``result``;
    ``rows_of(encoding)`` gives the table's rows."""
    lines: list[str] = []
    for enc in result.config["encodings"]:
        lines += [f"## {label(enc)}", ""] + seed_table(result, rows_of(enc)) + [""]
    return lines


__all__ = [
    "encoding_tables",
    "figure_list",
    "finish_report",
    "interval_cell",
    "report_head",
    "seed_table",
    "seeds_line",
    "setting_line",
    "verdict_lines",
    "wall_time",
]
