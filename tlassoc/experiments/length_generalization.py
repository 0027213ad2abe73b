"""Length generalisation of the induction circuit across positional encodings.

Trains the simplified two-layer model once per positional encoding, per training length
``T_train`` and per seed on the trigger task, then measures (see ``docs/method.md``,
Experiments):

* per-position previous-token argmax accuracy (the previous-token layer's attention argmax at
  ``t`` is ``t - 1``) at the longest evaluation length, summarised inside and beyond ``T_train``;
* in-context accuracy (argmax correct on targets with label >= 2, and >= 1) on ordinary
  sequences of each evaluation length (``T_train`` times ``eval_multiples``), and per position;
* the same in-context segment (``T_train`` tokens) placed at the start, and placed after a
  trigger-free prefix so that all of its evidence lies beyond the training length
  (:meth:`~tlassoc.data.TriggerBigramTask.place_segment`), with the attention mass both layers
  put on ``t - 1`` and on the prefix.

Choices that depend on ``T_train`` are rules, not constants: the width is ``width_rule x
T_train`` (an absolute-position memory of ``T_train`` pairs needs a width well above
``T_train``; the capacity precondition claim checks it), relative distances are clipped at
``T_train // clip_rule`` and the context is the longest evaluation length. The claims (Wang &
Sato) are data: see :meth:`LengthGenExperiment.claims`.

Example:
    >>> cfg = LengthGenConfig()
    >>> cfg.train_lens, cfg.eval_lens(32), cfg.model_config("relative", 0, 32).d_model
    ((16, 32), (32, 64, 128), 256)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tlassoc import recipes
from tlassoc.config import RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig, check_int
from tlassoc.data import make_task
from tlassoc.experiments.framework import Claim, Experiment, Report, Result, environment
from tlassoc.metrics import label_accuracy, previous_token_accuracy


def _relative(c: AssocConfig, T: int) -> dict[str, Any]:
    return {"positional_embedding_type": "relative"}


def _standard_learned(c: AssocConfig, T: int) -> dict[str, Any]:
    frozen = tuple(p for p in c.frozen if p != "pos_embed.W_pos")
    return {"positional_embedding_type": "standard", "frozen": frozen}


def _none(c: AssocConfig, T: int) -> dict[str, Any]:
    return {
        "positional_embedding_type": "none",
        "n_layers": 3,
        "relative_layers": (),
        "frozen": ("embed.W_E", "unembed.W_U"),
    }


#: Encoding name -> (display label, changes to the model configuration given T_train).
ENCODINGS: dict[str, tuple[str, Callable[[AssocConfig, int], dict[str, Any]]]] = {
    "relative": ("RPE (vector r_{t-s})", _relative),
    "relative_bias": (
        "RPE (bias b_{t-s})",
        lambda c, T: {"positional_embedding_type": "relative", "relative_form": "bias"},
    ),
    "standard": ("APE (frozen p_t)", lambda c, T: {"positional_embedding_type": "standard"}),
    "standard_learned": ("APE (learned p_t)", _standard_learned),
    "alibi": ("ALiBi", lambda c, T: {"positional_embedding_type": "alibi"}),
    "rotary": ("RoPE", lambda c, T: {"positional_embedding_type": "rotary"}),
    "none": ("NoPE (3 layers)", _none),
    "relative_scaled": (
        "RPE, length-scaled",
        lambda c, T: {"positional_embedding_type": "relative", "length_scale_len": T},
    ),
    "standard_scaled": (
        "APE, length-scaled",
        lambda c, T: {"positional_embedding_type": "standard", "length_scale_len": T},
    ),
}

#: Encodings the papers make a claim about: relative generalises, absolute does not.
RELATIVE_CLAIMED = ("relative", "relative_bias")
ABSOLUTE_CLAIMED = ("standard", "standard_learned")


def label(encoding: str) -> str:
    """Display label of an encoding (paper notation)."""
    return ENCODINGS[encoding][0] if encoding in ENCODINGS else encoding


def _lengthgen(section: str) -> Any:
    return field(default_factory=lambda: getattr(recipes.get("lengthgen"), section))


@dataclass
class LengthGenConfig(RunConfig):
    """The length-generalisation experiment: a run configuration (the ``lengthgen`` recipe by
    default) plus its evaluation settings.

    Each seed ``s`` trains every encoding at every training length with ``model.seed =
    train.seed = s`` and evaluates on batches seeded from ``s + 1000``. Derived per training
    length ``T``: ``task.seq_len = T``, ``model.n_ctx = T x max(eval_multiples)``,
    ``model.d_model = width_rule x T`` and ``model.max_relative_distance = T // clip_rule``
    (when the rules are set).

    Args:
        model: The model; each encoding changes its positional settings.
        train: How each model is trained.
        task: The trigger task (its ``seq_len`` is replaced by each training length).
        encodings: Encodings compared, names of :data:`ENCODINGS`.
        train_lens: Training lengths ``T_train``.
        width_rule: ``d_model = width_rule x T_train`` (``None``: keep ``model.d_model``).
            Chosen by the capacity precondition: at ``4 x T_train`` the absolute model missed
            it at T_train 16 (0.891 for seed 0); ``8 x T_train`` meets it at 16 and 32.
        clip_rule: Relative distances clipped at ``T_train // clip_rule`` (``None``: keep
            ``model.max_relative_distance``).
        eval_multiples: Evaluation lengths as multiples of ``T_train`` (the largest must be at
            least 2 so that a segment fits after a prefix longer than ``T_train``).
        seeds: Seeds; every claim must hold for each.
        eval_sequences: Sequences per evaluation batch.
        capacity_threshold: The absolute model's previous-token argmax accuracy inside
            ``T_train`` that the capacity precondition asks for.
        html_len: Length of the sequence drawn in the attention views.
    """

    model: AssocConfig = _lengthgen("model")
    train: TrainConfig = _lengthgen("train")
    task: TaskConfig = _lengthgen("task")
    encodings: tuple[str, ...] = ("relative", "relative_bias", "standard")
    train_lens: tuple[int, ...] = (16, 32)
    width_rule: int | None = 8
    clip_rule: int | None = 2
    eval_multiples: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_sequences: int = 64
    capacity_threshold: float = 0.9
    html_len: int = 128

    def __post_init__(self) -> None:
        unknown = [e for e in self.encodings if e not in ENCODINGS]
        if not self.encodings or unknown:
            raise ValueError(f"encodings={self.encodings!r}; expected names in {list(ENCODINGS)}")
        if not self.seeds:
            raise ValueError("seeds=(); expected at least one seed")
        for name, values, low in (("seeds", self.seeds, 0), ("train_lens", self.train_lens, 4)):
            if not values:
                raise ValueError(f"{name}=(); expected at least one value")
            for v in values:
                check_int(name, v, minimum=low)
        for name in ("seeds", "train_lens", "encodings"):  # each value names a part of the result
            values = tuple(getattr(self, name))
            if len(set(values)) != len(values):
                raise ValueError(f"{name}={values!r}; expected each value once")
        for m in self.eval_multiples:
            check_int("eval_multiples", m, minimum=1)
        if not self.eval_multiples or max(self.eval_multiples) < 2:
            raise ValueError(
                f"eval_multiples={self.eval_multiples!r}; expected a multiple >= 2 so that a "
                "segment of T_train tokens fits after a prefix longer than T_train"
            )
        for name in ("width_rule", "clip_rule"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        check_int("eval_sequences", self.eval_sequences, minimum=1)
        check_int("html_len", self.html_len, minimum=2)
        if not 0 <= self.capacity_threshold <= 1:
            raise ValueError(f"capacity_threshold={self.capacity_threshold!r}; expected [0, 1]")
        T = max(self.train_lens)
        if isinstance(self.task, TaskConfig) and self.task.seq_len != T:
            self.task = self.task.replace(seq_len=T)
        if isinstance(self.model, AssocConfig):
            self.model = self.model.replace(n_ctx=max(self.eval_lens(T)))
        super().__post_init__()

    def eval_lens(self, T: int) -> tuple[int, ...]:
        """Evaluation lengths of training length ``T``."""
        return tuple(T * m for m in self.eval_multiples)

    def late_prefix(self, T: int) -> int:
        """Trigger-free prefix before the late segment: ``n_ctx - T`` (it ends at n_ctx)."""
        return max(self.eval_lens(T)) - T

    def near_prefix(self, T: int) -> int:
        """A shorter prefix, ``T + T // 4``: the evidence lies just beyond ``T_train``."""
        return T + T // 4

    def model_config(self, encoding: str, seed: int, T: int) -> AssocConfig:
        """The model configuration of one encoding, seed and training length."""
        changes: dict[str, Any] = {"n_ctx": max(self.eval_lens(T)), "seed": seed}
        if self.width_rule is not None:
            changes["d_model"] = self.width_rule * T
        if self.clip_rule is not None:
            changes["max_relative_distance"] = max(2, T // self.clip_rule)
        changes["model_name"] = encoding
        changes.update(ENCODINGS[encoding][1](self.model, T))
        return self.model.replace(**changes)

    def task_config(self, T: int) -> TaskConfig:
        """The task at training length ``T``."""
        return self.task.replace(seq_len=T)


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def _layers(model: Any) -> tuple[int, int]:
    """(previous-token layer, induction layer): the last two layers."""
    n = model.cfg.n_layers
    return max(0, n - 2), n - 1


def _attention_mass(patterns: list[Any], prefix: int) -> dict[str, float]:
    """Mean attention mass of the segment's queries on ``t - 1`` and on the prefix."""
    out = {}
    for layer, A in enumerate(patterns):
        A = A[:, 0]  # head 0
        n = A.shape[-1]
        t = torch.arange(prefix + 1, n, device=A.device)
        on_prev = A[:, t, t - 1].mean()
        on_prefix = A[:, prefix:, :prefix].sum(-1).mean() if prefix else torch.tensor(0.0)
        out[f"layer{layer}_mass_prev"] = float(on_prev)
        out[f"layer{layer}_mass_prefix"] = float(on_prefix)
    return out


def _segment(model: Any, task: Any, segment: Any, early_logits: Any, prefix: int, seed: int):
    late = task.place_segment(segment, prefix, seed=seed)
    names = {f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)}
    late_logits, cache = model.run_with_cache(late.tokens, names_filter=lambda n: n in names)
    patterns = [cache[f"blocks.{i}.attn.hook_pattern"] for i in range(model.cfg.n_layers)]
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
        "attention": _attention_mass(patterns, prefix),
    }


