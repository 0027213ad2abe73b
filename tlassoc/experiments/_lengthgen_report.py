"""The report of the length-generalisation experiment: verdicts, tables, figures, views."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

from tlassoc.experiments.framework import (
    ClaimOutcome,
    Report,
    Result,
    claims_table,
    fmt,
    mean_interval,
)


def _label(enc: str) -> str:
    from tlassoc.experiments.length_generalization import label

    return label(enc)


def _math_label(enc: str) -> str:
    """The label for figures, its symbols in matplotlib's math text: ``RPE (vector $r_{t-s}$)``.

    Example:
        >>> _math_label("relative"), _math_label("standard")
        ('RPE (vector $r_{t-s}$)', 'APE (frozen $p_t$)')
    """
    return re.sub(r"\b([rbp]_(?:\{[^}]*\}|\w))", r"$\1$", _label(enc))


def _lens(result: Result) -> list[int]:
    return [int(k[1:]) for k in result.per_seed[0]]


def _encs(result: Result) -> list[str]:
    first = result.per_seed[0]
    return list(first[next(iter(first))])


def _values(result: Result, T: int, enc: str, *keys: str) -> list[float]:
    out = []
    for rec in result.per_seed:
        v: Any = rec[f"T{T}"][enc]
        for k in keys:
            v = v[k]
        out.append(v)
    return out


def _summary(values: list[float]) -> str:
    mean, low, high = mean_interval(values)
    if math.isnan(low):
        return fmt(mean)
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def _verdict_line(enc: str, T: int, outcomes: list[ClaimOutcome], capacity_ok: bool) -> str:
    parts = []
    for o in outcomes:
        values = ", ".join(fmt(v) for v in o.values)
        state = "holds" if o.holds else "does not hold"
        parts.append(f"{o.claim.meaning}: {state} (`{o.claim.statement}`; per seed {values})")
    text = f"- **{_label(enc)}, T_train {T}**: " + "; ".join(parts) + "."
    if not capacity_ok:
        text += (
            " **Under capacity**: the absolute model does not learn its previous-token head "
            "inside T_train, so its failure past T_train says nothing about the mechanism; the "
            "APE claims are not called reproduced."
        )
    return text


def _descriptive_line(result: Result, enc: str, T: int) -> str:
    beyond = _summary(_values(result, T, enc, "prev_token_acc_beyond"))
    within = _summary(_values(result, T, enc, "prev_token_acc_within"))
    early = _summary(_values(result, T, enc, "segment", "early_acc_ge2"))
    late = _summary(_values(result, T, enc, "segment", "late_acc_ge2"))
    return (
        f"- **{_label(enc)}, T_train {T}** (no claim in the papers): previous-token argmax "
        f"accuracy {within} inside and {beyond} beyond T_train; in-context accuracy of the "
        f"segment {early} early and {late} after the trigger-free prefix."
    )


def _verdicts(result: Result, outcomes: list[ClaimOutcome]) -> list[str]:
    lines = ["## Verdict", ""]
    for T in _lens(result):
        for enc in _encs(result):
            tag = f"[{enc}@T{T}]"
            mine = [o for o in outcomes if o.claim.name.endswith(tag)]
            if not mine:
                lines.append(_descriptive_line(result, enc, T))
                continue
            ok = all(o.holds for o in _capacity(mine))
            lines.append(_verdict_line(enc, T, mine, ok))
    lines.append("")
    capacity = _capacity(outcomes)
    effective = [o for o in outcomes if o not in capacity]
    if all(o.holds for o in outcomes):
        lines.append("Every claim holds for every seed and training length.")
    else:
        failed = sum(not o.holds for o in effective)
        under = [o.claim.name for o in capacity if not o.holds]
        text = (
            f"{failed} of {len(effective)} claims about the papers' statements do not hold for "
            "every seed at these settings"
        )
        if under:
            text += f"; under capacity: {', '.join(under)}"
        lines.append(
            text + "; the numbers above are the measured ones (no setting was tuned to make a "
            "claim pass)."
        )
    return lines


def _parallelism(env: dict[str, Any]) -> str:
    threads = env.get("torch_threads")
    if env.get("trials"):
        return f"{env['trials']} trials on Ray, {threads} torch thread(s) each"
    return f"one process, {threads} torch thread(s)"


def _capacity(outcomes: list[Any]) -> list[Any]:
    """The outcomes of the capacity precondition claims."""
    return [o for o in outcomes if o.claim.name.startswith("capacity")]


def _setting(result: Result) -> list[str]:
    c = result.config
    m, t = c["model"], c["train"]
    env = result.environment
    rules = []
    if c.get("width_rule"):
        rules.append(f"d_model = {c['width_rule']} x T_train")
    else:
        rules.append(f"d_model {m['d_model']}")
    if c.get("clip_rule"):
        rules.append(f"relative distances clipped at T_train // {c['clip_rule']}")
    rules.append(f"evaluation at T_train x {', '.join(map(str, c['eval_multiples']))}")
    return [
        "# Length generalisation across positional encodings",
        "",
        f"Simplified two-layer model (frozen embeddings and unembedding), trained at T_train = "
        f"{', '.join(map(str, c['train_lens']))} for {t['steps']} steps ({t['optimizer']}, lr "
        f"{t['lr']}, batch {t['batch_size']}, loss on {t['loss_on']}); {'; '.join(rules)}. "
        f"Encodings: {', '.join(_label(e) for e in c['encodings'])}. Seeds "
        f"{', '.join(map(str, result.seeds))}. Wall time {result.seconds:.0f} s on "
        f"{env.get('machine')} with {env.get('cpu_count')} cores ({_parallelism(env)}).",
        "",
    ]


def _table(result: Result) -> list[str]:
    lines = [
        "## Numbers (mean over seeds [95 % interval])",
        "",
        "| T_train | encoding | prev-token < T | prev-token >= T | early acc | late acc | drop "
        "| L0 mass on t-1 (late) | last layer mass on prefix (late) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for T in _lens(result):
        for enc in _encs(result):
            att = _values(result, T, enc, "segment", "attention")
            last = max(int(k[5]) for k in att[0] if k.startswith("layer"))
            prev_key = f"layer{max(0, last - 1)}_mass_prev"
            lines.append(
                f"| {T} | {_label(enc)} | "
                f"{_summary(_values(result, T, enc, 'prev_token_acc_within'))} | "
                f"{_summary(_values(result, T, enc, 'prev_token_acc_beyond'))} | "
                f"{_summary(_values(result, T, enc, 'segment', 'early_acc_ge2'))} | "
                f"{_summary(_values(result, T, enc, 'segment', 'late_acc_ge2'))} | "
                f"{_summary(_values(result, T, enc, 'segment', 'drop'))} | "
                f"{_summary([a[prev_key] for a in att])} | "
                f"{_summary([a[f'layer{last}_mass_prefix'] for a in att])} |"
            )
    return lines


def _per_seed_table(result: Result) -> list[str]:
    lines = [
        "## Per seed",
        "",
        "| T_train | encoding | seed | prev < T | prev >= T | early | late (far) | late (near) "
        "| acc at 4T | train s | steps to acc>=0.9 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for T in _lens(result):
        for enc in _encs(result):
            for seed, rec in zip(result.seeds, result.per_seed, strict=True):
                r = rec[f"T{T}"][enc]
                longest = list(r["icl_by_length"].values())[-1]
                lines.append(
                    f"| {T} | {_label(enc)} | {seed} | {fmt(r['prev_token_acc_within'])} | "
                    f"{fmt(r['prev_token_acc_beyond'])} | {fmt(r['segment']['early_acc_ge2'])} | "
                    f"{fmt(r['segment']['late_acc_ge2'])} | "
                    f"{fmt(r['segment_near']['late_acc_ge2'])} | {fmt(longest['acc_ge2'])} | "
                    f"{r['train_seconds']:.1f} | {r['time_to_induction_steps']} |"
                )
    return lines


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from tlassoc._io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-window:]
        good = [a for a in acc if not math.isnan(a)]
        out.append(sum(good) / len(good) if good else math.nan)
    return out


def _curves(result: Result, key: str, ylabel: str, title: str, path: Path) -> None:
    """Mean over seeds per position, with the seed range as a band, one panel per T_train."""
    import matplotlib.pyplot as plt

    lens = _lens(result)
    fig, axes = plt.subplots(1, len(lens), figsize=(5.2 * len(lens), 3.6), squeeze=False)
    for ax, T in zip(axes[0], lens, strict=True):
        window = max(1, T // 8)
        for enc in _encs(result):
            runs = [
                _smooth([math.nan if v is None else v for v in vals], window)
                for vals in _values(result, T, enc, key)
            ]
            n = len(runs[0])
            mean = [_nanmean([r[i] for r in runs]) for i in range(n)]
            low = [min(r[i] for r in runs) for i in range(n)]
            high = [max(r[i] for r in runs) for i in range(n)]
            (line,) = ax.plot(range(n), mean, lw=1.4, label=_math_label(enc))
            ax.fill_between(range(n), low, high, color=line.get_color(), alpha=0.2, lw=0)
        ax.axvline(T, color="gray", ls="--", lw=1)
        ax.text(T, 1.03, " T_train", color="gray", fontsize=8, va="bottom")
        ax.set(xlabel="position t", ylabel=ylabel, ylim=(-0.02, 1.08), title=f"T_train = {T}")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(title + f" (mean of {len(result.seeds)} seeds; band: seed range)", fontsize=10)
    _save(fig, path)


def _nanmean(values: list[float]) -> float:
    good = [v for v in values if not math.isnan(v)]
    return sum(good) / len(good) if good else math.nan


def _bars(result: Result, groups: dict[str, tuple[str, ...]], ylabel: str, path: Path) -> None:
    """Grouped bars (one group per encoding) with 95 % intervals, one panel per T_train."""
    import matplotlib.pyplot as plt

    lens, encs = _lens(result), _encs(result)
    fig, axes = plt.subplots(1, len(lens), figsize=(1.2 * len(encs) * len(lens) + 2, 3.8),
                             squeeze=False)  # fmt: skip
    width = 0.8 / len(groups)
    for ax, T in zip(axes[0], lens, strict=True):
        for j, (name, keys) in enumerate(groups.items()):
            means, errs = [], []
            for enc in encs:
                vals = _values(result, T, enc, *keys)
                mean, low, high = mean_interval(vals)
                means.append(mean)
                errs.append(0.0 if math.isnan(low) else (high - low) / 2)
            xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(encs))]
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=name)
        ax.set_xticks(range(len(encs)), [_math_label(e) for e in encs], rotation=25, ha="right")
        ax.set(ylabel=ylabel, ylim=(0, 1.05), title=f"T_train = {T}")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    _save(fig, path)


def _figures(result: Result) -> dict[str, Any]:
    from tlassoc.viz.training import plot_probes_over_training

    T = max(_lens(result))
    first = result.per_seed[0][f"T{T}"]
    return {
        "prev_token_accuracy.png": lambda path: _curves(
            result, "prev_token_acc_per_position", "previous-token argmax accuracy",
            "Previous-token head: argmax at t is t-1", path,
        ),
        "icl_accuracy.png": lambda path: _curves(
            result, "icl_acc_per_position", "in-context accuracy (label >= 2)",
            "Ordinary sequences: in-context accuracy by position", path,
        ),
        "late_evidence.png": lambda path: _bars(
            result,
            {"segment at the start": ("segment", "early_acc_ge2"),
             "after a trigger-free prefix": ("segment", "late_acc_ge2")},
            "in-context accuracy (label >= 2)", path,
        ),
        "attention_mass.png": lambda path: _bars(
            result,
            {"layer 0 on t-1": ("segment", "attention", "layer0_mass_prev"),
             "layer 0 on prefix": ("segment", "attention", "layer0_mass_prefix"),
             "layer 1 on prefix": ("segment", "attention", "layer1_mass_prefix")},
            "attention mass (late segment)", path,
        ),
        "probes.png": lambda path: plot_probes_over_training(
            {_math_label(enc): first[enc]["history"] for enc in first}, path
        ),
    }  # fmt: skip


def _views(result: Result) -> dict[str, str]:
    from tlassoc.viz.attention import attention_html

    models = result.artifacts.get("models", {})
    if not models:
        return {}
    c = result.config
    T = max(_lens(result))
    task = result.artifacts.get("tasks", {}).get(T) or _task(result, T)
    n_ctx = T * max(c["eval_multiples"])
    seq_len = min(c["html_len"], n_ctx)
    tokens = task.sample(seed=result.seeds[0] + 2000, batch_size=1, seq_len=seq_len).tokens
    out = {}
    for enc in _encs(result):
        model = models.get(f"{enc}-T{T}-seed{result.seeds[0]}")
        if model is not None:
            out[f"attention_{enc}.html"] = str(attention_html(model, tokens[0]))
    return out


def _task(result: Result, T: int) -> Any:
    """The task at training length ``T``, rebuilt from the configuration (results measured on
    Ray, or read back from disk, carry models but no task)."""
    from tlassoc.data import make_task
    from tlassoc.experiments.length_generalization import LengthGenConfig

    config = LengthGenConfig.from_dict(result.config)
    return make_task(config.task_config(T), config.train.batch_size, config.model.device)


def build_report(experiment: Any, result: Result) -> Report:
    """Markdown (verdicts, then tables, then figure list), figures and attention views."""
    outcomes = experiment.evaluate_claims(result)
    figures = _figures(result)
    html = _views(result)
    lines = _setting(result) + _verdicts(result, outcomes)
    lines += ["", "## Claims", "", claims_table(outcomes), ""]
    lines += _table(result) + [""] + _per_seed_table(result)
    lines += ["", "Figures: " + ", ".join(f"`{n}`" for n in figures)]
    if html:
        lines += ["", "Attention views: " + ", ".join(f"`{n}`" for n in html)]
    lines.append("")
    return Report("\n".join(lines), figures, html)


__all__ = ["build_report"]
