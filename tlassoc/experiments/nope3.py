"""Three layers without positions: does training find the previous-token and induction heads?

Without any positional information a transformer can still recover order from the causal
mask: a uniform first layer writes a signal that fades like ``1/t`` (Wang & Sato; the explicit
construction is ours, :func:`tlassoc.memory.build_ideal_nope`), a second layer can turn it into
a previous-token head and the third layer can be the induction head. This experiment trains the
three-layer model without positions (``presets.nope``: ``W_Q = I``, ``W_E``/``W_U`` frozen, the
``nope`` recipe at CPU size) on the trigger task, one run per seed, and asks whether and when

* layer 1 (0-based) becomes a previous-token head: its attention argmax at ``t`` is ``t - 1``;
* layer 2 becomes an induction head: its argmax lands right after an earlier copy of the
  current token;

logging both (with every layer's mean attention to ``t - 1``, the ``W_O²``/``W_K²`` recall
probes of layer 2 and the in-context accuracy) over training. The trained model is compared
with the ideal three-layer construction built on the same kind of model (a wider one: the
construction needs ``d_vocab <= d_model - 2``), on the same held-out trigger sequences and on
repeated random blocks.

**Start token** (ours, ``start_token=True`` by default): the construction reads position from
the ``1/t`` decay of a distinguished first token, so every sequence starts with an extra token
id (``d_vocab``, i.e. 65) that occurs nowhere else; ``start_token=False`` trains on the
recipe's sequences as they are (the ideal model still gets its start token).

Example:
    >>> cfg = NopeConfig()
    >>> cfg.model.n_layers, cfg.model.positional_embedding_type, cfg.model.d_vocab
    (3, 'none', 66)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tlassoc import presets
from tlassoc.config import RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig, check_int
from tlassoc.data import TriggerBatch, make_task
from tlassoc.experiments import _kit
from tlassoc.experiments._report_kit import interval_cell, report_head, seeds_line
from tlassoc.experiments.framework import Claim, Experiment, Report, Result, fmt

#: Token ids of the trigger task (the start token is the next id).
TASK_VOCAB = 65


def _default_train() -> TrainConfig:
    # CPU-sized (ours): the nope recipe's SGD (lr 0.2, batch 512, T 256) diverges at batch 64;
    # AdamW at lr 3e-3 trains stably at this size.
    return TrainConfig(
        steps=600, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=0.0,
        loss_on="in_context", log_every=25, eval_batch_size=64,
    )  # fmt: skip


@dataclass
class NopeConfig(RunConfig):
    """The three-layer no-position experiment.

    Args:
        model: ``presets.nope`` (d 128); ``d_vocab`` is 66 with the start token, 65 without,
            and ``n_ctx`` the sequence length (plus one with the start token).
        train: AdamW, lr 3e-3, batch 64, 600 steps, loss on the in-context targets.
        task: The trigger task (T 64, five fixed triggers).
        seeds: Seeds (``model.seed = train.seed = s``).
        start_token: Prepend a start token that occurs nowhere else.
        threshold: A head has formed at the first logged step where its argmax accuracy is
            ``>= threshold``.
        ideal_d_model: Width of the ideal construction.
        eval_sequences: Held-out trigger sequences of the final evaluation.
        repeat_len: Block length of the repeated-random-block evaluation.
    """

    model: AssocConfig = field(default_factory=lambda: presets.nope(d_model=128, n_ctx=65))
    train: TrainConfig = field(default_factory=_default_train)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(seq_len=64))
    seeds: tuple[int, ...] = (0, 1, 2)
    start_token: bool = True
    threshold: float = 0.9
    ideal_d_model: int = 256
    eval_sequences: int = 128
    repeat_len: int = 25

    def __post_init__(self) -> None:
        _kit.check_seeds(self.seeds)
        if not isinstance(self.start_token, bool):
            raise ValueError(f"start_token={self.start_token!r}; expected a bool")
        _kit.check_number("threshold", self.threshold, "(0, 1]")
        check_int("ideal_d_model", self.ideal_d_model, minimum=TASK_VOCAB + 3)
        check_int("eval_sequences", self.eval_sequences, minimum=1)
        check_int("repeat_len", self.repeat_len, minimum=2)
        if self.repeat_len > TASK_VOCAB - 1:
            raise ValueError(f"repeat_len={self.repeat_len}; expected <= {TASK_VOCAB - 1}")
        if isinstance(self.model, AssocConfig) and isinstance(self.task, TaskConfig):
            m = self.model
            if m.n_layers != 3 or m.positional_embedding_type != "none":
                raise ValueError(
                    f"model.n_layers={m.n_layers}, positional_embedding_type="
                    f"{m.positional_embedding_type!r}; expected 3 layers without positions"
                )
            n = self.seq_len
            vocab = TASK_VOCAB + int(self.start_token)
            if m.d_vocab != vocab or m.n_ctx < n:
                self.model = m.replace(d_vocab=vocab, n_ctx=max(m.n_ctx, n))
        if isinstance(self.train, TrainConfig) and self.train.log_every < 1:
            raise ValueError(f"train.log_every={self.train.log_every}; expected >= 1")
        if isinstance(self.task, TaskConfig) and self.task.trigger_mode != "fixed":
            raise ValueError(
                f"task.trigger_mode={self.task.trigger_mode!r}; expected 'fixed' (the W_K² "
                "probe reads the fixed triggers)"
            )
        super().__post_init__()

    @property
    def seq_len(self) -> int:
        """Model positions per sequence: ``task.seq_len`` plus the start token."""
        return self.task.seq_len + int(self.start_token)


# ------------------------------------------------------------------------------------------------
# Data: the start token
# ------------------------------------------------------------------------------------------------


def with_start_token(batch: TriggerBatch, start: int = TASK_VOCAB) -> TriggerBatch:
    """``batch`` with token ``start`` in front of every sequence; its target is the first token
    with label -1 (not scored), the other targets and labels are unchanged.

    Example:
        >>> b = TriggerBatch(torch.tensor([[3, 4]]), torch.tensor([[4, 5]]),
        ...                  torch.tensor([[0, 0]]), torch.zeros(1, 0), torch.zeros(1, 0))
        >>> s = with_start_token(b)
        >>> s.tokens.tolist(), s.targets.tolist(), s.labels.tolist()
        ([[65, 3, 4]], [[3, 4, 5]], [[-1, 0, 0]])
    """
    n = batch.tokens.shape[0]
    col = torch.full((n, 1), start, dtype=batch.tokens.dtype, device=batch.tokens.device)
    return TriggerBatch(
        torch.cat([col, batch.tokens], 1),
        torch.cat([batch.tokens[:, :1], batch.targets], 1),
        torch.cat([torch.full_like(col, -1), batch.labels], 1),
        batch.triggers,
        batch.outputs,
        prefix_len=batch.prefix_len,
    )


class StartTokenTask:
    """A trigger task whose sequences start with a start token (see :func:`with_start_token`).

    Example:
        >>> task = StartTokenTask(make_task(TaskConfig(seq_len=8), batch_size=2))
        >>> task.seq_len, task.sample(seed=0).tokens[:, 0].tolist()
        (9, [65, 65])
    """

    def __init__(self, task: Any, start: int = TASK_VOCAB):
        self.task, self.start = task, start
        self.seq_len = task.seq_len + 1
        self.trigger_mode, self.bigram = task.trigger_mode, task.bigram

    @property
    def fixed_triggers(self) -> Tensor:
        """The wrapped task's fixed triggers."""
        return self.task.fixed_triggers

    def sample(self, generator: Any = None, seed: Any = None, **kwargs: Any) -> TriggerBatch:
        """A batch of the wrapped task with the start token prepended."""
        return with_start_token(self.task.sample(generator=generator, seed=seed, **kwargs))