def _per_position(model: Any, task: Any, n_ctx: int, T: int, n: int, seed: int) -> dict:
    prev_layer, _ = _layers(model)
    hook = f"blocks.{prev_layer}.attn.hook_pattern"
    batch = task.sample(seed=seed, batch_size=n, seq_len=n_ctx)
    logits, cache = model.run_with_cache(batch.tokens, names_filter=lambda name: name == hook)
    per_pos = previous_token_accuracy(cache[hook][:, 0])
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
def evaluate_length(
    model: Any, task: Any, cfg: LengthGenConfig, seed: int, T: int | None = None
) -> dict[str, Any]:
    """All evaluation numbers of one trained model at training length ``T`` (default: the
    longest)."""
    model.eval()
    T = T if T is not None else max(cfg.train_lens)
    lens = cfg.eval_lens(T)
    out = _per_position(model, task, max(lens), T, cfg.eval_sequences, seed)
    by_len = {}
    for length in lens:
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
    for key, prefix in (("segment", cfg.late_prefix(T)), ("segment_near", cfg.near_prefix(T))):
        out[key] = _segment(model, task, segment, early_logits, prefix, seed + 8)
    return out


def train_and_evaluate(
    encoding: str,
    config: LengthGenConfig | None = None,
    *,
    seed: int | None = None,
    train_len: int | None = None,
    task: Any = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train the model of one encoding, seed and training length, and evaluate it.

    Args:
        encoding: A name of :data:`ENCODINGS` (``"relative"``, ``"standard"``, ``"alibi"``…).
        config: The experiment's settings (default :class:`LengthGenConfig`).
        seed: The seed (default: the first of ``config.seeds``).
        train_len: The training length (default: the longest of ``config.train_lens``).
        task: The trigger task (default: built from the config at ``train_len``).
        progress: Show the training progress bar.

    Returns:
        ``(model, numbers)``: the trained model and :func:`evaluate_length`'s numbers, plus
        ``train_seconds``, ``history`` and ``time_to_induction_steps``.

    Example:
        >>> cfg = LengthGenExperiment().quick_config().set("train.steps", 2)
        >>> model, numbers = train_and_evaluate("rotary", cfg, progress=False)
        >>> 0.0 <= numbers["prev_token_acc_beyond"] <= 1.0
        True
    """
    from tlassoc.memory.probes import probe_evaluator
    from tlassoc.model import AssocTransformer
    from tlassoc.training import train

    cfg = config or LengthGenConfig()
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}; expected one of {list(ENCODINGS)}")
    seed = cfg.seeds[0] if seed is None else seed
    T = max(cfg.train_lens) if train_len is None else train_len
    if task is None:
        task = make_task(cfg.task_config(T), cfg.train.batch_size, cfg.model.device)
    model = AssocTransformer(cfg.model_config(encoding, seed, T))
    t0 = time.perf_counter()
    result = train(
        model,
        task,
        cfg.train.replace(seed=seed),
        progress=progress,
        evaluators=[probe_evaluator(task)],
    )
    train_seconds = time.perf_counter() - t0
    numbers = evaluate_length(model, task, cfg, seed=seed + 1000, T=T)
    numbers["train_seconds"] = train_seconds
    numbers["history"] = result.history
    numbers["time_to_induction_steps"] = next(
        (r["step"] for r in result.history if (r.get("acc_ge2") or 0) >= 0.9), None
    )
    return model, numbers


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


def _claims_for(T: int, enc: str, threshold: float) -> list[Claim]:
    key = f"T{T}.{enc}"
    tag = f"{enc}@T{T}"
    if enc in RELATIVE_CLAIMED:
        return [
            Claim(f"prev_token_beyond[{tag}]", f"{key}.prev_token_acc_beyond", ">=", 0.95,
                  "the relative previous-token head works past T_train"),
            Claim(f"late_segment[{tag}]", f"{key}.segment.drop", "abs<=", 0.05,
                  "evidence beyond T_train is recalled as well as early evidence"),
            Claim(f"late_segment_near[{tag}]", f"{key}.segment_near.drop", "abs<=", 0.05,
                  "the same, with the evidence just beyond T_train"),
        ]  # fmt: skip
    if enc in ABSOLUTE_CLAIMED:
        return [
            Claim(f"capacity[{tag}]", f"{key}.prev_token_acc_within", ">=", threshold,
                  "precondition: the absolute previous-token head works inside T_train"),
            Claim(f"prev_token_beyond[{tag}]", f"{key}.prev_token_acc_beyond", "<=", 0.5,
                  "the absolute previous-token head fails at untrained positions"),
            Claim(f"late_segment[{tag}]", f"{key}.segment.drop", ">=", 0.3,
                  "APE loses in-context recall when the evidence lies beyond T_train"),
            Claim(f"late_segment_near[{tag}]", f"{key}.segment_near.drop", ">=", 0.3,
                  "the same, with the evidence just beyond T_train"),
        ]  # fmt: skip
    return []


class LengthGenExperiment(Experiment):
    """Positional encodings past the training length (Wang & Sato)."""

    name = "length_generalization"
    description = "RPE vs APE (and ALiBi, RoPE): previous-token head and recall beyond T_train"
    config_class = LengthGenConfig
    #: Each (seed, training length, encoding) trains and evaluates one model on its own.
    parallel_fields = ("seeds", "train_lens", "encodings")

    def quick_config(self) -> LengthGenConfig:
        """Small setting for tests: one seed, T_train 16, relative and standard, 80 steps."""
        return LengthGenConfig().override(
            {
                "encodings": ("relative", "standard"),
                "train_lens": (16,),
                "seeds": (0,),
                "train.steps": 80,
                "train.batch_size": 32,
                "train.eval_batch_size": 16,
                "eval_sequences": 16,
                "train.log_every": 40,
                "train.lr": 0.1,
                "html_len": 64,
            }
        )

    def measure(self, config: LengthGenConfig, progress: bool = True) -> Result:
        if not isinstance(config, LengthGenConfig):
            raise TypeError(f"config={type(config).__name__}; expected a LengthGenConfig")
        t0 = time.perf_counter()
        tasks = {
            T: make_task(config.task_config(T), config.train.batch_size, config.model.device)
            for T in config.train_lens
        }
        per_seed, models = [], {}
        for seed in config.seeds:
            record: dict[str, Any] = {}
            for T, task in tasks.items():
                record[f"T{T}"] = {}
                for enc in config.encodings:
                    model, numbers = train_and_evaluate(
                        enc, config, seed=seed, train_len=T, task=task, progress=progress
                    )
                    record[f"T{T}"][enc] = numbers
                    models[f"{enc}-T{T}-seed{seed}"] = model
            per_seed.append(record)
        return Result(
            self.name,
            config.to_dict(),
            list(config.seeds),
            per_seed,
            seconds=time.perf_counter() - t0,
            environment=environment(),
            artifacts={"models": models, "tasks": tasks},
        )

    def claims(self, config: LengthGenConfig) -> list[Claim]:
        """Wang & Sato's statements for the encodings they are about, at every training length,
        plus the capacity precondition for absolute positions (thresholds fixed beforehand:
        0.95 / 0.5 for the previous-token head, a change of at most 0.05 / at least 0.3 in
        late-evidence accuracy)."""
        return [
            claim
            for T in config.train_lens
            for enc in config.encodings
            for claim in _claims_for(T, enc, config.capacity_threshold)
        ]

    def report(self, result: Result) -> Report:
        from tlassoc.experiments._lengthgen_report import build_report

        return build_report(self, result)


__all__ = [
    "ENCODINGS",
    "LengthGenConfig",
    "LengthGenExperiment",
    "evaluate_length",
    "label",
    "train_and_evaluate",
]
