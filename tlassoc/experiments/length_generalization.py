"""Length generalisation of the induction circuit: relative versus absolute positions.

Trains the simplified two-layer model once per positional encoding (``relative`` and
``standard`` by default) and per seed on the trigger task at training length ``T_train =
task.seq_len``, then measures (see ``docs/method.md``, Experiments):

* per-position previous-token argmax accuracy (layer-0 attention argmax at ``t`` is ``t - 1``)
  at the longest evaluation length, summarised inside and beyond ``T_train``;
* in-context accuracy (argmax correct on targets with label >= 2, and >= 1) on ordinary
  sequences of each evaluation length (``T_train`` times ``eval_multiples``);
* the same in-context segment (``T_train`` tokens) placed at the start, and placed after a
  trigger-free prefix longer than ``T_train`` so that all of its evidence lies beyond the
  training length (:meth:`~tlassoc.data.TriggerBigramTask.place_segment`).

The claims (Wang & Sato) are data: see :meth:`LengthGeneralization.claims`.

Example:
    >>> cfg = LengthGenConfig()
    >>> cfg.task.seq_len, cfg.eval_lens, cfg.model.n_ctx
    (128, (128, 256, 512), 512)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from tlassoc import recipes
from tlassoc.config import POSITIONAL_TYPES, RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig, check_int
from tlassoc.data import make_task
from tlassoc.experiments.framework import (
    Claim,
    Experiment,
    Report,
    Result,
    environment,
)
from tlassoc.metrics import label_accuracy, previous_token_accuracy

#: Display labels of the positional encodings.
LABELS = {"relative": "RPE", "standard": "APE", "none": "NoPE"}


def _lengthgen(section: str) -> Any:
    return field(default_factory=lambda: getattr(recipes.get("lengthgen"), section))


@dataclass
class LengthGenConfig(RunConfig):
    """The length-generalisation experiment: a run configuration (the ``lengthgen`` recipe by
    default) plus its evaluation settings.

    Each seed ``s`` trains every encoding with ``model.seed = train.seed = s`` and evaluates on
    batches seeded from ``s + 1000``. ``model.n_ctx`` is derived: the longest evaluation length.

    Args:
        model: The model; its ``positional_embedding_type`` is replaced by each encoding.
        train: How each model is trained.
        task: The trigger task; ``task.seq_len`` is the training length ``T_train``.
        encodings: Positional encodings compared (``positional_embedding_type`` values).
        eval_multiples: Evaluation lengths as multiples of ``T_train`` (the largest must be at
            least 2 so that a segment fits after a prefix longer than ``T_train``).
        seeds: Seeds; every claim must hold for each.
        eval_sequences: Sequences per evaluation batch.
        html_len: Length of the sequence drawn in the attention views.
    """

    model: AssocConfig = _lengthgen("model")
    train: TrainConfig = _lengthgen("train")
    task: TaskConfig = _lengthgen("task")
    encodings: tuple[str, ...] = ("relative", "standard")
    eval_multiples: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (0,)
    eval_sequences: int = 64
    html_len: int = 256

    def __post_init__(self) -> None:
        if not self.encodings or any(e not in POSITIONAL_TYPES for e in self.encodings):
            raise ValueError(f"encodings={self.encodings!r}; expected values in {POSITIONAL_TYPES}")
        if not self.seeds:
            raise ValueError("seeds=(); expected at least one seed")
        for s in self.seeds:
            check_int("seeds", s, minimum=0)
        for m in self.eval_multiples:
            check_int("eval_multiples", m, minimum=1)
        if not self.eval_multiples or max(self.eval_multiples) < 2:
            raise ValueError(
                f"eval_multiples={self.eval_multiples!r}; expected a multiple >= 2 so that a "
                "segment of T_train tokens fits after a prefix longer than T_train"
            )
        check_int("eval_sequences", self.eval_sequences, minimum=1)
        check_int("html_len", self.html_len, minimum=2)
        if isinstance(self.model, AssocConfig) and self.model.n_ctx != max(self.eval_lens):
            self.model = self.model.replace(n_ctx=max(self.eval_lens))
        super().__post_init__()

    @property
    def eval_lens(self) -> tuple[int, ...]:
        """Evaluation lengths: ``T_train`` times each of ``eval_multiples``."""
        return tuple(self.task.seq_len * m for m in self.eval_multiples)

    @property
    def late_prefix(self) -> int:
        """Trigger-free prefix before the late segment: ``n_ctx - T_train`` (it ends at n_ctx)."""
        return max(self.eval_lens) - self.task.seq_len

    @property
    def near_prefix(self) -> int:
        """A shorter prefix, ``T_train + T_train // 4`` (160 for 128): the evidence lies just
        beyond ``T_train`` and the context is shorter than at ``n_ctx``."""
        return self.task.seq_len + self.task.seq_len // 4

    def model_config(self, encoding: str, seed: int) -> AssocConfig:
        """The model configuration of one encoding and seed."""
        return self.model.replace(
            positional_embedding_type=encoding, model_name=LABELS.get(encoding, encoding), seed=seed
        )


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def _segment(model: Any, task: Any, segment: Any, early_logits: Any, prefix: int, seed: int):
    late = task.place_segment(segment, prefix, seed=seed)
    late_logits = model(late.tokens)
    early2 = label_accuracy(early_logits, segment.targets, segment.labels, 2)
    late2 = label_accuracy(late_logits, late.targets, late.labels, 2)
    return {
        "segment_len": segment.tokens.shape[1],
        "late_prefix": prefix,
        "early_acc_ge2": early2,
        "late_acc_ge2": late2,
        "early_acc_ge1": label_accuracy(early_logits, segment.targets, segment.labels, 1),
        "late_acc_ge1": label_accuracy(late_logits, late.targets, late.labels, 1),
        "drop": early2 - late2,
    }


def _per_position(model: Any, task: Any, cfg: LengthGenConfig, seed: int) -> dict[str, Any]:
    n_ctx, T = max(cfg.eval_lens), cfg.task.seq_len
    batch = task.sample(seed=seed, batch_size=cfg.eval_sequences, seq_len=n_ctx)
    logits, cache = model.run_with_cache(
        batch.tokens, names_filter=lambda n: n == "blocks.0.attn.hook_pattern"
    )
    per_pos = previous_token_accuracy(cache["blocks.0.attn.hook_pattern"][:, 0])
    correct = (logits.argmax(-1) == batch.targets) & (batch.labels >= 2)
    counts = (batch.labels >= 2).sum(0)
    return {
        "prev_token_acc_per_position": [None if math.isnan(x) else x for x in per_pos.tolist()],
        "prev_token_acc_within": float(per_pos[1:T].mean()),
        "prev_token_acc_beyond": float(per_pos[T:].mean()),
        "icl_acc_per_position": [
            None if int(c) == 0 else float(k) / int(c)
            for k, c in zip(correct.sum(0).tolist(), counts.tolist(), strict=True)
        ],
    }


@torch.no_grad()
def evaluate_length(model: Any, task: Any, cfg: LengthGenConfig, seed: int) -> dict[str, Any]:
    """All evaluation numbers of one trained model (see the module docstring)."""
    model.eval()
    T = cfg.task.seq_len
    out = _per_position(model, task, cfg, seed)
    by_len = {}
    for length in cfg.eval_lens:
        b = task.sample(seed=seed + length, batch_size=cfg.eval_sequences, seq_len=length)
        lg = model(b.tokens)
        by_len[str(length)] = {
            "acc_ge2": label_accuracy(lg, b.targets, b.labels, 2),
            "acc_ge1": label_accuracy(lg, b.targets, b.labels, 1),
            "acc_ge2_beyond_train_len": (
                label_accuracy(lg, b.targets, b.labels, 2, start=T) if length > T else None
            ),
        }
    out["icl_by_length"] = by_len
    segment = task.sample(seed=seed + 7, batch_size=cfg.eval_sequences, seq_len=T)
    early_logits = model(segment.tokens)
    for key, prefix in (("segment", cfg.late_prefix), ("segment_near", cfg.near_prefix)):
        out[key] = _segment(model, task, segment, early_logits, prefix, seed + 8)
    return out


def train_and_evaluate(
    encoding: str,
    config: LengthGenConfig | None = None,
    *,
    seed: int | None = None,
    task: Any = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train the model of one encoding and seed, and evaluate it.

    Args:
        encoding: A ``positional_embedding_type`` (``"relative"``, ``"standard"``, ...).
        config: The experiment's settings (default :class:`LengthGenConfig`).
        seed: The seed (default: the first of ``config.seeds``).
        task: The trigger task (default: ``config.task`` built with the training batch size).
        progress: Show the training progress bar.

    Returns:
        ``(model, numbers)``: the trained model and :func:`evaluate_length`'s numbers, plus
        ``train_seconds``, ``history`` and ``time_to_induction_steps``.

    Example:
        >>> cfg = LengthGenExperiment().quick_config().set("train.steps", 2)
        >>> model, numbers = train_and_evaluate("relative", cfg, progress=False)
        >>> 0.0 <= numbers["prev_token_acc_beyond"] <= 1.0
        True
    """
    from tlassoc.memory.probes import probe_evaluator
    from tlassoc.model import AssocTransformer
    from tlassoc.training import train

    cfg = config or LengthGenConfig()
    if encoding not in POSITIONAL_TYPES:
        raise ValueError(f"encoding={encoding!r}; expected one of {POSITIONAL_TYPES}")
    seed = cfg.seeds[0] if seed is None else seed
    task = task if task is not None else make_task(cfg.task, batch_size=cfg.train.batch_size)
    model = AssocTransformer(cfg.model_config(encoding, seed))
    t0 = time.perf_counter()
    result = train(
        model,
        task,
        cfg.train.replace(seed=seed),
        progress=progress,
        evaluators=[probe_evaluator(task)],
    )
    train_seconds = time.perf_counter() - t0
    numbers = evaluate_length(model, task, cfg, seed=seed + 1000)
    numbers["train_seconds"] = train_seconds
    numbers["history"] = result.history
    numbers["time_to_induction_steps"] = next(
        (r["step"] for r in result.history if (r.get("acc_ge2") or 0) >= 0.9), None
    )
    return model, numbers


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