def repeated_blocks(n: int, length: int, start: bool, seed: int) -> Tensor:
    """``n`` sequences ``[start] r r`` of a block ``r`` of ``length`` distinct task tokens.

    Example:
        >>> t = repeated_blocks(2, 5, True, seed=0)
        >>> t.shape, bool((t[:, 1:6] == t[:, 6:]).all())
        (torch.Size([2, 11]), True)
    """
    gen = torch.Generator().manual_seed(seed)
    block = torch.rand(n, TASK_VOCAB, generator=gen).argsort(-1)[:, :length]
    tokens = torch.cat([block, block], 1)
    if start:
        tokens = torch.cat([torch.full((n, 1), TASK_VOCAB), tokens], 1)
    return tokens


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_probes(model: Any, tokens: Tensor) -> dict[str, float]:
    """Per layer ``l``: ``prev_argmax_l`` (fraction of positions ``t >= 1`` whose argmax is
    ``t - 1``), ``prev_mean_l`` (mean attention to ``t - 1``) and ``induction_l`` (argmax after
    an earlier copy of the current token, :func:`tlassoc.metrics.induction_attention_accuracy`).

    Example:
        >>> from tlassoc import AssocTransformer
        >>> m = AssocTransformer(presets.nope(d_model=16, n_ctx=8))
        >>> sorted(attention_probes(m, torch.randint(0, 65, (2, 8))))[:3]
        ['induction_0', 'induction_1', 'induction_2']
    """
    from tlassoc.metrics import induction_attention_accuracy, previous_token_accuracy

    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    out = {}
    for layer in range(model.cfg.n_layers):
        A = cache[f"blocks.{layer}.attn.hook_pattern"][:, 0]
        out[f"prev_argmax_{layer}"] = float(previous_token_accuracy(A)[1:].mean())
        out[f"prev_mean_{layer}"] = float(A.diagonal(offset=-1, dim1=-2, dim2=-1).mean())
        out[f"induction_{layer}"] = induction_attention_accuracy(A, tokens)
    return out


