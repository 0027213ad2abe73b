"""One-step training as an experiment: do three population-gradient steps store the induction
circuit's memories, and do they give an induction head?

Bietti et al. (Theorem 3) start the trained matrices of the simplified two-layer model at zero
and take one gradient step on each, top-down (``W_O²``, ``W_K²``, ``W_K¹``), on a very large
batch; in their idealised limit the three steps store the induction circuit's associative
memories. Per positional encoding and seed this experiment runs
:func:`tlassoc.training.one_step_train` and measures:

* **alignment** of each stepped matrix with the plain ideal memory of docs/method.md
  (:func:`tlassoc.memory.memory_alignment` against ``ideal_memories(equalize=False,
  induction_tokens=triggers)``): the cosine, the largest ``|cos|`` of random Gaussian matrices of
  the same shape, and the z-score ``cos * sqrt(numel)`` (a random direction's cosine has
  standard deviation ``1/sqrt(numel)``);
* **accuracy** on the in-context targets (label >= 2) of a held-out batch, before and after the
  steps, next to chance (``1 / number of possible outputs``), the best *context-blind*
  predictor (the better of: the current token's global top bigram, and for each current token
  the most common in-context target after it in another batch) and the *context-frequency*
  rule ("the most frequent non-trigger token seen so far", which needs no induction head);
* **attention**: layer 0's previous-token argmax accuracy and layer 1's induction-attention
  accuracy after the steps, and the recall probes.

The claims (:meth:`OneStepExperiment.claims`) are fixed before running; see docs/experiments.md.

Example:
    >>> cfg = OneStepConfig()
    >>> cfg.model.d_model, cfg.task.seq_len, cfg.seeds
    (512, 64, (0, 1, 2))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from tlassoc import presets
from tlassoc.config import RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig, check_int
from tlassoc.data import make_task
from tlassoc.experiments import _kit
from tlassoc.experiments._report_kit import interval_cell, report_head, seeds_line
from tlassoc.experiments.framework import Claim, Experiment, Report, Result, fmt

#: Display labels of the matrices (papers' notation).
MATRICES = {"blocks.1.attn.W_O": "W_O²", "blocks.1.attn.W_K": "W_K²", "blocks.0.attn.W_K": "W_K¹"}
KEYS = {"blocks.1.attn.W_O": "wo2", "blocks.1.attn.W_K": "wk2", "blocks.0.attn.W_K": "wk1"}

#: z-score a matrix's alignment must reach: five standard deviations of a random direction.
Z_THRESHOLD = 5.0


@dataclass
class OneStepConfig(RunConfig):
    """The one-step experiment: the simplified model, the trigger task and the step settings.

    Only ``train.batch_size`` (sequences per gradient batch) and ``train.loss_on`` of ``train``
    are used; ``model.positional_embedding_type`` is replaced by each of ``encodings``.

    Args:
        model: The simplified two-layer model (default d 512: at d 128 the ``W_K¹`` alignment
            of APE is inside the random range, docs/memory_and_theory.md).
        train: ``batch_size`` and ``loss_on`` of the gradient batches.
        task: The trigger task (``seq_len`` 64, five fixed triggers).
        encodings: Positional encodings (``relative`` and/or ``standard``).
        seeds: Seeds: weights (``model.seed``) and gradient batches.
        step_sizes: Step sizes of ``W_O²``, ``W_K²``, ``W_K¹`` (the defaults of
            :func:`~tlassoc.training.one_step_train`).
        n_batches: Gradient batches averaged (population estimate of ``n_batches *
            train.batch_size`` sequences).
        eval_sequences: Sequences of the held-out evaluation batch.
        n_random: Random matrices of the alignment baseline.
    """

    model: AssocConfig = field(default_factory=lambda: presets.rpe(d_model=512, n_ctx=64))
    train: TrainConfig = field(default_factory=lambda: TrainConfig.simplified(batch_size=256))
    task: TaskConfig = field(default_factory=lambda: TaskConfig(seq_len=64))
    encodings: tuple[str, ...] = ("relative", "standard")
    seeds: tuple[int, ...] = (0, 1, 2)
    step_sizes: tuple[float, float, float] = (20.0, 20.0, 200.0)
    n_batches: int = 2
    eval_sequences: int = 256
    n_random: int = 20

    def __post_init__(self) -> None:
        _kit.check_encodings(self.encodings, allowed=("relative", "standard"))
        _kit.check_seeds(self.seeds)
        if len(self.step_sizes) != 3 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
            for x in self.step_sizes
        ):
            raise ValueError(f"step_sizes={self.step_sizes!r}; expected three positive numbers")
        self.step_sizes = tuple(float(x) for x in self.step_sizes)  # type: ignore[assignment]
        check_int("n_batches", self.n_batches, minimum=1)
        check_int("eval_sequences", self.eval_sequences, minimum=1)
        check_int("n_random", self.n_random, minimum=1)
        if isinstance(self.model, AssocConfig) and self.model.n_layers != 2:
            raise ValueError(f"model.n_layers={self.model.n_layers}; expected 2")
        if isinstance(self.model, AssocConfig) and self.model.n_ctx < self.task.seq_len:
            self.model = self.model.replace(n_ctx=self.task.seq_len)
        super().__post_init__()

    def model_config(self, encoding: str, seed: int) -> AssocConfig:
        """The model of one encoding and seed."""
        return _kit.model_config(self.model, encoding, seed)


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------


def context_blind_accuracy(fit: Any, test: Any) -> float:
    """Accuracy on ``test``'s in-context targets (label >= 2) of the best predictor that sees
    only the current token, fitted on the batch ``fit``: for each current token, the most
    common in-context target that follows it there (tokens never seen in ``fit`` fall back to
    its most common target overall).

    With uniform outputs this is about chance; fitted and scored on the *same* batch it would
    be far higher, because a sequence repeats its trigger's output many times.

    Example:
        >>> from tlassoc.data import make_task
        >>> task = make_task(TaskConfig(seq_len=64), batch_size=32)
        >>> 0.0 <= context_blind_accuracy(task.sample(seed=0), task.sample(seed=1)) <= 1.0
        True
    """
    V = int(max(fit.tokens.max(), fit.targets.max(), test.tokens.max(), test.targets.max())) + 1
    mask = fit.labels >= 2
    cur, tgt = fit.tokens[mask], fit.targets[mask]
    counts = torch.zeros(V, V).index_put_((cur, tgt), torch.ones(len(cur)), accumulate=True)
    rule = counts.argmax(1)
    rule[counts.sum(1) == 0] = counts.sum(0).argmax()
    test_mask = test.labels >= 2
    if not test_mask.any():
        return float("nan")
    return float((rule[test.tokens] == test.targets)[test_mask].float().mean())


def top_bigram_accuracy(test: Any, bigram: Any) -> float:
    """Accuracy on the in-context targets of the current token's global top bigram.

    Example:
        >>> from tlassoc.data import make_task
        >>> task = make_task(TaskConfig(seq_len=64), batch_size=32)
        >>> 0.0 <= top_bigram_accuracy(task.sample(seed=0), task.bigram) <= 1.0
        True
    """
    mask = test.labels >= 2
    if not mask.any():
        return float("nan")
    top = bigram.conditional.argmax(1)
    return float((top[test.tokens] == test.targets)[mask].float().mean())


def frequency_rule_accuracy(batch: Any) -> float:
    """Accuracy on the in-context targets of "predict the most frequent non-trigger token seen
    so far" (ties: the lowest id): a rule that uses the context but no induction head.

    Example:
        >>> from tlassoc.data import make_task
        >>> b = make_task(TaskConfig(seq_len=64), batch_size=32).sample(seed=0)
        >>> 0.0 <= frequency_rule_accuracy(b) <= 1.0
        True
    """
    tokens, V = batch.tokens, int(max(batch.tokens.max(), batch.targets.max())) + 1
    counts = torch.nn.functional.one_hot(tokens, V).cumsum(1).float()  # [b, t, V]
    is_trigger = torch.zeros(tokens.shape[0], V, dtype=torch.bool)
    is_trigger.scatter_(1, batch.triggers, True)
    counts = counts.masked_fill(is_trigger[:, None, :], -1.0)
    mask = batch.labels >= 2
    if not mask.any():
        return float("nan")
    return float((counts.argmax(-1) == batch.targets)[mask].float().mean())


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def _alignment(model: Any, task: Any, cfg: OneStepConfig, seed: int) -> dict[str, Any]:
    from tlassoc.memory import ideal_memories, memory_alignment

    ref = ideal_memories(model, equalize=False, induction_tokens=task.fixed_triggers)
    frame = memory_alignment(model, ref, n_random=cfg.n_random, seed=seed)
    out = {}
    for row in frame.to_dict(orient="records"):
        out[KEYS[row["parameter"]]] = {
            "cosine": row["cosine"],
            "random_max_abs": row["random_max_abs"],
            "random_mean_abs": row["random_mean_abs"],
            "z_score": row["z_score"],
            "cosine_over_random_max": row["cosine"] / max(row["random_max_abs"], 1e-12),
        }
    return out


def _accuracy(model: Any, batch: Any) -> dict[str, float]:
    from tlassoc.training import evaluate

    stats = evaluate(model, batch)
    return {k: stats[k] for k in ("acc_ge2", "acc_ge1", "prev_token_acc", "induction_attn_acc")}


def measure_one(
    encoding: str, cfg: OneStepConfig, seed: int, task: Any = None, progress: bool = False
) -> tuple[Any, dict[str, Any]]:
    """One-step training of one encoding and seed, and every number of the module docstring.

    Example:
        >>> cfg = OneStepExperiment().quick_config().override({"model.d_model": 32,
        ...     "task.seq_len": 16, "train.batch_size": 8, "n_batches": 1,
        ...     "eval_sequences": 8, "n_random": 2})
        >>> _, rec = measure_one("relative", cfg, seed=0)
        >>> sorted(rec["alignment"])
        ['wk1', 'wk2', 'wo2']
    """
    from tlassoc.memory import recall_probes
    from tlassoc.model import AssocTransformer
    from tlassoc.training import one_step_train

    task = task if task is not None else make_task(cfg.task, batch_size=cfg.train.batch_size)
    model = AssocTransformer(cfg.model_config(encoding, seed))
    test = task.sample(seed=seed + 1000, batch_size=cfg.eval_sequences)
    before = _accuracy(model, test)
    t0 = time.perf_counter()
    result = one_step_train(
        model,
        task,
        cfg.step_sizes,
        batch_size=cfg.train.batch_size,
        n_batches=cfg.n_batches,
        seed=seed,
        loss_on=cfg.train.loss_on,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    after = _accuracy(model, test)
    chance = 1.0 / int(task.allowed_outputs.sum())
    fit = task.sample(seed=seed + 2000, batch_size=cfg.eval_sequences)
    blind = max(context_blind_accuracy(fit, test), top_bigram_accuracy(test, task.bigram))
    probes = recall_probes(model, triggers=task.fixed_triggers, n_positions=cfg.task.seq_len)
    record = {
        "alignment": _alignment(model, task, cfg, seed),
        "acc_ge2_before": before["acc_ge2"],
        "acc_ge2": after["acc_ge2"],
        "acc_ge1": after["acc_ge1"],
        "chance": chance,
        "context_blind_acc": blind,
        "frequency_rule_acc": frequency_rule_accuracy(test),
        "acc_over_chance": after["acc_ge2"] / chance,
        "acc_minus_context_blind": after["acc_ge2"] - blind,
        "prev_token_acc": after["prev_token_acc"],
        "induction_attn_acc": after["induction_attn_acc"],
        "probes": probes,
        "losses": result.losses,
        "seconds": seconds,
    }
    return model, record


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


class OneStepExperiment(Experiment):
    """Bietti et al.'s one-step training: memories stored, accuracy, attention."""

    name = "one_step"
    description = "three population-gradient steps: alignment with the ideal memories, accuracy"
    config_class = OneStepConfig

    def quick_config(self) -> OneStepConfig:
        """Small setting for tests (d 128, T 32, 2 x 64 sequences, one seed)."""
        return OneStepConfig().override(
            {
                "model.d_model": 128,
                "task.seq_len": 32,
                "model.n_ctx": 32,
                "train.batch_size": 64,
                "eval_sequences": 64,
                "n_random": 5,
                "seeds": (0,),
            }
        )

    def measure(self, config: OneStepConfig, progress: bool = True) -> Result:
        _kit.check_config(config, OneStepConfig)
        t0 = time.perf_counter()
        task = make_task(config.task, batch_size=config.train.batch_size)

        def run(enc: str, seed: int) -> tuple[Any, dict[str, Any]]:
            return measure_one(enc, config, seed, task, progress)

        runs = _kit.run_grid(config.seeds, config.encodings, run)
        return _kit.make_result(self.name, config, runs.per_seed, t0, {"models": runs.models})

    def claims(self, config: OneStepConfig) -> list[Claim]:
        """Per encoding: each matrix aligned with its ideal memory (z >= 5); in-context accuracy
        at least 5x chance and 0.1 above the best context-blind predictor; an induction head
        (Theorem 3's idealised conclusion: layer-0 argmax at t-1 and layer-1 argmax after an
        earlier copy for a majority of positions)."""
        out = []
        for enc in config.encodings:
            lab = _kit.label(enc)
            for key, name in (("wo2", "W_O²"), ("wk2", "W_K²"), ("wk1", "W_K¹")):
                out.append(
                    Claim(f"{enc}_{key}_aligned", f"{enc}.alignment.{key}.z_score", ">=",
                          Z_THRESHOLD, f"{lab}: one step stores {name}'s ideal pairs (cosine "
                          "five standard deviations of a random direction above 0)")
                )  # fmt: skip
            out += [
                Claim(f"{enc}_above_chance", f"{enc}.acc_over_chance", ">=", 5.0,
                      f"{lab}: in-context accuracy at least 5x chance"),
                Claim(f"{enc}_above_context_blind", f"{enc}.acc_minus_context_blind", ">=", 0.1,
                      f"{lab}: in-context accuracy 0.1 above the best context-blind predictor"),
                Claim(f"{enc}_previous_token_head", f"{enc}.prev_token_acc", ">=", 0.5,
                      f"{lab}: after the steps layer 0 attends to t-1 at most positions"),
                Claim(f"{enc}_induction_attention", f"{enc}.induction_attn_acc", ">=", 0.5,
                      f"{lab}: after the steps layer 1 attends after an earlier copy at most "
                      "queries"),
            ]  # fmt: skip
        return out

    def report(self, result: Result) -> Report:
        return _build_report(self, result)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _tables(result: Result) -> list[str]:
    encs = list(result.per_seed[0])
    lines = [
        "## Alignment with the ideal memories",
        "",
        "Cosine between the stepped matrix and the plain ideal memory, the largest |cos| of "
        "random matrices of the same shape, and the z-score (cosine x sqrt(numel)).",
        "",
        "| encoding | matrix | seed | cosine | random max abs | z-score |",
        "|---|---|---|---|---|---|",
    ]
    for enc in encs:
        for param, name in MATRICES.items():
            key = KEYS[param]
            zs = []
            for seed, rec in zip(result.seeds, result.per_seed, strict=True):
                a = rec[enc]["alignment"][key]
                zs.append(a["z_score"])
                lines.append(
                    f"| {_kit.label(enc)} | {name} | {seed} | {fmt(a['cosine'], 4)} | "
                    f"{fmt(a['random_max_abs'], 4)} | {fmt(a['z_score'], 1)} |"
                )
            lines.append(f"| {_kit.label(enc)} | {name} | mean [95 %] | | | {interval_cell(zs)} |")
    lines += [
        "",
        "## In-context accuracy (label >= 2) and attention after the three steps",
        "",
        "| encoding | seed | before | after | chance | best context-blind | frequency rule | "
        "prev-token argmax | induction argmax |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cols = ("acc_ge2_before", "acc_ge2", "chance", "context_blind_acc", "frequency_rule_acc",
            "prev_token_acc", "induction_attn_acc")  # fmt: skip
    for enc in encs:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            r = rec[enc]
            lines.append(
                f"| {_kit.label(enc)} | {seed} | " + " | ".join(fmt(r[c]) for c in cols) + " |"
            )
        means = [interval_cell([rec[enc][c] for rec in result.per_seed]) for c in cols]
        lines.append(f"| {_kit.label(enc)} | mean [95 %] | " + " | ".join(means) + " |")
    lines += ["", "## Recall probes after the steps", "", "| encoding | seed | probes |"]
    lines.append("|---|---|---|")
    for enc in encs:
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            probes = ", ".join(f"{k} {fmt(v)}" for k, v in rec[enc]["probes"].items())
            lines.append(f"| {_kit.label(enc)} | {seed} | {probes} |")
    return lines


