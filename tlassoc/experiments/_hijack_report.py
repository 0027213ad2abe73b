"""The report of the knowledge-hijack experiment: verdicts, tables, figures."""

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
from tlassoc.experiments.framework import Report, Result, fmt, mean_interval

PLACEMENTS = (("near", "near the end"), ("far", "near the start"), ("beyond", "beyond T_train"))


def _rows(enc: str) -> list[tuple[str, str]]:
    rows = [
        *trigger_task_rows(enc),
        ("previous-token argmax accuracy", f"{enc}.final.prev_token_acc"),
        ("scored prompts", f"{enc}.n_prompts"),
    ]
    for key, text in PLACEMENTS:
        rows.append((f"context wins, pairs {text}", f"{enc}.context_wins.{key}"))
        rows.append((f"theory predicts a win, {text}", f"{enc}.predicted_wins.{key}"))
        rows.append((f"argmax = global top bigram, {text}", f"{enc}.falls_back.{key}"))
    return rows + [
        ("context wins inside T_train (near + far)", f"{enc}.context_wins.within"),
        ("drop inside -> beyond T_train", f"{enc}.beyond_drop"),
        ("b1 wins with share 2/3", f"{enc}.share.two_thirds"),
        ("b1 wins with share 1/3", f"{enc}.share.one_third"),
        ("share effect (2/3 - 1/3)", f"{enc}.share_effect"),
        ("distance effect (near - far)", f"{enc}.distance_effect"),
        ("wins with 1 / 2 / 3 repeats: 1", f"{enc}.repeats.1"),
        ("wins with 1 / 2 / 3 repeats: 2", f"{enc}.repeats.2"),
        ("wins with 1 / 2 / 3 repeats: 3", f"{enc}.repeats.3"),
        ("theory correlation inside T_train", f"{enc}.theory.within.correlation"),
        ("theory argmax agreement inside T_train", f"{enc}.theory.within.agreement"),
        ("theory correlation beyond T_train", f"{enc}.theory.beyond.correlation"),
        ("theory argmax agreement beyond T_train", f"{enc}.theory.beyond.agreement"),
        (
            "diagnostic: theory with the copy read through the feed-forward layer, "
            "correlation inside",
            f"{enc}.theory_ffn_copy.within.correlation",
        ),
        (
            "diagnostic: the same, argmax agreement inside",
            f"{enc}.theory_ffn_copy.within.agreement",
        ),
        (
            "diagnostic: the same, predicts a win inside",
            f"{enc}.theory_ffn_copy.predicted_wins_within",
        ),
        ("context wins inside, all queries", f"{enc}.all_queries.context_wins"),
        ("context wins inside, unscored queries", f"{enc}.unscored_queries.context_wins"),
        ("training seconds", f"{enc}.train_seconds"),
    ]


def _family_table(result: Result) -> list[str]:
    encs = result.config["encodings"]
    lines = [
        "## Families (mean over seeds)",
        "",
        "Win: logit(b1) > logit(y), with y the global top bigram (or b2 when b1 is the top). "
        "Theory: the same for ξ. Falls back: the model's argmax is the global top bigram.",
        "",
        "| encoding | placement | relation | (n, m) | prompts | win | theory win | falls back | "
        "argmax agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for enc in encs:
        merged: dict[tuple, list[dict[str, Any]]] = {}
        for rec in result.per_seed:
            for row in rec[enc]["families"]:
                key = (row["placement"], row["relation"], row["n"], row["m"])
                merged.setdefault(key, []).append(row)
        for key in sorted(merged):
            rows = merged[key]

            def avg(name: str, rows: list = rows) -> str:
                return fmt(mean_interval([r[name] for r in rows if r[name] is not None])[0])

            count = sum(r["count"] for r in rows)
            lines.append(
                f"| {_kit.label(enc)} | {key[0]} | {key[1]} | ({key[2]}, {key[3]}) | {count} | "
                f"{avg('win')} | {avg('predicted_win')} | {avg('falls_back')} | "
                f"{avg('agreement')} |"
            )
    return lines + [""]


def _values(result: Result, enc: str, what: str, key: str) -> list[Any]:
    return [r[enc][what][key] for r in result.per_seed]


def _wins_figure(result: Result, path: Any) -> None:
    plt = pyplot()
    encs = result.config["encodings"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(encs))
    for i, enc in enumerate(encs):
        bars = [mean_bar(_values(result, enc, "context_wins", key)) for key, _ in PLACEMENTS]
        preds = [
            mean_interval(_values(result, enc, "predicted_wins", key))[0] for key, _ in PLACEMENTS
        ]
        xs = bar_positions(len(PLACEMENTS), i, len(encs), width)
        ax.bar(xs, [m for m, _ in bars], width, yerr=[e for _, e in bars], capsize=3,
               label=f"{_kit.label(enc)}: model")  # fmt: skip
        ax.scatter(xs, preds, color="k", marker="_", s=300, zorder=3,
                   label="theory ξ (weights)" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(PLACEMENTS)), [f"pairs {t}" for _, t in PLACEMENTS])
    ax.set_ylabel("fraction: logit(b1) > logit(top bigram)")
    ax.set_ylim(0, 1.05)
    ax.set_title("In-context majority b1 against the global top bigram (disagree, n > m)")
    ax.legend(fontsize=8)
    save_png(fig, path)