def nope_evaluator(batch: TriggerBatch, triggers: Tensor) -> Any:
    """A training evaluator logging :func:`attention_probes` on ``batch`` and layer 2's
    ``W_O²``/``W_K²`` recall probes (``probe_wo2``, ``probe_wk2``)."""
    from tlassoc.memory.probes import wk2_probe, wo2_probe

    def evaluator(model: Any) -> dict[str, float]:
        out = attention_probes(model, batch.tokens)
        out["probe_wo2"] = wo2_probe(model, layer=2, tokens=torch.arange(TASK_VOCAB))
        out["probe_wk2"] = wk2_probe(model, triggers, layer=2)
        return out

    return evaluator


@torch.no_grad()
def final_numbers(model: Any, batch: TriggerBatch, blocks: Tensor) -> dict[str, float]:
    """In-context accuracy, attention probes on ``batch``, and accuracy on the second copy of
    the repeated ``blocks`` (every position of it but the last)."""
    from tlassoc.metrics import label_accuracy

    model.eval()
    logits = model(batch.tokens)
    out = {
        "acc_ge2": label_accuracy(logits, batch.targets, batch.labels, 2),
        "acc_ge1": label_accuracy(logits, batch.targets, batch.labels, 1),
        **attention_probes(model, batch.tokens),
    }
    L = (blocks.shape[1] - int(blocks[0, 0] == TASK_VOCAB)) // 2
    off = blocks.shape[1] - 2 * L
    pred = model(blocks).argmax(-1)[:, off + L : off + 2 * L - 1]
    out["repeat_acc"] = float((pred == blocks[:, off + L + 1 :]).float().mean())
    return out


def ideal_model(cfg: NopeConfig, seed: int) -> Any:
    """The ideal three-layer construction (start token ``65``) at ``cfg.ideal_d_model``."""
    from tlassoc.memory import build_ideal_nope
    from tlassoc.model import AssocTransformer

    n = cfg.task.seq_len + 1
    model = AssocTransformer(
        presets.nope(
            d_model=cfg.ideal_d_model, n_ctx=n, d_vocab=TASK_VOCAB + 1, seed=seed,
            model_name="ideal-nope",
        )
    )  # fmt: skip
    # the recency gap between t-1 and t-2 is λ / (t (t-1)): keep it >= 10 up to the last position
    return build_ideal_nope(
        model, start_token=TASK_VOCAB, recency_scale=max(4.0e4, 10.0 * n * n), seed=seed
    ).eval()


def crossing(history: list[dict[str, Any]], key: str, threshold: float) -> int | None:
    """The first logged step with ``history[i][key] >= threshold`` (``None`` if none).

    Example:
        >>> crossing([{"step": 0, "a": 0.2}, {"step": 25, "a": 0.95}], "a", 0.9)
        25
    """
    return _kit.crossing_step(history, key, threshold)


