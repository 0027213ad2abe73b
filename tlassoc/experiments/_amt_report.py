"""The report of the stronger-AMT experiment: verdicts, tables, figures."""

from __future__ import annotations

from typing import Any

from tlassoc.experiments import _kit
from tlassoc.experiments._plots import bar_positions, mean_bar, pyplot, save_png
from tlassoc.experiments._report_kit import (
    encoding_tables,
    finish_report,
    report_head,
    setting_line,
    trigger_task_rows,
)
from tlassoc.experiments.framework import Report, Result

NAMES = {
    "unweighted": "unweighted AMT c·(share + π_b)",
    "scalar": "α·share + β·π_b",
    "weighted": "stronger AMT α·share + β_aj",
    "from_weights": "theory read off the weights (no fit)",
    "from_weights_ffn_copy": "the same, copy read through the feed-forward layer",
}


def _rows(enc: str) -> list[tuple[str, str]]:
    rows = [
        *trigger_task_rows(enc),
        ("prompts fitted / held out: fitted", f"{enc}.n_fit"),
        ("prompts fitted / held out: held out", f"{enc}.n_test"),
    ]
    for form, text in NAMES.items():
        rows.append((f"R² logits, {text}", f"{enc}.{form}.r2_logits"))
        rows.append((f"R² contrast, {text}", f"{enc}.{form}.r2_contrast"))
    return rows + [
        ("gain of the weighting, R² logits", f"{enc}.gain_logits"),
        ("gain of the weighting, R² contrast", f"{enc}.gain_contrast"),
        ("unweighted scale c", f"{enc}.unweighted.scale"),
        ("scalar fit: α", f"{enc}.scalar.alpha"),
        ("scalar fit: β", f"{enc}.scalar.beta"),
        ("weighted fit: α", f"{enc}.weighted.alpha"),
        ("weighted fit: corr(β_aj, π_b(j|a))", f"{enc}.weighted.corr_bigram"),
        ("weighted fit: corr(β_aj, log π_b(j|a))", f"{enc}.weighted.corr_log_bigram"),
        ("training seconds", f"{enc}.train_seconds"),
    ]


def _r2_figure(result: Result, path: Any) -> None:
    plt = pyplot()
    encs = result.config["encodings"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(1, len(encs))
    for ax, key, title in (
        (axes[0], "r2_logits", "all centred logits"),
        (axes[1], "r2_contrast", "contrast logit(b1) − logit(y)"),
    ):
        for i, enc in enumerate(encs):
            bars = [mean_bar([r[enc][form][key] for r in result.per_seed]) for form in NAMES]
            xs = bar_positions(len(NAMES), i, len(encs), width)
            ax.bar(xs, [max(m, -1.0) for m, _ in bars], width, yerr=[e for _, e in bars],
                   capsize=3, label=_kit.label(enc))  # fmt: skip
        ticks = [
            "c(share+π_b)",
            "α share+β π_b",
            "α share+β_aj",
            "ξ weights",
            "ξ weights,\nFFN copy",
        ]
        ax.set_xticks(range(len(NAMES)), ticks, fontsize=8)
        ax.set_ylabel("held-out R²")
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_title(f"Variance explained: {title}")
        ax.legend(fontsize=8)
    save_png(fig, path)


def _fit_figure(result: Result, path: Any) -> None:
    import torch

    from tlassoc.data import BigramModel

    plt = pyplot()
    enc, seed = result.config["encodings"][0], result.seeds[0]
    extra = result.artifacts["fits"][f"{enc}-seed{seed}"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    ax = axes[0]
    y = extra["contrast_model"]
    for form, marker in (("unweighted", "x"), ("weighted", "o")):
        ax.scatter(extra[f"contrast_{form}"], y, s=10, alpha=0.6, marker=marker,
                   label=NAMES[form])  # fmt: skip
    lo, hi = min(y), max(y)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("fitted: ξ(b1) − ξ(y)")
    ax.set_ylabel("model: logit(b1) − logit(y)")
    ax.set_title(f"{_kit.label(enc)} seed {seed}: held-out contrasts")
    ax.legend(fontsize=8)
    ax = axes[1]
    p = BigramModel.tiny_shakespeare().conditional[extra["beta_rows"]]
    seen = p > 0
    ax.scatter(torch.log(p[seen]), extra["beta"][seen].float(), s=6, alpha=0.5)
    ax.set_xlabel("log π_b(j | a)  (global bigram, pairs seen in the corpus)")
    ax.set_ylabel("fitted β_aj (centred logit)")
    ax.set_title("What the bigram term of the fit stores")
    save_png(fig, path)


def build_report(experiment: Any, result: Result) -> Report:
    """Markdown (verdicts, claims, tables), figures."""
    figures: dict[str, Any] = {"r2.png": lambda p: _r2_figure(result, p)}
    if result.artifacts.get("fits"):
        figures["fit.png"] = lambda p: _fit_figure(result, p)
    c = result.config
    pool = result.per_seed[0].get("scored_queries", [])
    setting = setting_line(
        result,
        f"Designed prompts inside T_train ({c['n_prompts']} drawn per model, length "
        f"{c['prompt_len']}; kept: the {len(pool)} queries that are triggers in at least "
        f"{c['min_trigger_rate']:g} of the training sequences); least-squares fits on "
        f"{1 - c['test_fraction']:g} of them, R² on the rest.",
    )
    title = "The stronger associative-memory transformer fitted to a trained model"
    lines = report_head(experiment, result, title, setting) + encoding_tables(result, _rows)
    return finish_report(lines, figures)


__all__ = ["build_report"]
