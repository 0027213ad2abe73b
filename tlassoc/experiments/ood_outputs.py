"""Does the induction head copy tokens it never saw as outputs? (Bietti et al.'s split.)

Trains the simplified two-layer model (loss on the in-context targets, label >= 2) on the trigger
task with every trigger's output drawn from the first ``n_train_outputs`` token ids (48 = 75 %
of 65; ``TaskConfig(output_split="train")``), once per positional encoding and seed. Then it
measures, on held-out sequences:

* in-context accuracy (label >= 2) when the outputs come from the same ids (*seen*) and when
  they come only from the other 17 ids (*unseen*, ``output_split="test"``), and the gap;
* on the unseen targets, how often the model answers one of the seen output ids instead, and
  the accuracy a global-bigram guess (the top successor of the trigger) would reach;
* at the queries of those targets, how often the induction head's attention argmax lands right
  after an earlier occurrence of the trigger (where the output to copy sits);
* the ``W_O²`` recall probe (the copy memory: a token's own logit is the largest in the full OV
  circuit of the induction head) over the seen and over the unseen ids. Unseen tokens are never
  copied during training, so this memory is written only for the seen ones unless the copy
  generalises.

Example:
    >>> cfg = OODOutputsConfig()
    >>> cfg.task.output_split, cfg.task.n_train_outputs, cfg.train.loss_on
    ('train', 48, 'in_context')
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
from tlassoc.experiments.framework import Claim, Experiment, Report, Result
from tlassoc.metrics import induction_attention_accuracy, label_accuracy, masked_mean


def _ood_model() -> AssocConfig:
    # As knowledge_hijack: d_model 64, bias-form relative term clipped at T_train / 2.
    return presets.rpe(d_model=64, n_ctx=64, relative_form="bias", max_relative_distance=32)


def _ood_train() -> TrainConfig:
    # The length-generalisation recipe's optimizer settings (AdamW lr 0.05, batch 64, 400 steps).
    return TrainConfig(
        steps=400,
        batch_size=64,
        optimizer="adamw",
        lr=0.05,
        weight_decay=0.0,
        loss_on="in_context",
        log_every=100,
        eval_batch_size=64,
    )


@dataclass
class OODOutputsConfig(RunConfig):
    """The out-of-distribution-outputs experiment: a run configuration trained on the ``train``
    output split, plus the evaluation settings.

    Each seed ``s`` trains every encoding with ``model.seed = train.seed = s`` and evaluates on
    batches seeded from ``s + 1000``. ``model.n_ctx`` is derived: ``T_train``.

    Args:
        model: The simplified model; its ``positional_embedding_type`` is replaced by each
            encoding.
        train: How each model is trained.
        task: The trigger task; ``output_split`` must be ``"train"`` (the evaluation switches
            it to ``"test"`` for the unseen outputs).
        encodings: Positional encodings compared (``positional_embedding_type`` values).
        seeds: Seeds; every claim must hold for each.
        eval_sequences: Sequences per evaluation batch (seen and unseen).
    """

    model: AssocConfig = field(default_factory=_ood_model)
    train: TrainConfig = field(default_factory=_ood_train)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(seq_len=64, output_split="train"))
    encodings: tuple[str, ...] = ("relative", "standard")
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_sequences: int = 128

    def __post_init__(self) -> None:
        _kit.check_runs(self.encodings, self.seeds)
        check_int("eval_sequences", self.eval_sequences, minimum=1)
        if isinstance(self.task, TaskConfig):
            if self.task.output_split != "train":
                raise ValueError(
                    f"task.output_split={self.task.output_split!r}; expected 'train' (outputs "
                    "restricted in training, so that the 'test' outputs are unseen)"
                )
            if not 0 < self.task.n_train_outputs < 65:
                raise ValueError(
                    f"task.n_train_outputs={self.task.n_train_outputs}; expected 0 < n < 65"
                )
        if isinstance(self.model, AssocConfig) and isinstance(self.task, TaskConfig):
            self.model = _kit.with_n_ctx(self.model, self.task.seq_len)
        super().__post_init__()


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def _split_scores(model: Any, task: Any, n_train: int, size: int, seed: int) -> dict[str, Any]:
    batch = task.sample(seed=seed, batch_size=size)
    logits, cache = model.run_with_cache(
        batch.tokens, names_filter=lambda n: n == "blocks.1.attn.hook_pattern"
    )
    pred = logits.argmax(-1)
    ic = batch.labels >= 2
    top = torch.tensor([task.bigram.top_successor(i) for i in range(task.bigram.d_vocab)])
    # The query of a label >= 2 target is the trigger before it: does layer 1 attend right after
    # an earlier copy of it (the previous occurrence's output)?
    pattern = cache["blocks.1.attn.hook_pattern"][:, 0]
    return {
        "acc_ge2": label_accuracy(logits, batch.targets, batch.labels, 2),
        "induction_attention": induction_attention_accuracy(pattern, batch.tokens, ic),
        "answers_seen_id": masked_mean((pred < n_train).float(), ic),
        "bigram_guess_acc": masked_mean((top[batch.tokens] == batch.targets).float(), ic),
        "targets": int(ic.sum()),
    }


@torch.no_grad()
def evaluate_ood(model: Any, config: OODOutputsConfig, seed: int) -> dict[str, Any]:
    """All evaluation numbers of one trained model (module docstring)."""
    from tlassoc.memory.probes import wo2_probe

    model.eval()
    n_train, size = config.task.n_train_outputs, config.eval_sequences
    seen = make_task(config.task, batch_size=size)
    unseen = make_task(config.task.replace(output_split="test"), batch_size=size)
    out = {
        "seen": _split_scores(model, seen, n_train, size, seed),
        "unseen": _split_scores(model, unseen, n_train, size, seed + 1),
    }
    out["gap"] = out["seen"]["acc_ge2"] - out["unseen"]["acc_ge2"]
    V = model.cfg.d_vocab
    out["wo2_recall_seen"] = wo2_probe(model, tokens=torch.arange(n_train))
    out["wo2_recall_unseen"] = wo2_probe(model, tokens=torch.arange(n_train, V))
    return out


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


class OODOutputsExperiment(Experiment):
    """In-context accuracy on outputs never seen as outputs in training, per encoding."""

    name = "ood_outputs"
    description = "train with outputs from 75 % of tokens; copy the unseen 25 % in context?"
    config_class = OODOutputsConfig

    def quick_config(self) -> OODOutputsConfig:
        """Small setting for tests (d 32, 80 steps, 2 seeds)."""
        return OODOutputsConfig().override(
            {
                "model.d_model": 32,
                "train.steps": 80,
                "train.batch_size": 16,
                "train.log_every": 40,
                "train.eval_batch_size": 16,
                "task.seq_len": 32,
                "eval_sequences": 32,
                "seeds": (0, 1),
            }
        )

    def measure(self, config: OODOutputsConfig, progress: bool = True) -> Result:
        _kit.check_config(config, OODOutputsConfig, "an")
        from tlassoc.memory.probes import probe_evaluator

        t0 = time.perf_counter()
        task = make_task(config.task, batch_size=config.train.batch_size)

        def run(enc: str, seed: int) -> tuple[Any, dict[str, Any]]:
            model, rec = _kit.train_one(
                config, enc, seed, task, progress=progress, evaluators=[probe_evaluator(task)]
            )
            return model, {**evaluate_ood(model, config, seed + 1000), **rec}

        runs = _kit.run_grid(config.seeds, config.encodings, run)
        return _kit.make_result(self.name, config, runs.per_seed, t0, {"models": runs.models})

    def claims(self, config: OODOutputsConfig) -> list[Claim]:
        """The induction head copies outputs it never saw as outputs (Bietti et al.'s
        out-of-distribution test, stated qualitatively; thresholds ours)."""
        out = []
        for enc in config.encodings:
            lab = _kit.label(enc).lower()
            out += [
                Claim(f"{lab}_seen", f"{enc}.seen.acc_ge2", ">=", 0.8,
                      "Control: the induction head formed, in-context accuracy >= 0.8 on "
                      "outputs of the training split (threshold ours)."),
                Claim(f"{lab}_copies_unseen", f"{enc}.unseen.acc_ge2", ">=", 0.5,
                      "The induction head still copies outputs never seen as outputs: "
                      "in-context accuracy >= 0.5 on them (threshold ours: more often right "
                      "than wrong)."),
                Claim(f"{lab}_transfer_gap", f"{enc}.gap", "<=", 0.2,
                      "Unseen outputs are copied nearly as well as seen ones (gap <= 0.2; "
                      "threshold ours)."),
            ]  # fmt: skip
        return out

    def report(self, result: Result) -> Report:
        return build_report(self, result)


def _figure(result: Result, path: Any) -> None:
    from tlassoc.experiments._plots import bar_positions, mean_bar, pyplot, save_png
    from tlassoc.experiments.framework import lookup

    plt = pyplot()
    encs = result.config["encodings"]
    groups = (
        ("seen.acc_ge2", "in-context acc,\nseen outputs"),
        ("unseen.acc_ge2", "in-context acc,\nunseen outputs"),
        ("wo2_recall_seen", "W_O² recall,\nseen ids"),
        ("wo2_recall_unseen", "W_O² recall,\nunseen ids"),
    )
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(encs))
    for i, enc in enumerate(encs):
        bars = [mean_bar([lookup(r[enc], key) for r in result.per_seed]) for key, _ in groups]
        xs = bar_positions(len(groups), i, len(encs), width)
        ax.bar(xs, [m for m, _ in bars], width, yerr=[e for _, e in bars], capsize=3,
               label=_kit.label(enc))  # fmt: skip
    ax.set_xticks(range(len(groups)), [g[1] for g in groups], fontsize=8)
    ax.set_ylabel("fraction (mean over seeds, 95 % interval)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Outputs seen in training against outputs never seen as outputs")
    ax.legend(fontsize=8)
    save_png(fig, path)


def _rows(enc: str) -> list[tuple[str, str]]:
    rows = []
    for split in ("seen", "unseen"):
        rows += [
            (f"in-context accuracy (label >= 2), {split} outputs", f"{enc}.{split}.acc_ge2"),
            (f"answers a seen output id, {split} outputs", f"{enc}.{split}.answers_seen_id"),
            (f"induction attention finds the output, {split} outputs",
             f"{enc}.{split}.induction_attention"),
            (f"global-bigram guess accuracy, {split} outputs", f"{enc}.{split}.bigram_guess_acc"),
            (f"scored targets, {split} outputs", f"{enc}.{split}.targets"),
        ]  # fmt: skip
    return rows + [
        ("gap (seen - unseen)", f"{enc}.gap"),
        ("W_O² recall over seen ids", f"{enc}.wo2_recall_seen"),
        ("W_O² recall over unseen ids", f"{enc}.wo2_recall_unseen"),
        ("training seconds", f"{enc}.train_seconds"),
    ]


def build_report(experiment: Any, result: Result) -> Report:
    """Markdown (verdicts, claims, tables) and the figure."""
    from tlassoc.experiments._report_kit import (
        encoding_tables,
        finish_report,
        report_head,
        setting_line,
    )

    n_train = result.config["task"]["n_train_outputs"]
    setting = setting_line(
        result,
        f"Trigger outputs in training: token ids 0-{n_train - 1}; unseen outputs: ids "
        f"{n_train}-64 ({result.config['eval_sequences']} evaluation sequences each).",
    )
    title = "Out-of-distribution outputs: copying tokens never seen as outputs"
    lines = report_head(experiment, result, title, setting) + encoding_tables(result, _rows)
    return finish_report(lines, {"seen_unseen.png": lambda p: _figure(result, p)})


__all__ = ["OODOutputsConfig", "OODOutputsExperiment", "build_report", "evaluate_ood"]
