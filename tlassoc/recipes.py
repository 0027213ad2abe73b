"""Every named run of tlassoc: a :class:`~tlassoc.config.RunConfig` and a one-line description.

``tlassoc recipes`` lists them (with the time a run took on the development machine);
``tlassoc train NAME`` trains one; experiments start from one. A recipe is a function of no
arguments returning a fresh :class:`RunConfig`, so changing the returned object never changes
the recipe. Change settings with :meth:`RunConfig.set` (or ``--set path=value`` on the command
line).

Example:
    >>> run = get("rpe")
    >>> run.model.positional_embedding_type, run.train.optimizer, run.task.seq_len
    ('relative', 'sgd', 256)
    >>> get("tutorial").set("train.steps", 10).train.steps
    10
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tlassoc import presets
from tlassoc._io import package_json
from tlassoc.config import RunConfig, TaskConfig, TrainConfig


@dataclass(frozen=True)
class Recipe:
    """A named run: ``build()`` returns a fresh :class:`RunConfig`."""

    name: str
    description: str
    build: Callable[[], RunConfig]


_CHECKPOINTS = dict(log_every=50, checkpoint_every=100)


def _simplified(model_fn: Callable[..., Any], **model: Any) -> Callable[[], RunConfig]:
    return lambda: RunConfig(
        model=model_fn(**model),
        train=TrainConfig.simplified(**_CHECKPOINTS),
        task=TaskConfig(seq_len=256),
    )


def _staged(model_fn: Callable[..., Any]) -> Callable[[], RunConfig]:
    return lambda: RunConfig(
        model=model_fn(), train=TrainConfig.staged(**_CHECKPOINTS), task=TaskConfig(seq_len=256)
    )


def _bietti_ffn() -> RunConfig:
    return RunConfig(
        model=presets.bietti_simplified(ffn_type="linear"),
        train=TrainConfig.simplified(loss_on="all", **_CHECKPOINTS),
        task=TaskConfig(seq_len=256),
    )


def _full() -> RunConfig:
    return RunConfig(
        model=presets.full(), train=TrainConfig.full(**_CHECKPOINTS), task=TaskConfig(seq_len=256)
    )


def _lengthgen() -> RunConfig:
    # The length-generalisation experiment's setting at T_train 32: d_model 8 x T_train,
    # relative distances clipped at T_train // 2, n_ctx 4 x T_train (the longest evaluation);
    # AdamW (SGD does not form the induction head within a few hundred steps at batch 64).
    return RunConfig(
        model=presets.rpe(d_model=256, n_ctx=128, max_relative_distance=16),
        train=TrainConfig(
            steps=400,
            batch_size=64,
            optimizer="adamw",
            lr=0.05,
            weight_decay=0.0,
            loss_on="in_context",
            log_every=25,
            eval_batch_size=64,
        ),
        task=TaskConfig(seq_len=32, n_triggers=5),
    )


def _paper_scale() -> RunConfig:
    # The papers' scale: d 256, batch 512, sequence 256, SGD with momentum, 1,000 steps.
    return RunConfig(
        model=presets.rpe(d_model=256, n_ctx=1024),
        train=TrainConfig.simplified(**_CHECKPOINTS),
        task=TaskConfig(seq_len=256),
    )


def _tutorial() -> RunConfig:
    return RunConfig(
        model=presets.rpe(d_model=64, n_ctx=256),
        train=TrainConfig.full(
            steps=500,
            batch_size=64,
            lr=0.1,
            weight_decay=0.0,
            loss_on="in_context",
            log_every=0,
            eval_batch_size=8,
        ),  # fmt: skip
        task=TaskConfig(seq_len=128, n_triggers=5, trigger_mode="random"),
    )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("rpe", "simplified 2-layer model, relative positions in layer 0 (d 128), "
               "SGD recipe, T 256", _simplified(presets.rpe)),
        Recipe("ape", "simplified 2-layer model, absolute positions (d 128), SGD recipe, T 256",
               _simplified(presets.ape)),
        Recipe("bietti", "Bietti et al.'s simplified model as published (d 256, absolute "
               "positions), SGD recipe", _simplified(presets.bietti_simplified)),
        Recipe("bietti-ffn", "bietti plus the linear feed-forward bigram memory, loss on all "
               "tokens", _bietti_ffn),
        Recipe("staged-rpe", "rpe with W_O2, W_K2, W_K1 released one after another",
               _staged(presets.rpe)),
        Recipe("staged-ape", "ape with W_O2, W_K2, W_K1 released one after another",
               _staged(presets.ape)),
        Recipe("nope", "three layers without positional information, SGD recipe",
               _simplified(presets.nope)),
        Recipe("full", "pre-LayerNorm, 4 heads, ReLU MLPs, AdamW (the realistic counterpart)",
               _full),
        Recipe("lengthgen", "the length-generalisation run: rpe at d 256, T_train 32, "
               "400 AdamW steps", _lengthgen),
        Recipe("paper-scale", "the papers' scale: rpe at d 256, batch 512, T 256, 1,000 SGD "
               "steps (a GPU run: --set model.device=cuda)", _paper_scale),
        Recipe("tutorial", "fast run for notebooks: rpe d 64, random triggers, T 128, "
               "500 AdamW steps", _tutorial),
    )
}  # fmt: skip


def names() -> list[str]:
    """The recipe names, in listing order."""
    return list(RECIPES)


def get(name: str) -> RunConfig:
    """A fresh :class:`RunConfig` of the recipe ``name``.

    Raises:
        ValueError: ``unknown recipe 'x'; expected one of [...]``.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {names()}")
    return RECIPES[name].build()


def measured_times() -> dict[str, Any]:
    """Measured run times of the recipes on the development machine (``recipe_times.json``,
    written by ``benchmarks/time_recipes.py``): ``{"machine": ..., "recipes": {name:
    {"seconds_per_step": s, "steps": n, "seconds": total}}}``; empty if never measured."""
    return package_json("recipe_times.json")


__all__ = ["RECIPES", "Recipe", "get", "measured_times", "names"]
