"""Length generalisation of the induction circuit, RPE versus APE (Wang & Sato; PAPER.md §6).

Trains the simplified two-layer model with relative and with absolute positions on the Tiny
Shakespeare trigger task at a training length ``T_train`` (default 128), then evaluates:

* per-position previous-token argmax accuracy (layer-0 attention argmax at ``t`` is ``t - 1``) on
  sequences of the longest evaluation length, summarised inside and beyond ``T_train``;
* in-context accuracy (argmax correct on targets with label >= 2, and >= 1) on ordinary sequences
  of each evaluation length (128, 256, 512 by default);
* the same in-context segment (``T_train`` tokens) evaluated twice: placed at the start, and placed
  after a trigger-free prefix longer than ``T_train`` so that all of its evidence lies beyond the
  training length (:meth:`~tlassoc.data.TriggerBigramTask.place_segment`).

Writes ``results.json``, ``report.md``, PNG figures and circuitsvis HTML of both layers' attention.

Example:
    >>> cfg = LengthGenConfig.quick_config()
    >>> cfg.train_len, cfg.eval_lens
    (128, (128, 256, 512))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlassoc._io import atomic_write_json, atomic_write_text
from tlassoc.memory.probes import previous_token_accuracy

ENCODINGS = ("rpe", "ape")
RELATIVE_FORMS = ("vector", "bias")


@dataclass
class LengthGenConfig:
    """Settings of the length-generalisation experiment.

    The defaults are sized for about 10 minutes on 2 CPU cores (the papers use d = 256,
    batch 512, 1,000 SGD steps). Our choice for the CPU budget: AdamW (lr 0.05, no weight decay
    on the frozen parts since they get no gradient) instead of SGD, which within a few hundred
    steps does not form the induction head at d = 64 and batch 64.

    Args:
        train_len: Training sequence length ``T_train``.
        eval_lens: Evaluation lengths (the model's ``n_ctx`` is their maximum).
        steps: Training steps per model.
        batch_size: Training batch size.
        d_model: Model width.
        lr: Learning rate.
        optimizer: ``"adamw"`` or ``"sgd"``.
        weight_decay: Weight decay.
        loss_on: ``"in_context"`` (label >= 2) or ``"all"``.
        n_triggers: Number of fixed triggers ``k``.
        eval_batch_size: Sequences per evaluation batch.
        log_every: Metrics/probes logging interval during training.
        seed: Seed of the weights, the training data and the evaluation data.
        html_len: Length of the sequence drawn with circuitsvis.
        relative_form: Form of the RPE model's relative term: ``"vector"`` (a frozen random
            vector ``r_{t-s}`` on the key side, PAPER.md §2) or ``"bias"`` (a learned scalar per
            distance, T5-style). See docs/training.md for why the choice matters here.
        max_relative_distance: Number of distances of the RPE model; ``t - s`` is clipped at
            ``max_relative_distance - 1``.
    """

    train_len: int = 128
    eval_lens: tuple[int, ...] = (128, 256, 512)
    steps: int = 400
    batch_size: int = 64
    d_model: int = 64
    lr: float = 0.05
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    loss_on: str = "in_context"
    n_triggers: int = 5
    eval_batch_size: int = 64
    log_every: int = 25
    seed: int = 0
    html_len: int = 256
    relative_form: str = "vector"
    max_relative_distance: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "train_len",
            "steps",
            "batch_size",
            "d_model",
            "eval_batch_size",
            "log_every",
            "html_len",
            "n_triggers",
            "max_relative_distance",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}; expected a positive integer")
        self.eval_lens = tuple(int(x) for x in self.eval_lens)
        if not self.eval_lens or min(self.eval_lens) < 2:
            raise ValueError(f"eval_lens={self.eval_lens}; expected lengths >= 2")
        if max(self.eval_lens) <= 2 * self.train_len - 1:
            raise ValueError(
                f"eval_lens max {max(self.eval_lens)} must exceed 2 * train_len - 1 = "
                f"{2 * self.train_len - 1} so that a segment of train_len tokens fits after a "
                "prefix longer than train_len"
            )
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}; expected a positive number")
        if self.relative_form not in RELATIVE_FORMS:
            raise ValueError(
                f"relative_form={self.relative_form!r}; expected one of {list(RELATIVE_FORMS)}"
            )

    @property
    def n_ctx(self) -> int:
        """Context of the models: the longest evaluation length."""
        return max(self.eval_lens)

    @property
    def late_prefix(self) -> int:
        """Trigger-free prefix before the late-placed segment: ``n_ctx - train_len``."""
        return self.n_ctx - self.train_len

    @property
    def near_prefix(self) -> int:
        """A shorter trigger-free prefix, ``train_len + train_len // 4`` (160 for 128): the
        placement of PAPER.md §6's reference check ("no trigger before position 160"), where the
        evidence lies just beyond ``T_train`` and the context is shorter than at ``n_ctx``."""
        return self.train_len + self.train_len // 4

    @classmethod
    def quick_config(cls, **overrides: Any) -> LengthGenConfig:
        """A small setting for tests (about a minute on 2 CPU cores)."""
        base: dict[str, Any] = dict(
            steps=80,
            batch_size=32,
            d_model=32,
            eval_batch_size=16,
            log_every=40,
            lr=0.1,
            html_len=128,
        )
        return cls(**{**base, **overrides})


@dataclass
class LengthGenResult:
    """Numbers of the experiment (``to_dict`` is what ``results.json`` holds)."""

    config: dict[str, Any]
    models: dict[str, dict[str, Any]]
    seconds: float
    claims: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _acc(logits: torch.Tensor, batch: Any, min_label: int, start: int = 0) -> float:
    mask = batch.labels >= min_label
    mask[:, :start] = False
    n = int(mask.sum())
    if not n:
        return float("nan")
    return float(((logits.argmax(-1) == batch.targets) & mask).sum() / n)


@torch.no_grad()
def evaluate_length(model: Any, task: Any, cfg: LengthGenConfig, seed: int) -> dict[str, Any]:
    """All evaluation numbers of one trained model (see the module docstring)."""
    model.eval()
    out: dict[str, Any] = {}
    n_ctx, T = cfg.n_ctx, cfg.train_len
    # Previous-token accuracy per position at the longest length.
    batch = task.sample(seed=seed, batch_size=cfg.eval_batch_size, seq_len=n_ctx)
    logits, cache = model.run_with_cache(
        batch.tokens, names_filter=lambda n: n == "blocks.0.attn.hook_pattern"
    )
    per_pos = previous_token_accuracy(cache["blocks.0.attn.hook_pattern"][:, 0])
    out["prev_token_acc_per_position"] = [None if math.isnan(x) else x for x in per_pos.tolist()]
    out["prev_token_acc_within"] = float(per_pos[1:T].mean())
    out["prev_token_acc_beyond"] = float(per_pos[T:].mean())
    correct = (logits.argmax(-1) == batch.targets) & (batch.labels >= 2)
    counts = (batch.labels >= 2).sum(0)
    out["icl_acc_per_position"] = [
        None if int(c) == 0 else float(k) / int(c)
        for k, c in zip(correct.sum(0).tolist(), counts.tolist(), strict=True)
    ]
    # In-context accuracy on ordinary sequences of each evaluation length.
    by_len = {}
    for length in cfg.eval_lens:
        b = task.sample(seed=seed + length, batch_size=cfg.eval_batch_size, seq_len=length)
        lg = model(b.tokens)
        by_len[str(length)] = {
            "acc_ge2": _acc(lg, b, 2),
            "acc_ge1": _acc(lg, b, 1),
            "acc_ge2_beyond_train_len": _acc(lg, b, 2, start=T) if length > T else None,
        }
    out["icl_by_length"] = by_len
    # The same segment placed early and placed after a trigger-free prefix longer than T: once
    # filling the whole context (``segment``) and once just past T (``segment_near``).
    segment = task.sample(seed=seed + 7, batch_size=cfg.eval_batch_size, seq_len=T)
    early_logits = model(segment.tokens)
    for key, prefix in (("segment", cfg.late_prefix), ("segment_near", cfg.near_prefix)):
        late = task.place_segment(segment, prefix, seed=seed + 8)
        late_logits = model(late.tokens)
        out[key] = {
            "segment_len": T,
            "late_prefix": prefix,
            "early_acc_ge2": _acc(early_logits, segment, 2),
            "late_acc_ge2": _acc(late_logits, late, 2),
            "early_acc_ge1": _acc(early_logits, segment, 1),
            "late_acc_ge1": _acc(late_logits, late, 1),
        }
    return out


def _attention_html(model: Any, tokens: torch.Tensor) -> str:
    import circuitsvis.attention

    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    pattern = torch.cat(
        [cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(model.cfg.n_layers)]
    )
    str_tokens = model.to_str_tokens(tokens[0])
    html = circuitsvis.attention.attention_patterns(tokens=str_tokens, attention=pattern)
    return str(html)


def _task(cfg: LengthGenConfig) -> Any:
    from tlassoc.data import BigramModel, TriggerBigramTask

    return TriggerBigramTask(
        BigramModel.tiny_shakespeare(),
        n_triggers=cfg.n_triggers,
        seq_len=cfg.train_len,
        batch_size=cfg.batch_size,
    )


def train_and_evaluate(
    encoding: str,
    config: LengthGenConfig | None = None,
    *,
    task: Any = None,
    progress: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train one model of the experiment (``"rpe"`` or ``"ape"``) and evaluate it.

    This is one half of :func:`run`, for when only one encoding is of interest.

    Args:
        encoding: ``"rpe"`` (relative positions in layer 0, ``config.relative_form``) or
            ``"ape"``.
        config: The experiment's settings (default :class:`LengthGenConfig`).
        task: The trigger task (default: Tiny Shakespeare with ``config``'s triggers/length).
        progress: Show the training progress bar.
        out_dir: Folder for the model's metrics and checkpoints (none by default).

    Returns:
        ``(model, numbers)``: the trained model and :func:`evaluate_length`'s numbers, plus
        ``train_seconds``, ``history`` and ``time_to_induction_steps``.

    Example:
        >>> cfg = LengthGenConfig.quick_config(steps=2, relative_form="bias")
        >>> model, numbers = train_and_evaluate("rpe", cfg, progress=False)
        >>> 0.0 <= numbers["prev_token_acc_beyond"] <= 1.0
        True
    """
    from tlassoc import AssocTransformer, presets
    from tlassoc.train import TrainConfig, train

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}; expected one of {ENCODINGS}")
    cfg = config or LengthGenConfig()
    task = task if task is not None else _task(cfg)
    if encoding == "rpe":
        model_cfg = presets.rpe(
            d_model=cfg.d_model,
            n_ctx=cfg.n_ctx,
            seed=cfg.seed,
            relative_form=cfg.relative_form,
            max_relative_distance=cfg.max_relative_distance,
        )
    else:
        model_cfg = presets.ape(d_model=cfg.d_model, n_ctx=cfg.n_ctx, seed=cfg.seed)
    model = AssocTransformer(model_cfg)
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seq_len=cfg.train_len,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        loss_on=cfg.loss_on,
        seed=cfg.seed,
        log_every=cfg.log_every,
        eval_batch_size=cfg.eval_batch_size,
        progress=progress,
        out_dir=str(out_dir) if out_dir is not None else None,
    )
    t_enc = time.perf_counter()
    result = train(model, task, tcfg)
    train_seconds = time.perf_counter() - t_enc
    numbers = evaluate_length(model, task, cfg, seed=cfg.seed + 1000)
    numbers["train_seconds"] = train_seconds
    numbers["history"] = result.history
    numbers["time_to_induction_steps"] = next(
        (r["step"] for r in result.history if r.get("acc_ge2", 0) >= 0.9), None
    )
    return model, numbers