def run_seed(cfg: NopeConfig, seed: int, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train one seed and measure it next to the ideal construction.

    Example:
        >>> cfg = Nope3Experiment().quick_config().override({"model.d_model": 16,
        ...     "task.seq_len": 12, "train.steps": 2, "train.batch_size": 4,
        ...     "train.eval_batch_size": 4, "eval_sequences": 4, "repeat_len": 5,
        ...     "ideal_d_model": 68})
        >>> _, rec = run_seed(cfg, 0)
        >>> sorted(rec)
        ['acc_gap_to_ideal', 'crossing', 'history', 'ideal', 'train_seconds', 'trained']
    """
    base = make_task(cfg.task, batch_size=cfg.train.batch_size)
    task = StartTokenTask(base) if cfg.start_token else base
    plain = base.sample(seed=seed + 1000, batch_size=cfg.eval_sequences)
    marked = with_start_token(plain)
    probe_batch = marked if cfg.start_token else plain
    model, result, seconds = _kit.train_model(
        cfg.model.replace(seed=seed, model_name="nope"),
        task,
        cfg.train.replace(seed=seed),
        progress=progress,
        evaluators=[nope_evaluator(probe_batch, base.fixed_triggers)],
    )
    blocks = repeated_blocks(cfg.eval_sequences, cfg.repeat_len, True, seed + 2000)
    trained = final_numbers(model, probe_batch, blocks if cfg.start_token else blocks[:, 1:])
    ideal = final_numbers(ideal_model(cfg, seed), marked, blocks)
    keep = ("step", "acc_ge2", "loss_in_context", "probe_wo2", "probe_wk2")
    history = [
        {k: v for k, v in r.items() if k in keep or k.startswith(("prev_", "induction_"))}
        for r in result.history
    ]
    return model, {
        "trained": trained,
        "ideal": ideal,
        "acc_gap_to_ideal": trained["acc_ge2"] - ideal["acc_ge2"],
        "crossing": {
            "previous_token_layer1": crossing(history, "prev_argmax_1", cfg.threshold),
            "induction_layer2": crossing(history, "induction_2", cfg.threshold),
        },
        "history": history,
        "train_seconds": seconds,
    }


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


class Nope3Experiment(Experiment):
    """Three layers without positions: previous-token and induction heads from training?"""

    name = "nope3"
    description = "3 layers, no positions: do layer 1 (previous token) and 2 (induction) form?"
    config_class = NopeConfig

    def quick_config(self) -> NopeConfig:
        """Small setting for tests (d 64, T 32, 40 steps, one seed)."""
        return NopeConfig().override(
            {
                "model.d_model": 64,
                "task.seq_len": 32,
                "train.steps": 40,
                "train.batch_size": 32,
                "train.log_every": 20,
                "train.eval_batch_size": 16,
                "eval_sequences": 32,
                "ideal_d_model": 128,
                "seeds": (0,),
            }
        )

    def measure(self, config: NopeConfig, progress: bool = True) -> Result:
        _kit.check_config(config, NopeConfig)
        t0 = time.perf_counter()
        per_seed, models = [], {}
        for seed in config.seeds:
            model, record = run_seed(config, seed, progress)
            per_seed.append(record)
            models[f"nope-seed{seed}"] = model
        return _kit.make_result(self.name, config, per_seed, t0, {"models": models})

    def claims(self, config: NopeConfig) -> list[Claim]:
        """The ideal construction solves repeated blocks and has its previous-token layer (a
        check of the construction); the trained model forms a previous-token head in layer 1
        and an induction head in layer 2 (argmax accuracy >= ``threshold``) and comes within
        0.1 of the construction's in-context accuracy."""
        t = config.threshold
        return [
            Claim("ideal_repeated_blocks", "ideal.repeat_acc", ">=", 0.95,
                  "the ideal construction copies the second block of a repeated random block"),
            Claim("ideal_previous_token_layer1", "ideal.prev_argmax_1", ">=", t,
                  "the ideal construction's layer 1 attends to t-1"),
            Claim("trained_previous_token_layer1", "trained.prev_argmax_1", ">=", t,
                  "training makes layer 1 a previous-token head (argmax at t-1)"),
            Claim("trained_induction_layer2", "trained.induction_2", ">=", t,
                  "training makes layer 2 an induction head (argmax after an earlier copy)"),
            Claim("trained_close_to_ideal", "acc_gap_to_ideal", ">=", -0.1,
                  "the trained model's in-context accuracy is within 0.1 of the construction's"),
        ]  # fmt: skip

    def report(self, result: Result) -> Report:
        return _build_report(self, result)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


_COLUMNS = (
    ("acc_ge2", "in-context acc (>=2)"),
    ("repeat_acc", "repeated-block acc"),
    ("prev_argmax_1", "layer-1 argmax t-1"),
    ("prev_mean_1", "layer-1 mean attn t-1"),
    ("induction_2", "layer-2 induction argmax"),
    ("prev_argmax_0", "layer-0 argmax t-1"),
    ("induction_1", "layer-1 induction argmax"),
)


def _tables(result: Result) -> list[str]:
    lines = [
        "## Trained model and ideal construction",
        "",
        "| model | seed | " + " | ".join(n for _, n in _COLUMNS) + " |",
        "|---|---|" + "---|" * len(_COLUMNS),
    ]
    for which in ("trained", "ideal"):
        for seed, rec in zip(result.seeds, result.per_seed, strict=True):
            r = rec[which]
            lines.append(
                f"| {which} | {seed} | " + " | ".join(fmt(r[k]) for k, _ in _COLUMNS) + " |"
            )
        cells = [interval_cell([rec[which][k] for rec in result.per_seed]) for k, _ in _COLUMNS]
        lines.append(f"| {which} | mean [95 %] | " + " | ".join(cells) + " |")
    thr = result.config["threshold"]
    lines += [
        "",
        f"## When (first logged step with argmax accuracy >= {thr:g})",
        "",
        "| seed | layer 1 previous-token | layer 2 induction | train seconds |",
        "|---|---|---|---|",
    ]
    for seed, rec in zip(result.seeds, result.per_seed, strict=True):
        c = rec["crossing"]
        steps = [("never" if c[k] is None else str(c[k])) for k in c]
        lines.append(f"| {seed} | {' | '.join(steps)} | {rec['train_seconds']:.0f} |")
    return lines


def _plot(result: Result, path: Any) -> None:
    from tlassoc.experiments._plots import pyplot, save_png

    plt = pyplot()
    curves = (
        ("prev_argmax_1", "layer 1: argmax at t-1"),
        ("prev_mean_1", "layer 1: mean attention to t-1"),
        ("induction_2", "layer 2: induction argmax"),
        ("acc_ge2", "in-context accuracy"),
        ("probe_wo2", "layer-2 W_O recall (copy)"),
    )
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, (key, label) in enumerate(curves):
        for j, rec in enumerate(result.per_seed):
            h = rec["history"]
            ax.plot([r["step"] for r in h], [r.get(key) for r in h], color=f"C{i}",
                    lw=1.3 if j == 0 else 0.7, alpha=1.0 if j == 0 else 0.5,
                    label=label if j == 0 else None)  # fmt: skip
        ideal = result.per_seed[0]["ideal"].get(key)
        if ideal is not None:
            ax.axhline(ideal, color=f"C{i}", ls=":", lw=1)
    ax.axhline(result.config["threshold"], color="gray", ls="--", lw=1, label="threshold")
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy / attention")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Three layers, no positions: probes over training (dotted: ideal construction)")
    ax.legend(fontsize=8, loc="center right")
    save_png(fig, path)


def _build_report(experiment: Nope3Experiment, result: Result) -> Report:
    c = result.config
    m, t = c["model"], c["train"]
    setting = (
        f"presets.nope (d_model {m['d_model']}, W_Q = I, W_E/W_U frozen), trigger task T "
        f"{c['task']['seq_len']}{' plus a start token' if c['start_token'] else ''}; "
        f"{t['steps']} {t['optimizer']} steps (lr {t['lr']}, batch {t['batch_size']}, loss on "
        f"{t['loss_on']}). Ideal construction at d_model {c['ideal_d_model']}. "
        f"{seeds_line(result)}"
    )
    lines = report_head(experiment, result, "Three layers without positions", setting)
    lines += _tables(result)
    lines += ["", "Figure: `probes.png` (probes over training; dotted: the ideal model).", ""]
    return Report("\n".join(lines), {"probes.png": lambda path: _plot(result, path)})


__all__ = [
    "TASK_VOCAB",
    "Nope3Experiment",
    "NopeConfig",
    "StartTokenTask",
    "attention_probes",
    "crossing",
    "final_numbers",
    "ideal_model",
    "nope_evaluator",
    "repeated_blocks",
    "run_seed",
    "with_start_token",
]
