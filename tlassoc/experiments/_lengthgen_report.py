"""The report of the length-generalisation experiment: verdicts, tables, figures, views."""

from __future__ import annotations

from typing import Any

from tlassoc.experiments.framework import Report, Result, claims_table, fmt


def _label(enc: str) -> str:
    from tlassoc.experiments.length_generalization import LABELS

    return LABELS.get(enc, enc)


def _verdicts(outcomes: list[Any]) -> list[str]:
    lines = ["## Verdict", ""]
    for o in outcomes:
        state = "holds" if o.holds else "does not hold"
        values = ", ".join(fmt(v) for v in o.values)
        lines.append(
            f"- **{o.claim.name}** ({o.claim.meaning}): {state} — `{o.claim.statement}`, "
            f"measured {values} (per seed)."
        )
    if not all(o.holds for o in outcomes):
        lines += [
            "",
            "Not every claim reproduces at these settings; the numbers are the measured ones "
            "(no setting was tuned to make a claim pass).",
        ]
    return lines


def _setting(result: Result) -> list[str]:
    c = result.config
    m, t, task = c["model"], c["train"], c["task"]
    env = result.environment
    return [
        "# Length generalisation: relative vs absolute positions",
        "",
        f"Simplified two-layer model (d_model {m['d_model']}, frozen embeddings/positions/"
        f"unembedding), trained at T_train = {task['seq_len']} for {t['steps']} steps "
        f"({t['optimizer']}, lr {t['lr']}, batch {t['batch_size']}, loss on {t['loss_on']}), "
        f"evaluated at {', '.join(str(task['seq_len'] * k) for k in c['eval_multiples'])}. "
        f"Relative model: {m['relative_form']} form, distances clipped at "
        f"{m['max_relative_distance'] - 1}. Seeds {', '.join(map(str, result.seeds))}. "
        f"Wall time {result.seconds:.0f} s on {env.get('machine')} with "
        f"{env.get('cpu_count')} cores ({env.get('torch_threads')} torch threads).",
        "",
    ]


def _tables(result: Result) -> list[str]:
    encs = list(result.per_seed[0])
    lines = [
        "## Previous-token head (layer-0 attention argmax at t is t-1)",
        "",
        "| encoding | seed | positions < T_train | positions >= T_train |",
        "|---|---|---|---|",
    ]
    for enc in encs:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            r = rec[enc]
            lines.append(
                f"| {_label(enc)} | {seed} | {fmt(r['prev_token_acc_within'])} | "
                f"{fmt(r['prev_token_acc_beyond'])} |"
            )
    lines += [
        "",
        "## Same in-context segment placed early and late",
        "",
        "The late copy follows a trigger-free prefix, so all of its evidence lies beyond T_train.",
        "",
        "| encoding | seed | prefix | early acc (>=2) | late acc (>=2) | drop | early (>=1) | "
        "late (>=1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for enc in encs:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            for key in ("segment", "segment_near"):
                s = rec[enc][key]
                lines.append(
                    f"| {_label(enc)} | {seed} | {s['late_prefix']} | {fmt(s['early_acc_ge2'])} | "
                    f"{fmt(s['late_acc_ge2'])} | {fmt(s['drop'])} | {fmt(s['early_acc_ge1'])} | "
                    f"{fmt(s['late_acc_ge1'])} |"
                )
    lines += [
        "",
        "## In-context accuracy on ordinary sequences",
        "",
        "| encoding | seed | length | acc (>=2) | acc (>=1) | acc (>=2) beyond T_train |",
        "|---|---|---|---|---|---|",
    ]
    for enc in encs:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            for length, v in rec[enc]["icl_by_length"].items():
                lines.append(
                    f"| {_label(enc)} | {seed} | {length} | {fmt(v['acc_ge2'])} | "
                    f"{fmt(v['acc_ge1'])} | {fmt(v['acc_ge2_beyond_train_len'])} |"
                )
    lines += ["", "## Training", "", "| encoding | seed | train seconds | steps to acc>=0.9 |"]
    lines.append("|---|---|---|---|")
    for enc in encs:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            r = rec[enc]
            lines.append(
                f"| {_label(enc)} | {seed} | {r['train_seconds']:.1f} | "
                f"{r['time_to_induction_steps']} |"
            )
    return lines


def _figures(result: Result) -> dict[str, Any]:
    from tlassoc.viz.training import plot_per_position, plot_probes_over_training

    T = result.config["task"]["seq_len"]
    first = result.per_seed[0]

    def curves(key: str) -> dict[str, Any]:
        return {_label(enc): first[enc][key] for enc in first}

    return {
        "prev_token_accuracy.png": lambda path: plot_per_position(
            curves("prev_token_acc_per_position"), path, train_len=T,
            ylabel="previous-token argmax accuracy", title="Layer-0 attention argmax = t-1",
        ),
        "icl_accuracy.png": lambda path: plot_per_position(
            curves("icl_acc_per_position"), path, train_len=T,
            ylabel="in-context accuracy (label>=2)", title="In-context accuracy by position",
            smooth=16,
        ),
        "probes.png": lambda path: plot_probes_over_training(
            {_label(enc): first[enc]["history"] for enc in first}, path
        ),
    }  # fmt: skip


def _views(result: Result) -> dict[str, str]:
    from tlassoc.viz.attention import attention_html

    models = result.artifacts.get("models", {})
    task = result.artifacts.get("task")
    if not models or task is None:
        return {}
    c = result.config
    n_ctx = c["task"]["seq_len"] * max(c["eval_multiples"])
    tokens = task.sample(
        seed=result.seeds[0] + 2000, batch_size=1, seq_len=min(c["html_len"], n_ctx)
    ).tokens
    out = {}
    for enc in result.per_seed[0]:
        model = models.get(f"{enc}-seed{result.seeds[0]}")
        if model is not None:
            out[f"attention_{enc}.html"] = str(attention_html(model, tokens[0]))
    return out


def build_report(experiment: Any, result: Result) -> Report:
    """Markdown (verdicts, then tables, then figure list), figures and attention views."""
    outcomes = experiment.evaluate_claims(result)
    figures = _figures(result)
    html = _views(result)
    lines = _setting(result) + _verdicts(outcomes) + ["", "## Claims", "", claims_table(outcomes)]
    lines += [""] + _tables(result)
    lines += ["", "Figures: " + ", ".join(f"`{n}`" for n in figures)]
    if html:
        lines += ["", "Attention views: " + ", ".join(f"`{n}`" for n in html)]
    lines.append("")
    return Report("\n".join(lines), figures, html)


__all__ = ["build_report"]