class LengthGenExperiment(Experiment):
    """Relative versus absolute positions past the training length (Wang & Sato)."""

    name = "length_generalization"
    description = "RPE vs APE: previous-token head and in-context recall beyond T_train"
    config_class = LengthGenConfig

    def quick_config(self) -> LengthGenConfig:
        """Small setting for tests (d 32, 80 steps, batch 32; about a minute on 2 cores)."""
        return LengthGenConfig().override(
            {
                "train.steps": 80,
                "train.batch_size": 32,
                "model.d_model": 32,
                "train.eval_batch_size": 16,
                "eval_sequences": 16,
                "train.log_every": 40,
                "train.lr": 0.1,
                "html_len": 128,
            }
        )

    def measure(self, config: LengthGenConfig, progress: bool = True) -> Result:
        if not isinstance(config, LengthGenConfig):
            raise TypeError(f"config={type(config).__name__}; expected a LengthGenConfig")
        t0 = time.perf_counter()
        task = make_task(config.task, batch_size=config.train.batch_size)
        per_seed, models = [], {}
        for seed in config.seeds:
            record = {}
            for enc in config.encodings:
                model, record[enc] = train_and_evaluate(
                    enc, config, seed=seed, task=task, progress=progress
                )
                models[f"{enc}-seed{seed}"] = model
            per_seed.append(record)
        return Result(
            self.name,
            config.to_dict(),
            list(config.seeds),
            per_seed,
            seconds=time.perf_counter() - t0,
            environment=environment(),
            artifacts={"models": models, "task": task},
        )

    def claims(self, config: LengthGenConfig) -> list[Claim]:
        """Wang & Sato's statements, for the encodings the configuration compares."""
        out = []
        if "relative" in config.encodings:
            out += [
                Claim("rpe_prev_token_beyond", "relative.prev_token_acc_beyond", ">=", 0.95,
                      "the relative previous-token head works past T_train"),
                Claim("rpe_late_segment", "relative.segment.drop", "abs<=", 0.05,
                      "RPE recalls evidence placed beyond T_train as well as early evidence"),
                Claim("rpe_late_segment_near", "relative.segment_near.drop", "abs<=", 0.05,
                      "the same, with the evidence just beyond T_train"),
            ]  # fmt: skip
        if "standard" in config.encodings:
            out += [
                Claim("ape_prev_token_beyond", "standard.prev_token_acc_beyond", "<=", 0.5,
                      "the absolute previous-token head fails at untrained positions"),
                Claim("ape_late_segment", "standard.segment.drop", ">=", 0.3,
                      "APE loses in-context recall when the evidence lies beyond T_train"),
                Claim("ape_late_segment_near", "standard.segment_near.drop", ">=", 0.3,
                      "the same, with the evidence just beyond T_train"),
            ]  # fmt: skip
        return out

    def report(self, result: Result) -> Report:
        from tlassoc.experiments._lengthgen_report import build_report

        return build_report(self, result)


__all__ = [
    "LABELS",
    "LengthGenConfig",
    "LengthGenExperiment",
    "evaluate_length",
    "train_and_evaluate",
]
