"""Induction heads of a small model trained on real text, next to the simplified models.

GPT-2's induction heads are the usual reference, but its weights need the Hugging Face hub. As
a stand-in that is trained on real text and needs no download, this experiment trains a small
TransformerLens-style model — two attention-only layers of four heads, learned queries, learned
absolute positions, pre-LayerNorm, every weight trained — on the characters of a real English
text (:mod:`tlassoc.data.natural`; by default the Python reference manual that ships with
CPython; ``text=PATH`` for any other file, e.g. a local Tiny Shakespeare), one
model per seed. It then finds its previous-token and induction heads with the same tools as
tutorial 04:

* pattern scores (:func:`tlassoc.experiments.induction_heads.compare_induction_heads`: the stripe
  induction score on a repeated random block and the previous-token score) of every head of the
  text model, of the simplified models trained on the trigger task (``simplified`` recipes), of
  the ideal simplified construction (:func:`tlassoc.memory.ideal_model`) and of any pretrained
  model named in ``pretrained`` (e.g. ``gpt2`` when its weights are cached);
* noising activation patching of every head's output ``z`` on repeated-block prompts
  (:func:`tlassoc.patching.patch_heads`): which heads are necessary for the induction
  log-probability;
* the held-out loss per position and the in-context learning score (loss late in the window
  minus loss early in it), next to a bigram model's loss on the same held-out text.

The claims (:meth:`NaturalInductionExperiment.claims`) use TransformerLens's 0.4 convention
for the stripe score. Measured numbers: docs/experiments.md.

Example:
    >>> cfg = NaturalInductionConfig()
    >>> cfg.model.n_layers, cfg.model.n_heads, cfg.model.identity_query, cfg.text
    (2, 4, False, 'python-docs')
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tlassoc import recipes
from tlassoc.config import RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig, check_int
from tlassoc.data.natural import PYTHON_DOCS, TEXT_VOCAB
from tlassoc.experiments import _kit
from tlassoc.experiments._plots import pyplot, save_png
from tlassoc.experiments._report_kit import finish_report, interval_cell, report_head, seeds_line
from tlassoc.experiments.framework import Claim, Experiment, Report, Result, environment, fmt
from tlassoc.experiments.induction_heads import (
    HEAD_THRESHOLD,
    compare_induction_heads,
    pretrained_claims,
)

#: Label of the text model in tables.
TEXT_MODEL = "text-2l"
#: Label of the ideal simplified construction.
IDEAL_MODEL = "ideal-rpe"


def _text_model() -> AssocConfig:
    return AssocConfig(
        n_layers=2,
        n_heads=4,
        d_model=64,
        n_ctx=64,
        d_vocab=len(TEXT_VOCAB),
        positional_embedding_type="standard",
        normalization_type="LN",
        model_name=TEXT_MODEL,
    )


def _text_train() -> TrainConfig:
    return TrainConfig.full(
        steps=1200, batch_size=32, lr=3e-3, weight_decay=0.01, log_every=100, eval_batch_size=32
    )


@dataclass
class NaturalInductionConfig(RunConfig):
    """The natural-text experiment: the text model, its training, the text and the scoring.

    ``task`` is not the trigger task here: only ``task.seq_len`` is used, as the length of the
    text windows the model trains on.

    Args:
        model: The text model (2 layers x 4 heads, d 64, learned query and positions, LN,
            attention only, 96-character vocabulary).
        train: Its training (AdamW, lr 3e-3, batch 32, 1,200 steps, loss on every token).
        task: ``task.seq_len``: the window length (64).
        seeds: Seeds of the text model and of the simplified models (``model.seed =
            train.seed = s``).
        text: ``python-docs`` (the Python manual shipped with CPython) or the path of a UTF-8
            text file (e.g. a local copy of Tiny Shakespeare's input.txt).
        held_out: Fraction of the text (its end) kept for evaluation.
        repeat_fraction: Fraction of the training windows that repeat a text segment (ours;
            :class:`~tlassoc.data.natural.TextTask`); 0 trains on the text as it is.
        simplified: Recipes of simplified trigger-task models trained alongside (e.g.
            ``tutorial``); ``()`` for none.
        ideal: Also score the ideal simplified construction (no training).
        pretrained: Pretrained TransformerLens models to score alongside (e.g. ``gpt2``; needs
            its weights in the local cache or a reachable hub).
        repeat_len: Block length of the stripe induction score.
        n_samples: Random sequences per score.
        patch_repeat_len: Block length of the patching prompts.
        patch_samples: Prompts of the patching.
        eval_windows: Held-out windows of the loss-per-position curve.
    """

    model: AssocConfig = field(default_factory=_text_model)
    train: TrainConfig = field(default_factory=_text_train)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(seq_len=64))
    seeds: tuple[int, ...] = (0, 1, 2)
    text: str = PYTHON_DOCS
    held_out: float = 0.1
    repeat_fraction: float = 0.0
    simplified: tuple[str, ...] = ("tutorial",)
    ideal: bool = True
    pretrained: tuple[str, ...] = ()
    repeat_len: int = 50
    n_samples: int = 10
    patch_repeat_len: int = 20
    patch_samples: int = 8
    eval_windows: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"text={self.text!r}; expected {PYTHON_DOCS!r} or a file path")
        if self.text != PYTHON_DOCS and not Path(self.text).expanduser().is_file():
            # checked here, before any seed starts, so that a typo costs one line, not a run
            raise ValueError(f"text={self.text!r}; expected {PYTHON_DOCS!r} or an existing file")
        _kit.check_seeds(self.seeds)
        _kit.check_number("held_out", self.held_out, "(0, 0.5)", what="a fraction")
        _kit.check_number("repeat_fraction", self.repeat_fraction)
        for name in self.simplified:
            if name not in recipes.RECIPES:
                raise ValueError(f"simplified={name!r}; expected recipe names {recipes.names()}")
        for name in self.pretrained:
            if not name or ("." in name and "/" not in name):
                raise ValueError(f"pretrained={name!r}; expected a model name or hub id")
        if not isinstance(self.ideal, bool):
            raise ValueError(f"ideal={self.ideal!r}; expected a bool")
        for name in ("repeat_len", "patch_repeat_len"):
            check_int(name, getattr(self, name), minimum=2)
        for name in ("n_samples", "patch_samples", "eval_windows"):
            check_int(name, getattr(self, name), minimum=1)
        if isinstance(self.model, AssocConfig):
            self._check_model(self.model)
        super().__post_init__()

    def _check_model(self, m: AssocConfig) -> None:
        if m.d_vocab != len(TEXT_VOCAB):
            raise ValueError(f"model.d_vocab={m.d_vocab}; expected {len(TEXT_VOCAB)} characters")
        if m.n_ctx < self.task.seq_len:
            raise ValueError(f"model.n_ctx={m.n_ctx}; expected >= task.seq_len={self.task.seq_len}")
        if m.n_layers < 2:
            raise ValueError(f"model.n_layers={m.n_layers}; expected >= 2 (an induction head)")
        if 2 * self.patch_repeat_len > m.n_ctx:
            raise ValueError(
                f"patch_repeat_len={self.patch_repeat_len}; expected <= n_ctx / 2 = {m.n_ctx // 2}"
            )


# ------------------------------------------------------------------------------------------------
# Text, baselines and losses
# ------------------------------------------------------------------------------------------------


def text_tasks(cfg: NaturalInductionConfig) -> tuple[Any, Any, dict[str, Any]]:
    """Training and held-out :class:`~tlassoc.data.natural.TextTask` of ``cfg``, and a
    description of the text (source, characters, sha256, share of characters in the vocabulary).

    Example:
        >>> tr, ho, info = text_tasks(NaturalInductionConfig())
        >>> info["source"], tr.ids.numel() > ho.ids.numel() > 0
        ('python-docs', True)
    """
    from tlassoc.data.natural import TextTask, encode_text, load_text, printable_fraction

    text, digest = load_text(cfg.text)
    ids = encode_text(text)
    if ids.numel() < 20 * (cfg.task.seq_len + 1):
        raise ValueError(
            f"text has {ids.numel()} characters; expected at least 20 windows of "
            f"task.seq_len + 1 = {cfg.task.seq_len + 1}"
        )
    whole = TextTask(ids, cfg.task.seq_len, cfg.train.batch_size, cfg.repeat_fraction)
    train, held = whole.split(cfg.held_out)
    held = TextTask(held.ids, cfg.task.seq_len, cfg.train.batch_size)  # held-out text as it is
    info = {
        "source": cfg.text,
        "characters": len(text),
        "sha256": digest,
        "in_vocabulary": printable_fraction(text),
        "train_tokens": int(train.ids.numel()),
        "held_out_tokens": int(held.ids.numel()),
    }
    return train, held, info


def bigram_loss(train_ids: torch.Tensor, test_ids: torch.Tensor, vocab: int) -> float:
    """Cross-entropy (nats) on ``test_ids`` of the add-one-smoothed bigram model counted on
    ``train_ids``: what a model that reads only the current character can reach.

    Example:
        >>> ids = torch.tensor([0, 1, 0, 1, 0, 1])
        >>> round(bigram_loss(ids, ids, 2), 3)  # -(3 log 0.8 + 2 log 0.75) / 5
        0.249
    """
    counts = torch.ones(vocab, vocab)
    counts.index_put_((train_ids[:-1], train_ids[1:]), torch.ones(len(train_ids) - 1), True)
    logp = (counts / counts.sum(1, keepdim=True)).log()
    return float(-logp[test_ids[:-1], test_ids[1:]].mean())


@torch.no_grad()
def loss_by_position(model: Any, batch: Any) -> list[float]:
    """Mean next-character loss at every position of ``batch``'s windows.

    Example:
        >>> from tlassoc.data.natural import TextTask
        >>> m = __import__("tlassoc").AssocTransformer(NaturalInductionConfig().model)
        >>> b = TextTask(torch.arange(500) % 96, 16).sample(seed=0, batch_size=2)
        >>> len(loss_by_position(m, b))
        16
    """
    model.eval()
    logits = model(batch.tokens)
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.targets.flatten(), reduction="none"
    ).view_as(batch.targets)
    return nll.mean(0).tolist()


def icl_score(per_position: list[float]) -> float:
    """In-context learning score: mean loss over the last 8 positions minus the mean loss over
    8 positions around a tenth of the window (Olsson et al. use 500 vs 50 of 512).

    Example:
        >>> icl_score([2.0] * 20 + [1.0] * 80)
        -1.0
    """
    n = len(per_position)
    early = max(1, n // 10)
    lo, hi = max(0, early - 4), min(n, early + 4)
    late = per_position[-8:]
    return sum(late) / len(late) - sum(per_position[lo:hi]) / (hi - lo)


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


def train_text_model(cfg: NaturalInductionConfig, seed: int, task: Any, progress: bool) -> Any:
    """The text model of one seed, trained on ``task`` (a :class:`TextTask`)."""
    from tlassoc.data.natural import text_tokenizer

    model, result, _ = _kit.train_model(
        cfg.model.replace(seed=seed),
        task,
        cfg.train.replace(seed=seed),
        progress=progress,
        tokenizer=text_tokenizer(),
    )
    return model.eval(), result


def _simplified_models(cfg: NaturalInductionConfig, seed: int, progress: bool) -> dict[str, Any]:
    from tlassoc.data import make_task

    out: dict[str, Any] = {}
    for name in cfg.simplified:
        run = recipes.get(name)
        task = make_task(run.task, batch_size=run.train.batch_size)
        model, _, _ = _kit.train_model(
            run.model.replace(seed=seed), task, run.train.replace(seed=seed), progress=progress
        )
        out[f"simplified-{name}"] = model.eval()
    if cfg.ideal:
        from tlassoc.memory import ideal_model

        out[IDEAL_MODEL] = ideal_model("relative", d_model=128, n_ctx=128, seed=seed).eval()
    return out


def load_pretrained(names: tuple[str, ...]) -> dict[str, Any]:
    """The pretrained models ``names``, or one ``ValueError`` naming the one that is missing.

    Example:
        >>> load_pretrained(())
        {}
    """
    out: dict[str, Any] = {}
    if not names:
        return out
    from tlassoc.pretrained import HubUnavailableError, load_model

    for name in names:
        try:
            out[name] = load_model(name)
        except HubUnavailableError as err:
            first = str(err).split(". ")[0]
            raise ValueError(
                f"pretrained={name!r}; expected a model whose weights are cached or a reachable "
                f"hub ({first})"
            ) from None
    return out


# ------------------------------------------------------------------------------------------------
# Analysis of one model
# ------------------------------------------------------------------------------------------------


def patching_summary(model: Any, cfg: NaturalInductionConfig, seed: int) -> dict[str, Any]:
    """Noising patching of every head's ``z`` on repeated-block prompts: the normalised effect
    per head and the head whose effect is largest in the layers above 0."""
    from tlassoc.patching import induction_prompts, patch_heads

    prompts = induction_prompts(
        model, repeat_len=cfg.patch_repeat_len, n_samples=cfg.patch_samples, seed=seed
    )
    res = patch_heads(model, prompts, act="z", direction="noise")
    effect = res.normalized
    later = effect[1:]
    flat = int(torch.nan_to_num(later, nan=-math.inf).flatten().argmax())
    layer, head = 1 + flat // effect.shape[1], flat % effect.shape[1]
    return {
        "effect": effect.tolist(),
        "clean": res.clean_value,
        "corrupted": res.corrupted_value,
        "top_head": f"{layer}.{head}",
        "top_effect": float(effect[layer, head]),
        "result": res,
    }


def head_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Best heads of one model's score table (layer 0 for previous-token, later layers for
    induction) and the heads above the 0.4 threshold."""
    first, later = table[table["layer"] == 0], table[table["layer"] >= 1]
    ind = later.loc[later["induction"].idxmax()]
    prev = first.loc[first["previous_token"].idxmax()]
    return {
        "best_induction": float(ind["induction"]),
        "best_induction_head": str(ind["head_name"]),
        "best_previous_token_layer0": float(prev["previous_token"]),
        "best_previous_token_head": str(prev["head_name"]),
        "induction_heads": [
            str(h) for h in later.loc[later["induction"] >= HEAD_THRESHOLD, "head_name"]
        ],
        "scores": table[["head_name", "induction", "previous_token"]].to_dict(orient="records"),
    }


def measure_seed(
    cfg: NaturalInductionConfig, seed: int, tasks: tuple[Any, Any], external: dict[str, Any],
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Train the text model (and the simplified ones) of one seed and measure everything.

    Returns:
        ``(record, artifacts)``: the numbers of the seed and the objects the report draws
        (models, score table, patching result).
    """
    train_task, held = tasks
    t0 = time.perf_counter()
    model, result = train_text_model(cfg, seed, train_task, progress)
    train_seconds = time.perf_counter() - t0
    models = {TEXT_MODEL: model, **_simplified_models(cfg, seed, progress), **external}
    table, _fig = compare_induction_heads(
        models, repeat_len=cfg.repeat_len, n_samples=cfg.n_samples, seed=seed
    )
    _close(_fig)
    batch = held.sample(seed=seed + 1000, batch_size=cfg.eval_windows)
    per_pos = loss_by_position(model, batch)
    patch = patching_summary(model, cfg, seed)
    text_heads = head_summary(table[table["model"] == TEXT_MODEL])
    record: dict[str, Any] = {
        TEXT_MODEL: {
            **text_heads,
            "held_out_loss": sum(per_pos) / len(per_pos),
            "loss_by_position": per_pos,
            "icl_score": icl_score(per_pos),
            "train_seconds": train_seconds,
            "history": [
                {k: r[k] for k in ("step", "loss", "train_loss") if k in r} for r in result.history
            ],
            "patching": {k: v for k, v in patch.items() if k != "result"},
            "top_patched_is_induction_head": float(
                patch["top_head"] in text_heads["induction_heads"]
            ),
        },
    }
    for label in models:
        if label != TEXT_MODEL:
            record[label] = head_summary(table[table["model"] == label])
    table = table.copy()
    table.insert(0, "seed", seed)
    return record, {"table": table, "patching": patch["result"], "model": model}


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


class NaturalInductionExperiment(Experiment):
    """A small attention-only model trained on real text: its heads next to the simplified
    models' (and GPT-2's when its weights are available)."""

    name = "natural_induction"
    description = "2-layer 4-head model trained on real text: its induction heads vs simplified"
    config_class = NaturalInductionConfig

    def quick_config(self) -> NaturalInductionConfig:
        """Small setting for tests (d 32, T 48, 100 steps, no simplified training, one seed)."""
        return NaturalInductionConfig().override(
            {
                "model.d_model": 32,
                "task.seq_len": 48,
                "model.n_ctx": 48,
                "train.steps": 100,
                "train.batch_size": 16,
                "train.log_every": 50,
                "train.eval_batch_size": 8,
                "simplified": (),
                "seeds": (0,),
                "repeat_len": 20,
                "n_samples": 4,
                "patch_repeat_len": 10,
                "patch_samples": 4,
                "eval_windows": 32,
            }
        )

    def measure(self, config: NaturalInductionConfig, progress: bool = True) -> Result:
        _kit.check_config(config, NaturalInductionConfig)
        t0 = time.perf_counter()
        external = load_pretrained(config.pretrained)  # fail before training, not after
        train_task, held, info = text_tasks(config)
        ref = bigram_loss(train_task.ids, held.ids, len(TEXT_VOCAB))
        per_seed, tables, patches, models = [], [], {}, {}
        for seed in config.seeds:
            record, art = measure_seed(config, seed, (train_task, held), external, progress)
            record[TEXT_MODEL]["bigram_loss"] = ref
            per_seed.append(record)
            tables.append(art["table"])
            patches[seed] = art["patching"]
            models[f"{TEXT_MODEL}-seed{seed}"] = art["model"]
        env = environment()
        env["text"] = info
        table = pd.concat(tables, ignore_index=True)
        artifacts = {"models": models, "table": table, "patching": patches}
        return _kit.make_result(self.name, config, per_seed, t0, artifacts, env)

    def claims(self, config: NaturalInductionConfig) -> list[Claim]:
        """The text model has a layer-0 previous-token head and a later induction head (scores
        >= 0.4, TransformerLens's convention), patching finds the induction circuit (the head
        whose noising hurts most is one of the induction heads), and every pretrained model has
        an induction head."""
        t = TEXT_MODEL
        out = [
            Claim("text_previous_token_head", f"{t}.best_previous_token_layer0", ">=",
                  HEAD_THRESHOLD, "the text model has a layer-0 head attending to t-1"),
            Claim("text_induction_head", f"{t}.best_induction", ">=", HEAD_THRESHOLD,
                  "the text model has a later head on the induction stripe"),
            Claim("text_patching_finds_induction_head", f"{t}.top_patched_is_induction_head",
                  ">=", 1.0, "the head whose noising hurts induction most is an induction head"),
        ]  # fmt: skip
        return out + pretrained_claims(config.pretrained)

    def report(self, result: Result) -> Report:
        return _build_report(self, result)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _tables(result: Result) -> list[str]:
    labels = list(result.per_seed[0])
    lines = [
        "## Best heads per model",
        "",
        "Stripe induction score (later layers) and previous-token score (layer 0); a head at or "
        f"above {HEAD_THRESHOLD} counts.",
        "",
        "| model | seed | best induction head | score | best layer-0 previous-token head | score |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            s = rec[label]
            lines.append(
                f"| {label} | {seed} | {s['best_induction_head']} | {fmt(s['best_induction'])} | "
                f"{s['best_previous_token_head']} | {fmt(s['best_previous_token_layer0'])} |"
            )
        for key in ("best_induction", "best_previous_token_layer0"):
            vals = [rec[label][key] for rec in result.per_seed]
            lines.append(f"| {label} | mean [95 %] {key} | | {interval_cell(vals)} | | |")
    t = TEXT_MODEL
    lines += [
        "",
        "## The text model",
        "",
        "| seed | held-out loss | bigram loss | ICL score | induction heads (>= 0.4) | "
        "clean - corrupted log-prob | top patched head | its effect | train seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, rec in zip(result.seeds, result.per_seed, strict=True):
        r = rec[t]
        p = r["patching"]
        lines.append(
            f"| {seed} | {fmt(r['held_out_loss'])} | {fmt(r['bigram_loss'])} | "
            f"{fmt(r['icl_score'])} | {', '.join(r['induction_heads']) or 'none'} | "
            f"{fmt(p['clean'] - p['corrupted'])} | {p['top_head']} | {fmt(p['top_effect'])} | "
            f"{r['train_seconds']:.0f} |"
        )
    for key in ("held_out_loss", "icl_score"):
        vals = [rec[t][key] for rec in result.per_seed]
        lines.append(f"| mean [95 %] {key} | {interval_cell(vals)} | | | | | | | |")
    lines += [
        "",
        "Patching effects are normalised by the clean - corrupted gap of the induction "
        "log-probability; where that gap is near 0 the model does not copy the repeated block "
        "and the effects carry no meaning.",
    ]
    return lines


def _plot_losses(result: Result, path: Any) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for seed, rec in zip(result.seeds, result.per_seed, strict=True):
        ax.plot(rec[TEXT_MODEL]["loss_by_position"], lw=1, label=f"seed {seed}")
    ax.axhline(result.per_seed[0][TEXT_MODEL]["bigram_loss"], color="gray", ls="--", lw=1,
               label="bigram model")  # fmt: skip
    ax.set_xlabel("position in the window")
    ax.set_ylabel("held-out loss (nats)")
    ax.set_title("Text model: held-out loss at each position of the window")
    ax.legend(fontsize=8)
    save_png(fig, path)


def _figures(result: Result) -> dict[str, Any]:
    out: dict[str, Any] = {"loss_by_position.png": lambda path: _plot_losses(result, path)}
    table = result.artifacts.get("table")
    if table is not None:
        from tlassoc.viz.heads import plot_model_comparison

        first = table[table["seed"] == result.seeds[0]]
        out["head_scores.png"] = lambda path: save_png(
            plot_model_comparison(first, ["induction", "previous_token"]), path
        )
    patch = result.artifacts.get("patching", {}).get(result.seeds[0])
    if patch is not None:
        from tlassoc.viz.heads import plot_patching

        out["patching.png"] = lambda path: save_png(
            plot_patching(patch, title=f"{TEXT_MODEL}: noise z (seed {result.seeds[0]})"), path
        )
    return out


def _build_report(experiment: NaturalInductionExperiment, result: Result) -> Report:
    c = result.config
    m, t, text = c["model"], c["train"], result.environment.get("text", {})
    setting = (
        f"Text model: {m['n_layers']} attention-only layers x {m['n_heads']} heads, d_model "
        f"{m['d_model']}, learned query and absolute positions, LayerNorm, {m['d_vocab']} "
        f"characters; {t['steps']} {t['optimizer']} steps (lr {t['lr']}, batch {t['batch_size']} "
        f"windows of {c['task']['seq_len']}). Text: {text.get('source')} "
        f"({text.get('characters')} characters, sha256 {str(text.get('sha256'))[:12]}…, "
        f"{fmt(text.get('in_vocabulary'))} of them in the vocabulary; the last "
        f"{c['held_out']:.0%} held out). Compared with: "
        f"{', '.join(k for k in result.per_seed[0] if k != TEXT_MODEL) or 'nothing'}. "
        f"{seeds_line(result)}"
    )
    lines = report_head(
        experiment, result, "Induction heads of a model trained on real text", setting
    )
    return finish_report(lines + _tables(result), _figures(result))


__all__ = [
    "IDEAL_MODEL",
    "TEXT_MODEL",
    "NaturalInductionConfig",
    "NaturalInductionExperiment",
    "bigram_loss",
    "head_summary",
    "icl_score",
    "load_pretrained",
    "loss_by_position",
    "measure_seed",
    "patching_summary",
    "text_tasks",
    "train_text_model",
]
