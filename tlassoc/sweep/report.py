"""Sweep tables, summary and figures, rebuilt from the trial folders alone.

:func:`build_report` reads every ``trials/<id>/trial.json`` and ``results.json`` of a sweep
folder and writes, atomically:

* ``trials.csv`` and ``trials.parquet``: one row per trial and seed — status, the swept
  settings (one column per dotted path), ``seed``, seconds, the value of every claim's metric
  (one column per metric path) and whether all claims hold for that seed;
* ``summary.csv``: one row per setting and metric — seeds, mean and 95 % t-interval
  (:func:`~tlassoc.experiments.framework.mean_interval`);
* ``summary.md``: the same per claim, with the claims' statements, and the failed trials;
* ``figures/<claim>.png``: each claim's metric against the swept settings (mean with its
  interval, each seed a dot, the claim's threshold dashed), and ``figures/sweep.png`` with all
  of them.

The metrics and thresholds come from the claims stored in each ``results.json``, so no
experiment code is needed to rebuild a report.

Example:
    >>> rows = [{"status": "done", "model.d_model": 16, "seed": s, "acc": a}
    ...         for s, a in [(0, 0.5), (1, 0.7)]]
    >>> import pandas as pd
    >>> summary = summary_table(pd.DataFrame(rows), ["model.d_model"], ["acc"])
    >>> summary[["model.d_model", "metric", "n", "mean"]].to_dict("records")
    [{'model.d_model': 16, 'metric': 'acc', 'n': 2, 'mean': 0.6}]
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path
from typing import Any

from tlassoc._io import atomic_write_bytes, atomic_write_text
from tlassoc.experiments.framework import OPS, fmt, lookup, mean_interval
from tlassoc.sweep.grid import SEEDS
from tlassoc.sweep.runner import RESULTS_FILE, TRIAL_FILE, locked, read_json


def load_trials(out_dir: Any) -> list[dict[str, Any]]:
    """Every trial folder of a sweep: ``trial.json`` with its ``results.json`` as ``result``."""
    trials = []
    for folder in sorted((Path(out_dir) / "trials").glob("*/")):
        trial = read_json(folder / TRIAL_FILE)
        if trial is None:
            continue
        trial["result"] = read_json(folder / RESULTS_FILE) if trial["status"] == "done" else None
        trials.append(trial)
    return trials


def claims_of(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claims (name, metric, op, threshold, meaning) found in the trials, first seen first."""
    claims: dict[str, dict[str, Any]] = {}
    for t in trials:
        for c in (t.get("result") or {}).get("claims", []):
            claims.setdefault(
                c["name"], {k: c[k] for k in ("name", "metric", "op", "threshold", "meaning")}
            )
    return list(claims.values())