def _families_figure(result: Result, path: Any) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for enc in result.config["encodings"]:
        for placements, style in ((("near", "far"), "-"), (("beyond",), "--")):
            by_count: dict[tuple[int, int], list[float]] = {}
            for rec in result.per_seed:
                for row in rec[enc]["families"]:
                    if row["relation"] == "disagree" and row["placement"] in placements:
                        if row["win"] is not None:
                            key = (row["n"], row["m"])
                            by_count.setdefault(key, []).append(row["win"])
            keys = sorted(by_count)
            where = "inside" if style == "-" else "beyond"
            ax.plot(
                [f"({n},{m})" for n, m in keys],
                [sum(by_count[k]) / len(by_count[k]) for k in keys],
                style, marker="o", label=f"{_kit.label(enc)}, pairs {where} T_train",
            )  # fmt: skip
    ax.set_xlabel("(n, m): repeats of a b1 and of a b2 (b2 = the global top bigram when m > 0)")
    ax.set_ylabel("fraction: logit(b1) > logit(top bigram)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Disagreeing families: in-context b1 against the global favourite")
    ax.legend(fontsize=8)
    save_png(fig, path)


def _theory_figure(result: Result, path: Any) -> None:
    from tlassoc.viz.memory import plot_theory_vs_model

    plt = pyplot()
    frames = result.artifacts["frames"]
    encs = [e for e in result.config["encodings"] if f"{e}-seed{result.seeds[0]}" in frames]
    fig, axes = plt.subplots(1, len(encs), figsize=(5 * len(encs), 4.8), squeeze=False)
    for ax, enc in zip(axes[0], encs, strict=True):
        frame = frames[f"{enc}-seed{result.seeds[0]}"]
        frame = frame[frame["scored"]].copy()
        frame["where"] = frame["placement"].map(
            {"near": "inside T_train", "far": "inside T_train", "beyond": "beyond T_train"}
        )
        plot_theory_vs_model(frame, ax=ax, hue="where")
        ax.set_title(f"{_kit.label(enc)} (seed {result.seeds[0]}): {ax.get_title()}")
    save_png(fig, path)


def build_report(experiment: Any, result: Result) -> Report:
    """Markdown (verdicts, claims, tables), figures."""
    figures: dict[str, Any] = {
        "context_wins.png": lambda p: _wins_figure(result, p),
        "families.png": lambda p: _families_figure(result, p),
    }
    if result.artifacts.get("frames"):
        figures["theory_vs_model.png"] = lambda p: _theory_figure(result, p)
    pool = result.per_seed[0].get("scored_queries", [])
    c = result.config
    setting = setting_line(
        result,
        f"Designed prompts ({c['n_prompts']} drawn per model, length {c['prompt_len']}, "
        f"or T_train + {c['prompt_len']} beyond T_train); scored: the {len(pool)} queries "
        f"that are triggers in at least {c['min_trigger_rate']:g} of the training sequences.",
    )
    title = "Knowledge hijack: in-context pairs against the global bigram"
    lines = report_head(experiment, result, title, setting)
    lines += encoding_tables(result, _rows) + _family_table(result)
    return finish_report(lines, figures)


__all__ = ["build_report"]
