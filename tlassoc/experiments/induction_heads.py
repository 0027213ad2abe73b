"""Induction heads side by side: trained tlassoc models and any TransformerLens model.

Trains the simplified model once per positional encoding and seed (the ``tutorial`` recipe by
default), then scores every head of it — and of any pretrained model named in ``pretrained``
(e.g. ``"gpt2"``; loaded from the local cache or the hub, never unpickled) — with the same
pattern scores: the stripe induction score (a random block repeated, mean attention to
``t - L + 1`` over the second block) and the previous-token score (mean ``A[t, t-1]``).
See ``docs/method.md``, Head metrics.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> table, fig = compare_induction_heads(
    ...     {"rpe": AssocTransformer(presets.rpe(d_model=16))}, repeat_len=8, n_samples=2)
    >>> sorted(set(table["model"]))
    ['rpe']
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tlassoc import recipes
from tlassoc.config import RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig, check_int
from tlassoc.data import make_task
from tlassoc.experiments import _kit
from tlassoc.experiments.framework import Claim, Experiment, Report, Result, claims_table, fmt

#: A head whose score reaches this value counts as that kind of head (the convention of
#: TransformerLens's demos for the stripe induction score).
HEAD_THRESHOLD = 0.4


def _tutorial(section: str) -> Any:
    return field(default_factory=lambda: getattr(recipes.get("tutorial"), section))


def _resolve(model: Any) -> Any:
    if isinstance(model, str):
        from tlassoc.pretrained import load_model

        return load_model(model)
    return model


def compare_induction_heads(
    models: Mapping[str, Any], *, repeat_len: int = 50, n_samples: int = 10, seed: int = 0
) -> tuple[pd.DataFrame, Any]:
    """Induction and previous-token scores of several models' heads, side by side.

    Args:
        models: ``{label: model or name}``; tlassoc models, GPT-2 or any TransformerLens model,
            or a name :func:`tlassoc.pretrained.load_model` accepts.
        repeat_len: Block length of the stripe score (capped at the vocabulary size).
        n_samples: Sequences per score.
        seed: Seed of the random tokens.

    Returns:
        ``(table, figure)``: one row per head of every model (``model, layer, head, head_name,
        induction, previous_token``) and a figure with one heatmap per model and score.
    """
    from tlassoc.heads import (
        induction_scores,
        previous_token_scores,
        random_block_tokens,
        scores_frame,
    )
    from tlassoc.heads.patterns import token_pool_size
    from tlassoc.viz.heads import plot_model_comparison

    frames = []
    for label, model in models.items():
        model = _resolve(model)
        pool = token_pool_size(model)
        L = min(repeat_len, pool, (model.cfg.n_ctx - 1) // 2)
        ind = induction_scores(model, repeat_len=L, n_samples=n_samples, seed=seed)
        tokens, _ = random_block_tokens(
            model, min(64, pool, model.cfg.n_ctx - 1), 1, n_samples, seed=seed + 1
        )
        prev = previous_token_scores(model, tokens)
        frames.append(scores_frame({"induction": ind, "previous_token": prev}, label))
    table = pd.concat(frames, ignore_index=True)
    return table, plot_model_comparison(table, ["induction", "previous_token"])


@dataclass
class InductionHeadsConfig(RunConfig):
    """The head-comparison experiment: a run configuration (the ``tutorial`` recipe) plus the
    scoring settings.

    Args:
        model: The trained model; its ``positional_embedding_type`` is replaced by each encoding.
        train: How it is trained.
        task: The trigger task it is trained on.
        encodings: Positional encodings of the trained models.
        seeds: Seeds of the trained models (``model.seed = train.seed = s``).
        pretrained: Names of pretrained TransformerLens models to score alongside (e.g.
            ``gpt2``); they need their weights in the local cache or a reachable hub.
        repeat_len: Block length of the stripe induction score.
        n_samples: Random sequences per score.
    """

    model: AssocConfig = _tutorial("model")
    train: TrainConfig = _tutorial("train")
    task: TaskConfig = _tutorial("task")
    encodings: tuple[str, ...] = ("relative", "standard")
    seeds: tuple[int, ...] = (0,)
    pretrained: tuple[str, ...] = ()
    repeat_len: int = 50
    n_samples: int = 10

    def __post_init__(self) -> None:
        _kit.check_encodings(self.encodings)
        _kit.check_seeds(self.seeds)
        check_int("repeat_len", self.repeat_len, minimum=2)
        check_int("n_samples", self.n_samples, minimum=1)
        for name in self.pretrained:
            if "." in name and "/" not in name:
                raise ValueError(f"pretrained={name!r}; expected a model name or hub id")
        super().__post_init__()


def _summary(table: pd.DataFrame) -> dict[str, Any]:
    first = table[table["layer"] == 0]
    later = table[table["layer"] >= 1]
    best_ind = later.loc[later["induction"].idxmax()] if len(later) else None
    best_prev = first.loc[first["previous_token"].idxmax()]
    return {
        "heads": table.drop(columns=["model"]).to_dict(orient="records"),
        "best_induction": float(best_ind["induction"]) if best_ind is not None else None,
        "best_induction_head": str(best_ind["head_name"]) if best_ind is not None else None,
        "best_previous_token_layer0": float(best_prev["previous_token"]),
        "best_previous_token_head": str(best_prev["head_name"]),
        "n_induction_heads": int((table["induction"] >= HEAD_THRESHOLD).sum()),
    }


def pretrained_claims(names: tuple[str, ...]) -> list[Claim]:
    """One claim per pretrained model: it has an induction head (score >= 0.4).

    Example:
        >>> [c.name for c in pretrained_claims(("gpt2",))]
        ['gpt2_induction_head']
    """
    return [
        Claim(
            f"{name}_induction_head",
            f"{name}.best_induction",
            ">=",
            HEAD_THRESHOLD,
            f"{name} has an induction head",
        )
        for name in names
    ]


class InductionHeadsExperiment(Experiment):
    """Previous-token and induction heads of trained models (and pretrained ones)."""

    name = "induction_heads"
    description = "head scores of trained RPE/APE models side by side (and GPT-2 if cached)"
    config_class = InductionHeadsConfig

    def quick_config(self) -> InductionHeadsConfig:
        """Small setting for tests (d 32, 150 steps)."""
        return InductionHeadsConfig().override(
            {"model.d_model": 32, "train.steps": 150, "n_samples": 4, "repeat_len": 20}
        )

    def measure(self, config: InductionHeadsConfig, progress: bool = True) -> Result:
        _kit.check_config(config, InductionHeadsConfig, "an")
        t0 = time.perf_counter()
        task = make_task(config.task, config.train.batch_size, config.model.device)
        external = {name: _resolve(name) for name in config.pretrained}
        per_seed, tables = [], []
        for seed in config.seeds:
            models: dict[str, Any] = {}
            for enc in config.encodings:
                models[enc], _, _ = _kit.train_model(
                    config.model.replace(positional_embedding_type=enc, seed=seed),
                    task,
                    config.train.replace(seed=seed),
                    progress=progress,
                )
            models.update(external)
            table, _ = compare_induction_heads(
                models, repeat_len=config.repeat_len, n_samples=config.n_samples, seed=seed
            )
            table.insert(0, "seed", seed)
            tables.append(table)
            per_seed.append({label: _summary(table[table["model"] == label]) for label in models})
        artifacts = {"table": pd.concat(tables, ignore_index=True)}
        return _kit.make_result(self.name, config, per_seed, t0, artifacts)

    def claims(self, config: InductionHeadsConfig) -> list[Claim]:
        """Each trained model has a previous-token head in layer 0 and an induction head above
        it; each pretrained model has an induction head (score >= 0.4)."""
        out = []
        for enc in config.encodings:
            out += [
                Claim(f"{enc}_previous_token_head", f"{enc}.best_previous_token_layer0", ">=",
                      HEAD_THRESHOLD, "a layer-0 head attends to the previous token"),
                Claim(f"{enc}_induction_head", f"{enc}.best_induction", ">=", HEAD_THRESHOLD,
                      "a later head attends to the token after the current token's last copy"),
            ]  # fmt: skip
        return out + pretrained_claims(config.pretrained)

    def report(self, result: Result) -> Report:
        outcomes = self.evaluate_claims(result)
        lines = [
            "# Induction heads side by side",
            "",
            f"Seeds {', '.join(map(str, result.seeds))}; wall time {result.seconds:.0f} s on "
            f"{result.environment.get('machine')} ({result.environment.get('cpu_count')} cores).",
            "",
            "## Claims",
            "",
            claims_table(outcomes),
            "",
            "## Best heads (first seed)",
            "",
            "| model | best induction head | score | best layer-0 previous-token head | score |",
            "|---|---|---|---|---|",
        ]
        for label, s in result.per_seed[0].items():
            lines.append(
                f"| {label} | {s['best_induction_head']} | {fmt(s['best_induction'])} | "
                f"{s['best_previous_token_head']} | {fmt(s['best_previous_token_layer0'])} |"
            )
        figures = {}
        table = result.artifacts.get("table")
        if table is not None:
            figures["head_scores.png"] = lambda path: _save_comparison(table, path)
            lines += ["", "Figure: `head_scores.png` (scores of every head, first seed)."]
        return Report("\n".join(lines) + "\n", figures)


def _save_comparison(table: pd.DataFrame, path: Any) -> None:
    from tlassoc.experiments._plots import save_png
    from tlassoc.viz.heads import plot_model_comparison

    first = table[table["seed"] == table["seed"].iloc[0]]
    save_png(plot_model_comparison(first, ["induction", "previous_token"]), path)


__all__ = [
    "HEAD_THRESHOLD",
    "InductionHeadsConfig",
    "InductionHeadsExperiment",
    "compare_induction_heads",
    "pretrained_claims",
]
