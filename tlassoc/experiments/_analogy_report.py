"""The report of the analogy experiment: verdicts, tables, figures."""

from __future__ import annotations

from typing import Any

from tlassoc.experiments import _kit
from tlassoc.experiments._plots import pyplot, save_png
from tlassoc.experiments.framework import Report, Result, claims_table, mean_interval

WHERE = (
    ("inside", "inside T_train"),
    ("beyond", "beyond T_train (remapped pairs only after a prefix)"),
    ("ordinary_beyond", "beyond T_train on ordinary long sequences"),
)


def _tables(result: Result) -> list[str]:
    lines: list[str] = []
    for enc in result.config["encodings"]:
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
        rows += [
            ("override drop (inside - beyond)", f"{enc}.override_drop"),
            ("global-recall drop (inside - beyond)", f"{enc}.global_drop"),
            ("training seconds", f"{enc}.train_seconds"),
        ]
        lines += [f"## {_kit.label(enc)}", ""] + _kit.seed_table(result, rows) + [""]
    if "rpe_minus_ape_beyond" in result.per_seed[0]:
        lines += ["## RPE against APE", ""]
        lines += _kit.seed_table(
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
            means, errs = [], []
            for key, _ in WHERE[:2]:
                vals = [r[enc][key][metric] for r in result.per_seed]
                m, _, hi = mean_interval([v for v in vals if v is not None])
                means.append(m if m == m else 0.0)
                errs.append(0.0 if hi != hi else hi - m)
            xs = [k + (i - (len(encs) - 1) / 2) * width for k in range(2)]
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=_kit.label(enc))
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
    outcomes = experiment.evaluate_claims(result)
    figures: dict[str, Any] = {
        "accuracy.png": lambda p: _bars(result, p),
        "by_position.png": lambda p: _positions(result, p),
    }
    c = result.config
    T, n = c["task"]["seq_len"], c["eval_multiple"] * c["task"]["seq_len"]
    lines = [
        "# Analogy: capital-country pairs, global against in-context",
        "",
        _kit.setting_line(
            result,
            f"Capital-country task: {c['task']['n_triggers']} remapped capitals per sequence, a "
            f"pair slot holds one with probability {c['p_trigger']:g}; {c['eval_sequences']} "
            f"evaluation sequences of {T} tokens (inside) and of {n} tokens whose remapped "
            f"capitals all come after a prefix of {n - T} tokens of global pairs (beyond).",
        ),
        "",
    ]
    lines += _kit.verdict_lines(outcomes)
    lines += ["## Claims", "", claims_table(outcomes), ""]
    lines += _tables(result)
    lines += _kit.figure_list(figures)
    return Report("\n".join(lines), figures)


__all__ = ["build_report"]