def _plot_alignment(result: Result, path: Any) -> None:
    from tlassoc.experiments._plots import pyplot, save_png

    plt = pyplot()
    encs = list(result.per_seed[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(encs))
    for i, enc in enumerate(encs):
        for j, param in enumerate(MATRICES):
            zs = [rec[enc]["alignment"][KEYS[param]]["z_score"] for rec in result.per_seed]
            x = j + (i - (len(encs) - 1) / 2) * width
            axes[0].bar(x, sum(zs) / len(zs), width, color=f"C{i}",
                        label=_kit.label(enc) if j == 0 else None)  # fmt: skip
            axes[0].scatter([x] * len(zs), zs, color="k", s=10, zorder=3)
    axes[0].axhline(Z_THRESHOLD, color="gray", ls="--", lw=1, label=f"z = {Z_THRESHOLD:g}")
    axes[0].set_xticks(range(len(MATRICES)), list(MATRICES.values()))
    axes[0].set_yscale("symlog")
    axes[0].set_ylabel("alignment z-score (cos x sqrt(numel))")
    axes[0].set_title("One-step matrices vs ideal memories")
    axes[0].legend(fontsize=8)
    cols = [
        ("acc_ge2_before", "before"),
        ("acc_ge2", "after"),
        ("chance", "chance"),
        ("context_blind_acc", "context-\nblind"),
        ("frequency_rule_acc", "frequency\nrule"),
    ]
    for i, enc in enumerate(encs):
        for j, (col, _) in enumerate(cols):
            vals = [rec[enc][col] for rec in result.per_seed]
            x = j + (i - (len(encs) - 1) / 2) * width
            axes[1].bar(x, sum(vals) / len(vals), width, color=f"C{i}",
                        label=_kit.label(enc) if j == 0 else None)  # fmt: skip
            axes[1].scatter([x] * len(vals), vals, color="k", s=10, zorder=3)
    axes[1].set_xticks(range(len(cols)), [c[1] for c in cols])
    axes[1].set_ylabel("accuracy on label >= 2 targets")
    axes[1].set_title("In-context accuracy after the three steps")
    axes[1].legend(fontsize=8)
    save_png(fig, path)


def _build_report(experiment: OneStepExperiment, result: Result) -> Report:
    c = result.config
    setting = (
        f"Simplified two-layer model, d_model {c['model']['d_model']}, trigger task T "
        f"{c['task']['seq_len']}; W_O², W_K², W_K¹ set to zero and stepped once each, top-down, "
        f"with step sizes {', '.join(f'{x:g}' for x in c['step_sizes'])} on the gradient of "
        f"{c['n_batches']} x {c['train']['batch_size']} sequences (loss on "
        f"{c['train']['loss_on']}). {seeds_line(result)}"
    )
    lines = report_head(experiment, result, "One-step training (Bietti et al., Theorem 3)", setting)
    lines += _tables(result)
    figures = {"one_step.png": lambda path: _plot_alignment(result, path)}
    lines += ["", "Figure: `one_step.png` (alignment z-scores and accuracies, every seed).", ""]
    return Report("\n".join(lines), figures)


__all__ = [
    "OneStepConfig",
    "OneStepExperiment",
    "context_blind_accuracy",
    "frequency_rule_accuracy",
    "measure_one",
    "top_bigram_accuracy",
]