def _value(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return v


def param_columns(trials: list[dict[str, Any]]) -> list[str]:
    """The swept settings of the trials, in first-seen order (the seeds become ``seed``)."""
    cols: list[str] = []
    for t in trials:
        cols += [p for p in t.get("params", {}) if p != SEEDS and p not in cols]
    return cols


def trials_table(trials: list[dict[str, Any]], claims: list[dict[str, Any]]) -> Any:
    """One row per trial and seed (see the module docstring); a failed trial has one row."""
    import pandas as pd

    params = param_columns(trials)
    rows = []
    for t in trials:
        base = {"trial": t["id"], "status": t["status"], "attempts": t.get("attempts")}
        base |= {p: _value(t["params"].get(p)) for p in params}
        base["error"] = t.get("error")
        result = t.get("result")
        if result is None:
            seeds = t["params"].get(SEEDS) or [None]
            rows += [{**base, "seed": s} for s in seeds]
            continue
        n = max(len(result["seeds"]), 1)
        for seed, record in zip(result["seeds"], result["per_seed"], strict=True):
            row = {**base, "seed": seed, "seconds": result.get("seconds", math.nan) / n}
            row |= {c["metric"]: _metric(record, c["metric"]) for c in claims}
            row["all_claims_hold"] = all(_holds(c, row[c["metric"]]) for c in claims)
            rows.append(row)
    metric_cols = [c["metric"] for c in claims]
    order = [
        "trial",
        "status",
        "attempts",
        *params,
        "seed",
        "seconds",
        *metric_cols,
        "all_claims_hold",
        "error",
    ]
    table = pd.DataFrame(rows, columns=list(dict.fromkeys(order)))
    return table.sort_values([*params, "seed"], kind="stable", ignore_index=True)


def _metric(record: dict[str, Any], path: str) -> float:
    try:
        value = lookup(record, path)
    except KeyError:
        return math.nan
    return math.nan if value is None else float(value)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _holds(claim: dict[str, Any], value: Any) -> bool:
    """Whether one value satisfies a stored claim (a missing value never does)."""
    return not _missing(value) and bool(OPS[claim["op"]](value, claim["threshold"]))


def summary_table(table: Any, params: list[str], metrics: list[str]) -> Any:
    """One row per setting (the swept settings but the seed) and metric: ``n`` seeds, ``mean``
    and the 95 % interval ``low``/``high`` over the finished trials."""
    import pandas as pd

    done = table[table["status"] == "done"]
    rows = []
    groups = done.groupby(params, sort=False, dropna=False) if params else [((), done)]
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            values = [float(v) for v in frame[metric] if not _missing(v)]
            mean, low, high = mean_interval(values)
            rows.append(
                {
                    **dict(zip(params, key, strict=True)),
                    "metric": metric,
                    "n": len(values),
                    "mean": mean,
                    "low": low,
                    "high": high,
                }
            )
    return pd.DataFrame(rows, columns=[*params, "metric", "n", "mean", "low", "high"])


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------


def _statement(claim: dict[str, Any]) -> str:
    if claim["op"] == "abs<=":
        return f"|{claim['metric']}| <= {claim['threshold']:g}"
    return f"{claim['metric']} {claim['op']} {claim['threshold']:g}"


def summary_markdown(
    sweep: dict[str, Any], table: Any, summary: Any, claims: list[dict[str, Any]], params: list[str]
) -> str:
    """The sweep's ``summary.md``: counts, one table per claim, failed trials, figures."""
    counts = table.drop_duplicates("trial")["status"].value_counts().to_dict()
    lines = [
        f"# Sweep: {sweep.get('experiment', '?')}",
        "",
        f"Trials: {sum(counts.values())} ({', '.join(f'{n} {s}' for s, n in counts.items())}).",
        "Each setting's mean and 95 % t-interval are over its finished seeds.",
    ]
    if sweep.get("command"):
        lines += ["", "```", sweep["command"], "```"]
    for claim in claims:
        lines += ["", f"## {claim['name']}: `{_statement(claim)}`", "", claim["meaning"], ""]
        lines += _claim_table(claim, table, summary, params)
    failed = table[table["status"] != "done"].drop_duplicates("trial")
    if len(failed):
        lines += [
            "",
            "## Trials not finished",
            "",
            "| trial | status | attempts | settings | error |",
            "|---|---|---|---|---|",
        ]
        for _, row in failed.iterrows():
            setting = ", ".join(f"{p}={row[p]}" for p in [*params, "seed"])
            error = str(row["error"] or "").replace("|", "\\|")[:200]
            lines.append(
                f"| {row['trial']} | {row['status']} | {row['attempts']} | {setting} | {error} |"
            )
    if claims:
        lines += ["", "![claims against the swept settings](figures/sweep.png)"]
    return "\n".join(lines) + "\n"


def _claim_table(claim: dict[str, Any], table: Any, summary: Any, params: list[str]) -> list[str]:
    header = [*params, "seeds", "mean [95 % interval]", "holds (seeds)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = summary[summary["metric"] == claim["metric"]]
    done = table[table["status"] == "done"]
    for _, row in rows.iterrows():
        mask = done[claim["metric"]].notna()
        for p in params:
            mask &= done[p] == row[p]
        values = done.loc[mask, claim["metric"]]
        holds = sum(_holds(claim, v) for v in values)
        cells = [str(row[p]) for p in params]
        cells += [
            str(row["n"]),
            f"{fmt(row['mean'])} [{fmt(row['low'])}, {fmt(row['high'])}]",
            f"{holds}/{len(values)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    if not os.environ.get("DISPLAY") and matplotlib.get_backend().lower() != "agg":
        try:
            matplotlib.use("Agg")
        except Exception:  # noqa: BLE001 - a backend already in use stays
            pass
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def draw_claim(ax: Any, claim: dict[str, Any], table: Any, summary: Any, params: list[str]):
    """One claim's metric against the first swept setting (one line per value of the others)."""
    metric = claim["metric"]
    done = table[(table["status"] == "done") & table[metric].notna()]
    x_name = params[0] if params else "seed"
    others = params[1:]
    rows = summary[summary["metric"] == metric] if params else None
    xs = list(dict.fromkeys(done[x_name])) if len(done) else []
    numeric = _numeric(xs)
    position = {x: (x if numeric else i) for i, x in enumerate(xs)}
    lines = done.groupby(others, sort=False) if others else [((), done)]
    for key, frame in lines:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{p}={v}" for p, v in zip(others, key, strict=True))
        dots = ax.scatter(
            [position[x] for x in frame[x_name]],
            frame[metric],
            s=14,
            alpha=0.35,
            label=None if others else "each seed",
        )
        if rows is None:
            continue
        sel = rows
        for p, v in zip(others, key, strict=True):
            sel = sel[sel[p] == v]
        sel = sel.assign(_x=[position[x] for x in sel[x_name]]).sort_values("_x")
        err = [(sel["mean"] - sel["low"]).fillna(0), (sel["high"] - sel["mean"]).fillna(0)]
        ax.errorbar(
            sel["_x"],
            sel["mean"],
            yerr=err,
            marker="o",
            capsize=3,
            label=label or "mean, 95 % interval",
            color=dots.get_facecolor()[0][:3],
        )
    _threshold(ax, claim)
    if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(position.values()), [f"{x:g}" if numeric else str(x) for x in position])
    ax.set_xlabel(x_name)
    ax.set_ylabel(metric)
    ax.set_title(f"{claim['name']}: {_statement(claim)}", fontsize=9)
    ax.legend(fontsize=7)


def _threshold(ax: Any, claim: dict[str, Any]) -> None:
    t = claim["threshold"]
    ax.axhline(t, color="grey", linestyle="--", linewidth=1, label=f"threshold {t:g}")
    if claim["op"] == "abs<=":
        ax.axhline(-t, color="grey", linestyle="--", linewidth=1)


def draw_figures(
    folder: Path, table: Any, summary: Any, claims: list[dict[str, Any]], params: list[str]
) -> list[Path]:
    """``figures/<claim>.png`` per claim and ``figures/sweep.png`` with all of them."""
    plt = _plt()
    paths = []
    for claim in claims:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        draw_claim(ax, claim, table, summary, params)
        paths.append(_save(fig, folder / f"{_safe(claim['name'])}.png"))
        plt.close(fig)
    if claims:
        cols = min(3, len(claims))
        nrows = math.ceil(len(claims) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
        for ax, claim in zip(axes.flat, claims, strict=False):
            draw_claim(ax, claim, table, summary, params)
        for ax in list(axes.flat)[len(claims) :]:
            ax.set_visible(False)
        fig.tight_layout()
        paths.append(_save(fig, folder / "sweep.png"))
        plt.close(fig)
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def build_report(out_dir: Any) -> dict[str, Path]:
    """Write the tables, summary and figures of the sweep in ``out_dir`` (see the module
    docstring); returns ``{what: path}``.

    Raises:
        ValueError: ``out_dir`` holds no trial folders.
    """
    out = Path(out_dir)
    if not (out / "trials").is_dir():
        raise ValueError(
            f"sweep folder {str(out)!r} has no trials/; expected a `tlassoc sweep` output folder"
        )
    with locked(out):
        return _build(out)


def _build(out: Path) -> dict[str, Path]:
    trials = load_trials(out)
    claims = claims_of(trials)
    params = param_columns(trials)
    table = trials_table(trials, claims)
    summary = summary_table(table, params, list(dict.fromkeys(c["metric"] for c in claims)))
    sweep = read_json(out / "sweep.json") or {}
    paths = {
        "trials.csv": out / "trials.csv",
        "summary.csv": out / "summary.csv",
        "summary.md": out / "summary.md",
    }
    atomic_write_text(paths["trials.csv"], table.to_csv(index=False))
    atomic_write_text(paths["summary.csv"], summary.to_csv(index=False))
    if _has_parquet():
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        paths["trials.parquet"] = out / "trials.parquet"
        atomic_write_bytes(paths["trials.parquet"], buf.getvalue())
    atomic_write_text(paths["summary.md"], summary_markdown(sweep, table, summary, claims, params))
    for p in draw_figures(out / "figures", table, summary, claims, params):
        paths[f"figures/{p.name}"] = p
    return paths


def _has_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = [
    "build_report",
    "claims_of",
    "draw_claim",
    "draw_figures",
    "load_trials",
    "param_columns",
    "summary_markdown",
    "summary_table",
    "trials_table",
]