def run(
    out_dir: str | os.PathLike[str] | None = None,
    config: LengthGenConfig | None = None,
    progress: bool = True,
) -> LengthGenResult:
    """Train RPE and APE models, evaluate them and (with ``out_dir``) write the report.

    Example:
        >>> result = run(config=LengthGenConfig.quick_config(steps=2), progress=False)
        ... # doctest: +SKIP
    """
    cfg = config or LengthGenConfig()
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    task = _task(cfg)
    models: dict[str, dict[str, Any]] = {}
    trained = {}
    for enc in ENCODINGS:
        trained[enc], models[enc] = train_and_evaluate(
            enc,
            cfg,
            task=task,
            progress=progress,
            out_dir=out / enc if out is not None else None,
        )
    claims = _claims(models)
    res = LengthGenResult(dataclasses.asdict(cfg), models, time.perf_counter() - t0, claims)
    if out is not None:
        _write_outputs(out, res, trained, task, cfg)
        res.seconds = time.perf_counter() - t0
        atomic_write_json(out / "results.json", _jsonable(res.to_dict()))
    return res


def _claims(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    r, a = models["rpe"], models["ape"]
    r_drop = r["segment"]["early_acc_ge2"] - r["segment"]["late_acc_ge2"]
    a_drop = a["segment"]["early_acc_ge2"] - a["segment"]["late_acc_ge2"]
    r_near = r["segment_near"]["early_acc_ge2"] - r["segment_near"]["late_acc_ge2"]
    a_near = a["segment_near"]["early_acc_ge2"] - a["segment_near"]["late_acc_ge2"]
    checks = {
        "rpe_prev_token_beyond_ge_0.95": r["prev_token_acc_beyond"] >= 0.95,
        "ape_prev_token_beyond_le_0.5": a["prev_token_acc_beyond"] <= 0.5,
        "rpe_late_within_0.05_of_early": abs(r_drop) <= 0.05,
        "ape_late_down_by_ge_0.3": a_drop >= 0.3,
    }
    near_checks = {
        "rpe_late_within_0.05_of_early (near prefix)": abs(r_near) <= 0.05,
        "ape_late_down_by_ge_0.3 (near prefix)": a_near >= 0.3,
    }
    return {
        "checks": checks,
        "near_checks": near_checks,
        "all_hold": all(checks.values()),
        "rpe_segment_drop": r_drop,
        "ape_segment_drop": a_drop,
        "rpe_segment_near_drop": r_near,
        "ape_segment_near_drop": a_near,
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _report(res: LengthGenResult) -> str:
    c = res.config
    m = res.models
    lines = [
        "# Length generalisation: RPE vs APE (tlassoc reproduce)",
        "",
        f"Simplified two-layer model (d_model {c['d_model']}, frozen embeddings/positions/"
        f"unembedding), trained at length {c['train_len']} for {c['steps']} steps "
        f"({c['optimizer']}, lr {c['lr']}, batch {c['batch_size']}, loss on {c['loss_on']}), "
        f"evaluated at {', '.join(map(str, c['eval_lens']))}. RPE: relative "
        f"{c.get('relative_form', 'vector')} form, distances clipped at "
        f"{c.get('max_relative_distance', 64) - 1}. "
        f"Seed {c['seed']}. "
        f"Wall time {res.seconds:.0f} s on {platform.machine()} "
        f"({torch.get_num_threads()} torch threads).",
        "",
        "## Previous-token head (layer-0 attention argmax at t is t-1)",
        "",
        "| encoding | positions < T_train | positions >= T_train |",
        "|---|---|---|",
    ]
    for enc in ENCODINGS:
        lines.append(
            f"| {enc.upper()} | {_fmt(m[enc]['prev_token_acc_within'])} | "
            f"{_fmt(m[enc]['prev_token_acc_beyond'])} |"
        )
    lines += [
        "",
        "## Same in-context segment placed early and late",
        "",
        f"Segment of {c['train_len']} tokens; late = after a trigger-free prefix (all evidence "
        f"beyond T_train) of {m['rpe']['segment']['late_prefix']} tokens (the segment ends at "
        f"n_ctx) or of {m['rpe']['segment_near']['late_prefix']} tokens (PAPER.md §6's reference "
        "placement).",
        "",
        "| encoding | prefix | early acc (label>=2) | late acc (label>=2) | drop | "
        "early acc (>=1) | late acc (>=1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for enc in ENCODINGS:
        for key in ("segment", "segment_near"):
            s = m[enc][key]
            lines.append(
                f"| {enc.upper()} | {s['late_prefix']} | {_fmt(s['early_acc_ge2'])} | "
                f"{_fmt(s['late_acc_ge2'])} | {_fmt(s['early_acc_ge2'] - s['late_acc_ge2'])} | "
                f"{_fmt(s['early_acc_ge1'])} | {_fmt(s['late_acc_ge1'])} |"
            )
    lines += [
        "",
        "## In-context accuracy on ordinary sequences",
        "",
        "| encoding | length | acc (>=2) | acc (>=1) | acc (>=2) beyond T_train |",
        "|---|---|---|---|---|",
    ]
    for enc in ENCODINGS:
        for length, v in m[enc]["icl_by_length"].items():
            lines.append(
                f"| {enc.upper()} | {length} | {_fmt(v['acc_ge2'])} | "
                f"{_fmt(v['acc_ge1'])} | {_fmt(v['acc_ge2_beyond_train_len'])} |"
            )
    lines += [
        "",
        "## Training",
        "",
        "| encoding | train seconds | steps to acc>=0.9 |",
        "|---|---|---|",
    ]
    for enc in ENCODINGS:
        lines.append(
            f"| {enc.upper()} | {m[enc]['train_seconds']:.1f} | "
            f"{m[enc]['time_to_induction_steps']} |"
        )
    lines += ["", "## Claims (Wang & Sato)", ""]
    for name, ok in res.claims["checks"].items():
        lines.append(f"- {name}: **{'holds' if ok else 'does NOT hold'}**")
    lines += ["", "With the shorter prefix (evidence just beyond T_train):", ""]
    for name, ok in res.claims["near_checks"].items():
        lines.append(f"- {name}: **{'holds' if ok else 'does NOT hold'}**")
    if not res.claims["all_hold"]:
        lines += [
            "",
            "Not every claim reproduces at these settings; the numbers above are the "
            "measured ones (no tuning was done to make them pass).",
        ]
    lines += [
        "",
        "Figures: `prev_token_accuracy.png`, `icl_accuracy.png`, `probes.png`; "
        "attention: `attention_rpe.html`, `attention_ape.html`.",
        "",
    ]
    return "\n".join(lines)


def _write_outputs(
    out: Path, res: LengthGenResult, trained: dict[str, Any], task: Any, cfg: LengthGenConfig
) -> None:
    from tlassoc.viz.training import plot_per_position, plot_probes_over_training

    T = cfg.train_len
    plot_per_position(
        {enc.upper(): res.models[enc]["prev_token_acc_per_position"] for enc in ENCODINGS},
        out / "prev_token_accuracy.png",
        train_len=T,
        ylabel="previous-token argmax accuracy",
        title="Layer-0 attention argmax = t-1",
    )
    plot_per_position(
        {enc.upper(): res.models[enc]["icl_acc_per_position"] for enc in ENCODINGS},
        out / "icl_accuracy.png",
        train_len=T,
        ylabel="in-context accuracy (label>=2)",
        title="In-context accuracy by position",
        smooth=16,
    )
    plot_probes_over_training(
        {enc.upper(): res.models[enc]["history"] for enc in ENCODINGS}, out / "probes.png"
    )
    html_batch = task.sample(
        seed=cfg.seed + 2000, batch_size=1, seq_len=min(cfg.html_len, cfg.n_ctx)
    )
    for enc, model in trained.items():
        atomic_write_text(out / f"attention_{enc}.html", _attention_html(model, html_batch.tokens))
    atomic_write_text(out / "report.md", _report(res))
    atomic_write_json(out / "results.json", _jsonable(res.to_dict()))


def load_results(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``results.json`` written by :func:`run`."""
    return json.loads((Path(out_dir) / "results.json").read_text())


__all__ = [
    "LengthGenConfig",
    "LengthGenResult",
    "evaluate_length",
    "load_results",
    "run",
    "train_and_evaluate",
]
