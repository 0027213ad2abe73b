"""The order in which the induction circuit's memories form: top-down?

Bietti et al. report that during training of the simplified two-layer model the memory recall
probes switch on top-down: first ``W_O²`` (the copy into the logits), then ``W_K²`` (the
induction head's key), then ``W_K¹`` (the previous-token head). This experiment trains the model
per seed with two recipes that differ only in staging:

* ``joint``: every trained matrix from step 0 (``config.train``);
* ``staged``: the same run with the matrices released in turn (:meth:`TrainConfig.staged`'s
  schedule: ``W_O²`` at 0, ``W_K²`` at ``steps // 3``, ``W_K¹`` at ``2 * steps // 3``),

logs the recall probes (:func:`tlassoc.memory.probe_evaluator`: ``probe_wo2``, ``probe_wk2``,
``probe_wk1`` and, with a feed-forward layer, ``probe_wf``) every ``train.log_every`` steps, and
records the first logged step at which each probe crosses its threshold (``threshold`` for the
recall fractions, KL ``<= wf_threshold`` nats for ``probe_wf``). The claims compare those steps
(:meth:`MemoryOrderExperiment.claims`).

Example:
    >>> cfg = MemoryOrderConfig()
    >>> cfg.variants, cfg.threshold, cfg.model.positional_embedding_type
    (('joint', 'staged'), 0.9, 'standard')
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tlassoc import presets
from tlassoc.config import RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig
from tlassoc.data import make_task
from tlassoc.experiments import _kit
from tlassoc.experiments._kit import crossing_step
from tlassoc.experiments._report_kit import interval_cell, report_head, seeds_line
from tlassoc.experiments.framework import Claim, Experiment, Report, Result, fmt

VARIANTS = ("joint", "staged")
#: Probe key -> paper notation, top-down.
PROBES = {"probe_wo2": "W_O²", "probe_wk2": "W_K²", "probe_wk1": "W_K¹", "probe_wf": "W_F"}


def _default_train() -> TrainConfig:
    # CPU-sized (ours): the papers' optimizer (SGD, momentum 0.9, weight decay 1e-4) at batch 64
    # instead of 512; lr 1.5 is the smallest of {0.2, 0.6, 1.5} at which the W_O² probe reaches
    # 0.9 within 600 steps (at 0.2 it reaches 0.46). Probes logged every 5 steps.
    return TrainConfig.simplified(steps=600, batch_size=64, lr=1.5, log_every=5, eval_batch_size=32)


@dataclass
class MemoryOrderConfig(RunConfig):
    """The memory-order experiment: a run configuration (the joint recipe) plus the crossing
    thresholds.

    Each seed ``s`` trains every variant with ``model.seed = train.seed = s``.

    Args:
        model: The simplified model (APE, d 128, as Bietti et al.'s, at CPU size); add
            ``ffn_type="linear"`` and ``train.loss_on=all`` for the ``W_F`` probe.
        train: The joint recipe; ``staged`` adds the staging schedule of the same length.
        task: The trigger task (T 64, five fixed triggers: ``probe_wk2`` needs fixed triggers).
        variants: ``joint`` and/or ``staged``.
        seeds: Seeds; each claim must hold for every one.
        threshold: A recall probe (``probe_wo2``, ``probe_wk2``, ``probe_wk1``) has "formed" at
            the first logged step where it is ``>= threshold``.
        wf_threshold: ``probe_wf`` (a KL divergence in nats) has formed at the first logged step
            where it is ``<= wf_threshold``.
    """

    model: AssocConfig = field(default_factory=lambda: presets.ape(d_model=128, n_ctx=64))
    train: TrainConfig = field(default_factory=_default_train)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(seq_len=64))
    variants: tuple[str, ...] = VARIANTS
    seeds: tuple[int, ...] = (0, 1, 2)
    threshold: float = 0.9
    wf_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.variants or any(v not in VARIANTS for v in self.variants):
            raise ValueError(f"variants={self.variants!r}; expected values in {VARIANTS}")
        _kit.check_seeds(self.seeds)
        for name in ("threshold", "wf_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name}={v!r}; expected a positive number")
        if not self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold!r}; expected a number in (0, 1]")
        if isinstance(self.task, TaskConfig) and self.task.trigger_mode != "fixed":
            raise ValueError(
                f"task.trigger_mode={self.task.trigger_mode!r}; expected 'fixed' (the W_K² "
                "probe reads the fixed triggers)"
            )
        if isinstance(self.train, TrainConfig) and self.train.log_every < 1:
            raise ValueError(
                f"train.log_every={self.train.log_every}; expected >= 1 (crossings are read "
                "from the logged probes)"
            )
        super().__post_init__()

    def train_config(self, variant: str, seed: int) -> TrainConfig:
        """The training configuration of one variant and seed."""
        train = self.train.replace(seed=seed)
        if variant == "staged":
            stages = TrainConfig.staged(steps=train.steps).unfreeze
            train = train.replace(unfreeze=stages)
        return train


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def _gap(later: int | None, earlier: int | None) -> int | None:
    return None if later is None or earlier is None else later - earlier


def summarize(history: list[dict[str, Any]], cfg: MemoryOrderConfig) -> dict[str, Any]:
    """Crossing steps, gaps between them and final values of one run's probe history.

    Example:
        >>> h = [{"step": 0, "probe_wo2": 0.0, "probe_wk2": 0.2, "probe_wk1": 0.0},
        ...      {"step": 5, "probe_wo2": 1.0, "probe_wk2": 0.2, "probe_wk1": 0.0},
        ...      {"step": 10, "probe_wo2": 1.0, "probe_wk2": 1.0, "probe_wk1": 0.95}]
        >>> s = summarize(h, MemoryOrderConfig())
        >>> s["crossing"], s["gaps"]
        ({'wo2': 5, 'wk2': 10, 'wk1': 10}, {'wk2_minus_wo2': 5, 'wk1_minus_wk2': 0})
    """
    crossing = {}
    for key in PROBES:
        if any(key in r for r in history):
            below = key == "probe_wf"
            thr = cfg.wf_threshold if below else cfg.threshold
            crossing[key.removeprefix("probe_")] = crossing_step(history, key, thr, below)
    last = history[-1] if history else {}
    return {
        "crossing": crossing,
        "gaps": {
            "wk2_minus_wo2": _gap(crossing.get("wk2"), crossing.get("wo2")),
            "wk1_minus_wk2": _gap(crossing.get("wk1"), crossing.get("wk2")),
        },
        "final": {
            k: last.get(k)
            for k in (*PROBES, "acc_ge2", "loss_in_context", "prev_token_acc", "induction_attn_acc")
            if k in last
        },
    }


_KEEP = ("step", *PROBES, "acc_ge2", "prev_token_acc", "induction_attn_acc", "loss")


def run_variant(
    variant: str, cfg: MemoryOrderConfig, seed: int, task: Any = None, progress: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Train one variant and seed; return the model and its summary plus its probe history.

    Example:
        >>> cfg = MemoryOrderExperiment().quick_config().override({"model.d_model": 16,
        ...     "task.seq_len": 16, "train.steps": 2, "train.batch_size": 4,
        ...     "train.eval_batch_size": 4})
        >>> _, rec = run_variant("joint", cfg, seed=0)
        >>> sorted(rec["crossing"])
        ['wk1', 'wk2', 'wo2']
    """
    from tlassoc.memory.probes import probe_evaluator

    task = task if task is not None else make_task(cfg.task, batch_size=cfg.train.batch_size)
    model, result, seconds = _kit.train_model(
        cfg.model.replace(seed=seed, model_name=variant),
        task,
        cfg.train_config(variant, seed),
        progress=progress,
        evaluators=[probe_evaluator(task)],
    )
    record = summarize(result.history, cfg)
    record["history"] = [{k: r[k] for k in _KEEP if k in r} for r in result.history]
    record["train_seconds"] = seconds
    return model, record


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


class MemoryOrderExperiment(Experiment):
    """When each memory's recall probe crosses its threshold, joint versus staged training."""

    name = "memory_order"
    description = "step at which W_O2, W_K2, W_K1 probes cross 0.9: top-down? (joint vs staged)"
    config_class = MemoryOrderConfig

    def quick_config(self) -> MemoryOrderConfig:
        """Small setting for tests (d 32, T 32, 60 steps of batch 16, one seed)."""
        return MemoryOrderConfig().override(
            {
                "model.d_model": 32,
                "task.seq_len": 32,
                "model.n_ctx": 32,
                "train.steps": 60,
                "train.batch_size": 16,
                "train.eval_batch_size": 16,
                "train.log_every": 10,
                "seeds": (0,),
            }
        )

    def measure(self, config: MemoryOrderConfig, progress: bool = True) -> Result:
        _kit.check_config(config, MemoryOrderConfig)
        t0 = time.perf_counter()
        task = make_task(config.task, batch_size=config.train.batch_size)

        def run(variant: str, seed: int) -> tuple[Any, dict[str, Any]]:
            return run_variant(variant, config, seed, task, progress)

        runs = _kit.run_grid(config.seeds, config.variants, run)
        return _kit.make_result(self.name, config, runs.per_seed, t0, {"models": runs.models})

    def claims(self, config: MemoryOrderConfig) -> list[Claim]:
        """Per variant: ``W_O²`` crosses strictly before ``W_K²``, and ``W_K²`` strictly before
        ``W_K¹`` (a probe that never crosses makes the claim fail)."""
        out = []
        for v in config.variants:
            out += [
                Claim(f"{v}_wo2_before_wk2", f"{v}.gaps.wk2_minus_wo2", ">", 0,
                      f"{v}: W_O² reaches {config.threshold:g} recall before W_K² (top-down)"),
                Claim(f"{v}_wk2_before_wk1", f"{v}.gaps.wk1_minus_wk2", ">", 0,
                      f"{v}: W_K² reaches {config.threshold:g} recall before W_K¹ (top-down)"),
            ]  # fmt: skip
        return out

    def report(self, result: Result) -> Report:
        return _build_report(self, result)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _order(crossing: dict[str, int | None]) -> str:
    """``"W_O² < W_K² = W_K¹"``: the probes that crossed, by step (ties as ``=``)."""
    crossed = sorted((s, PROBES["probe_" + k]) for k, s in crossing.items() if s is not None)
    if not crossed:
        return "none crossed"
    text = crossed[0][1]
    for (prev, _), (step, name) in zip(crossed, crossed[1:], strict=False):
        text += f" {'=' if step == prev else '<'} {name}"
    return text


def _step(v: Any) -> str:
    return "never" if v is None else str(v)


def _tables(result: Result) -> list[str]:
    variants = list(result.per_seed[0])
    keys = list(result.per_seed[0][variants[0]]["crossing"])
    head = " | ".join(f"{PROBES['probe_' + k]} step" for k in keys)
    lines = [
        "## Crossing steps",
        "",
        f"First logged step at which each probe crosses its threshold "
        f"(recall >= {result.config['threshold']:g}; W_F: KL <= "
        f"{result.config['wf_threshold']:g} nats), logged every "
        f"{result.config['train']['log_every']} steps.",
        "",
        f"| variant | seed | {head} | order |",
        "|---|---|" + "---|" * len(keys) + "---|",
    ]
    for v in variants:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            c = rec[v]["crossing"]
            order = _order(c)
            lines.append(
                f"| {v} | {seed} | " + " | ".join(_step(c[k]) for k in keys) + f" | {order} |"
            )
    lines += [
        "",
        "Mean crossing step [95 % interval] over the seeds where the probe crossed:",
        "",
        f"| variant | {head} |",
        "|---|" + "---|" * len(keys),
    ]
    for v in variants:
        cells = []
        for k in keys:
            steps = [rec[v]["crossing"][k] for rec in result.per_seed]
            done = [s for s in steps if s is not None]
            cells.append(f"{interval_cell(done, 0)} ({len(done)}/{len(steps)})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Final values",
        "",
        "| variant | seed | " + " | ".join(result.per_seed[0][variants[0]]["final"]) + " |",
        "|---|---|" + "---|" * len(result.per_seed[0][variants[0]]["final"]),
    ]
    for v in variants:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            f = rec[v]["final"]
            lines.append(f"| {v} | {seed} | " + " | ".join(fmt(x) for x in f.values()) + " |")
    return lines


def _plot(result: Result, path: Any) -> None:
    from tlassoc.experiments._plots import pyplot, save_png

    plt = pyplot()
    c = result.config
    variants = list(result.per_seed[0])
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), squeeze=False)
    fig.suptitle(
        "Recall probes over training (dots: crossings of the threshold; faint: other seeds)"
    )
    for ax, v in zip(axes[0], variants, strict=True):
        for i, (key, name) in enumerate(PROBES.items()):
            if key not in result.per_seed[0][v]["history"][0]:
                continue
            for j, rec in enumerate(result.per_seed):
                hist = rec[v]["history"]
                ax.plot([r["step"] for r in hist], [r.get(key) for r in hist], color=f"C{i}",
                        lw=1.2 if j == 0 else 0.7, alpha=1.0 if j == 0 else 0.5,
                        label=name if j == 0 else None)  # fmt: skip
                step = rec[v]["crossing"][key.removeprefix("probe_")]
                if step is not None:
                    ax.axvline(step, color=f"C{i}", ls=":", lw=0.8)
                    ax.plot([step], [c["threshold"]], marker="o", color=f"C{i}", ms=5)
        title = "joint: every matrix from step 0"
        if v == "staged":
            stages = TrainConfig.staged(steps=c["train"]["steps"]).unfreeze[1:]
            for (step, _), name in zip(stages, ("W_K²", "W_K¹"), strict=True):
                ax.axvline(step, color="gray", lw=3, alpha=0.3)
                ax.text(step + 5, 0.5, f"{name} released", rotation=90, fontsize=8, color="gray")
            title = "staged: W_O², then W_K², then W_K¹"
        thr = c["threshold"]
        ax.axhline(thr, color="gray", ls="--", lw=1, label=f"threshold {thr:g}")
        ax.set_xlabel("training step")
        ax.set_ylabel("recall probe")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    save_png(fig, path)


def _build_report(experiment: MemoryOrderExperiment, result: Result) -> Report:
    c = result.config
    m, t = c["model"], c["train"]
    setting = (
        f"Simplified two-layer model ({m['positional_embedding_type']} positions, d_model "
        f"{m['d_model']}), trigger task T {c['task']['seq_len']}, {t['steps']} steps of "
        f"{t['optimizer']} (lr {t['lr']}, batch {t['batch_size']}, loss on {t['loss_on']}); "
        f"variants {', '.join(c['variants'])}. {seeds_line(result)}"
    )
    lines = report_head(experiment, result, "The order in which the memories form", setting)
    lines += _tables(result)
    lines += ["", "Figure: `probes.png` (probes over training, crossings marked).", ""]
    return Report("\n".join(lines), {"probes.png": lambda path: _plot(result, path)})


__all__ = [
    "PROBES",
    "VARIANTS",
    "MemoryOrderConfig",
    "MemoryOrderExperiment",
    "crossing_step",
    "run_variant",
    "summarize",
]
