"""The report of the analogy experiment: verdicts, tables, figures."""

from __future__ import annotations

from typing import Any

from tlassoc.experiments import _kit
from tlassoc.experiments._plots import bar_positions, mean_bar, pyplot, save_png
from tlassoc.experiments._report_kit import (
    encoding_tables,
    finish_report,
    report_head,
    seed_table,
    setting_line,
)
from tlassoc.experiments.framework import Report, Result

WHERE = (
    ("inside", "inside T_train"),
    ("beyond", "beyond T_train (remapped pairs only after a prefix)"),
    ("ordinary_beyond", "beyond T_train on ordinary long sequences"),
)


def _rows(enc: str) -> list[tuple[str, str]]:
    rows = [
        ("training: accuracy on remapped capitals (label >= 2)", f"{enc}.final.acc_ge2"),
        ("training: loss on global pairs", f"{enc}.final.loss_global"),
        ("training: previous-token argmax accuracy", f"{enc}.final.prev_token_acc"),
    ]
    for key, text in WHERE:
        rows += [
            (f"global recall, {text}", f"{enc}.{key}.global_recall"),
            (f"in-context override, {text}", f"{enc}.{key}.override"),
            (f"override targets answered with the true country, {text}",
             f"{enc}.{key}.override_says_true_country"),
            (f"first occurrence answered with the true country, {text}",
             f"{enc}.{key}.first_says_true_country"),
        ]  # fmt: skip
    return rows + [
        ("override drop (inside - beyond)", f"{enc}.override_drop"),
        ("global-recall drop (inside - beyond)", f"{enc}.global_drop"),
        ("training seconds", f"{enc}.train_seconds"),
    ]


def _tables(result: Result) -> list[str]:
    lines = encoding_tables(result, _rows)
    if "rpe_minus_ape_beyond" in result.per_seed[0]:
        lines += ["## RPE against APE", ""]
        lines += seed_table(
            result, [("override beyond T_train, RPE - APE", "rpe_minus_ape_beyond")]
        )
        lines.append("")
    return lines


def _bars(result: Result, path: Any) -> None:
    plt = pyplot()
    encs = result.config["encodings"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / max(1, len(encs))
    for ax, metric, title in (
        (axes[0], "global_recall", "Global recall (true country)"),
        (axes[1], "override", "In-context override (remapped country)"),
    ):
        for i, enc in enumerate(encs):
            bars = [
                mean_bar([r[enc][key][metric] for r in result.per_seed]) for key, _ in WHERE[:2]
            ]
            ax.bar(bar_positions(2, i, len(encs), width), [m for m, _ in bars], width,
                   yerr=[e for _, e in bars], capsize=3, label=_kit.label(enc))  # fmt: skip
        ax.set_xticks(range(2), ["inside T_train", "beyond T_train"])
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.legend(fontsize=8)
    save_png(fig, path)


def _smooth(values: list[float | None], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        got = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
        out.append(sum(got) / len(got) if got else float("nan"))
    return out


def _positions(result: Result, path: Any) -> None:
    plt = pyplot()
    T = result.config["task"]["seq_len"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for enc in result.config["encodings"]:
        for key, style in (("global", "--"), ("override", "-")):
            curves = [r[enc]["per_position"][key] for r in result.per_seed]
            mean = []
            for vals in zip(*curves, strict=True):
                got = [v for v in vals if v is not None]
                mean.append(sum(got) / len(got) if got else None)
            what = "global recall" if key == "global" else "in-context override"
            ax.plot(_smooth(mean, 8), style, label=f"{_kit.label(enc)}: {what}")
    ax.axvline(T, color="gray", ls=":", label=f"T_train = {T}")
    ax.set_xlabel("position t (ordinary sequences)")
    ax.set_ylabel("accuracy (mean over seeds, 8-position window)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Capital-country pairs by position")
    ax.legend(fontsize=8)
    save_png(fig, path)


def build_report(experiment: Any, result: Result) -> Report:
    """Markdown (verdicts, claims, tables), figures."""
    figures: dict[str, Any] = {
        "accuracy.png": lambda p: _bars(result, p),
        "by_position.png": lambda p: _positions(result, p),
    }
    c = result.config
    T, n = c["task"]["seq_len"], c["eval_multiple"] * c["task"]["seq_len"]
    setting = setting_line(
        result,
        f"Capital-country task: {c['task']['n_triggers']} remapped capitals per sequence, a "
        f"pair slot holds one with probability {c['p_trigger']:g}; {c['eval_sequences']} "
        f"evaluation sequences of {T} tokens (inside) and of {n} tokens whose remapped "
        f"capitals all come after a prefix of {n - T} tokens of global pairs (beyond).",
    )
    title = "Analogy: capital-country pairs, global against in-context"
    return finish_report(report_head(experiment, result, title, setting) + _tables(result), figures)


__all__ = ["build_report"]
