"""In-context versus global knowledge on designed prompts ("knowledge hijack", Wang & Sato).

Trains the simplified two-layer model with a linear feed-forward layer (the global bigram
memory ``W_F``) and the loss on all positions, once per positional encoding (``relative`` and
``standard``) and seed, on the trigger task with random triggers (so that a token is a trigger
in some sequences and follows its global bigram in others, and both memories are written for
it). Then it probes the model with the designed prompt families of :mod:`tlassoc.theory`
(``designed_prompts``): ``n`` pairs ``a b1`` and ``m`` pairs ``a b2`` in filler text, the last
token ``a``; ``b1`` equal to the global top successor of ``a`` (``agree``) or not
(``disagree``); the pairs placed near the end, near the start, or entirely beyond ``T_train``.

Per family it measures how often the in-context answer beats the global one (the logit of
``b1`` above that of the top bigram, for ``disagree`` prompts), how often the model falls back
to the global top bigram (its argmax), and how the model's logit differences compare with the
theory's prediction ``ξ`` read off the same model's weights (:func:`tlassoc.theory.compare`:
Pearson correlation and argmax agreement).

Only prompts whose query ``a`` is a trigger in at least ``min_trigger_rate`` of the training
sequences are scored for the claims [ours]: the induction head's key memory ``W_K²`` stores a
token only if that token served as a trigger often enough in training, so for a rarely-seen
query the in-context path does not exist at all. The win rates over all queries are reported
next to them.

A diagnostic (not a claim) repeats the theory with the copy path read through the feed-forward
layer (:func:`copy_through_ffn`): in trained models the feed-forward layer reads what the
induction head writes and carries most of the copy into the logits.

Example:
    >>> cfg = KnowledgeHijackConfig()
    >>> cfg.task.seq_len, cfg.model.n_ctx, cfg.model.ffn_type, cfg.train.loss_on
    (64, 112, 'linear', 'all')
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from tlassoc import presets
from tlassoc.config import RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig, check_int
from tlassoc.data import make_task
from tlassoc.experiments import _kit
from tlassoc.experiments.framework import Claim, Experiment, Report, Result

#: The repeat counts ``(n, m)`` whose in-context majority is ``b1`` (``n > m``).
MAJORITY = ((1, 0), (2, 0), (3, 0), (2, 1), (3, 1))
WITHIN = ("near", "far")
#: The quick (test) settings, shared with stronger_amt: d 32, 60 steps, 2 seeds, 400 prompts.
QUICK = {
    **_kit.QUICK_TRAINING,
    "prompt_len": 24,
    "n_prompts": 400,
    "seeds": (0, 1),
}


# ------------------------------------------------------------------------------------------------
# Default run (ours, CPU-sized; shared with stronger_amt)
# ------------------------------------------------------------------------------------------------


def hijack_model() -> AssocConfig:
    """The model: ``presets.rpe`` at d_model 64 with the linear feed-forward memory; the relative
    term in bias form (a learned scalar per distance), clipped at ``T_train / 2`` so that the last
    bucket is trained on many keys (docs/training.md, "Why the relative-position model does
    (not) generalise here")."""
    return presets.rpe(
        d_model=64, n_ctx=112, ffn_type="linear", relative_form="bias", max_relative_distance=32
    )


def hijack_train() -> TrainConfig:
    """800 AdamW steps of 32 sequences, lr 0.05 with a cosine schedule, loss on all positions."""
    return TrainConfig.full(
        steps=800,
        batch_size=32,
        lr=0.05,
        schedule="cosine",
        weight_decay=0.0,
        loss_on="all",
        log_every=200,
        eval_batch_size=64,
    )


def hijack_task() -> TaskConfig:
    """T_train 64, ten random triggers per sequence (drawn from the unigram distribution)."""
    return TaskConfig(seq_len=64, n_triggers=10, trigger_mode="random")


@dataclass
class KnowledgeHijackConfig(RunConfig):
    """The knowledge-hijack experiment: a run configuration plus the prompt settings.

    Each seed ``s`` trains every encoding with ``model.seed = train.seed = s`` and draws its
    prompts with seed ``s + 1000``. ``model.n_ctx`` is derived: ``T_train + prompt_len``, the
    length of the prompts placed beyond ``T_train``.

    Args:
        model: The model (linear feed-forward layer); its ``positional_embedding_type`` is
            replaced by each encoding.
        train: How each model is trained (the loss must include the global positions).
        task: The trigger task; ``task.seq_len`` is ``T_train``.
        encodings: Positional encodings compared (``positional_embedding_type`` values).
        seeds: Seeds; every claim must hold for each.
        n_prompts: Designed prompts drawn per model, before keeping the trained queries.
        prompt_len: Length of the prompts placed near the end or the start.
        min_trigger_rate: A query token is scored for the claims when it is a trigger in at
            least this fraction of training sequences.
    """

    model: AssocConfig = field(default_factory=hijack_model)
    train: TrainConfig = field(default_factory=hijack_train)
    task: TaskConfig = field(default_factory=hijack_task)
    encodings: tuple[str, ...] = ("relative", "standard")
    seeds: tuple[int, ...] = (0, 1, 2)
    n_prompts: int = 6000
    prompt_len: int = 48
    min_trigger_rate: float = 0.25

    def __post_init__(self) -> None:
        _kit.check_runs(self.encodings, self.seeds)
        check_int("n_prompts", self.n_prompts, minimum=16)
        check_int("prompt_len", self.prompt_len, minimum=16)
        self.min_trigger_rate = _kit.check_number("min_trigger_rate", self.min_trigger_rate)
        if isinstance(self.model, AssocConfig) and isinstance(self.task, TaskConfig):
            _kit.check_ffn(self.model)
            self.model = _kit.with_n_ctx(self.model, self.task.seq_len + self.prompt_len)
        if isinstance(self.train, TrainConfig) and self.train.loss_on != "all":
            raise ValueError(
                f"train.loss_on={self.train.loss_on!r}; expected 'all' (the feed-forward layer "
                "learns the global bigrams only from the global positions)"
            )
        super().__post_init__()


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def _rate(values: pd.Series) -> float | None:
    return float(values.mean()) if len(values) else None


def _select(frame: pd.DataFrame, relation: str, counts: Any, placements: Any) -> pd.DataFrame:
    pairs = list(zip(frame["n"], frame["m"], strict=True))
    keep = pd.Series([(n, m) in counts for n, m in pairs], index=frame.index, dtype=bool)
    return frame[keep & (frame["relation"] == relation) & frame["placement"].isin(placements)]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _summary(frame: pd.DataFrame) -> dict[str, Any]:
    from tlassoc.theory import summarize

    if len(frame) < 2:
        return {"n": int(len(frame)), "agreement": None, "correlation": None}
    s = summarize(frame)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()}


def _families(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for (placement, relation, n, m), grp in frame.groupby(["placement", "relation", "n", "m"]):
        rows.append(
            {
                "placement": placement,
                "relation": relation,
                "n": int(n),
                "m": int(m),
                "count": int(len(grp)),
                "win": _rate(grp["model_diff"] > 0),
                "predicted_win": _rate(grp["pred_diff"] > 0),
                "falls_back": _rate(grp["model_argmax"] == grp["top"]),
                "agreement": _rate(grp["agree"]),
            }
        )
    return rows


def hijack_numbers(frame: pd.DataFrame) -> dict[str, Any]:
    """The summary numbers of one model's :func:`tlassoc.theory.compare` frame (prompts already
    restricted to the scored queries): win and fall-back rates per placement, the share, repeat
    and distance effects, and the theory's agreement (module docstring).

    Example:
        >>> f = pd.DataFrame({"placement": ["near", "far"], "relation": ["disagree"] * 2,
        ...     "n": [1, 2], "m": [0, 1], "model_diff": [1.0, -1.0], "pred_diff": [0.5, -0.5],
        ...     "model_argmax": [3, 4], "top": [4, 4], "agree": [True, True]})
        >>> hijack_numbers(f)["context_wins"]["within"]
        0.5
    """
    out: dict[str, Any] = {"n_prompts": int(len(frame))}
    groups = {"within": WITHIN, "near": ("near",), "far": ("far",), "beyond": ("beyond",)}
    wins, pred, back = {}, {}, {}
    for name, placements in groups.items():
        sel = _select(frame, "disagree", MAJORITY, placements)
        wins[name] = _rate(sel["model_diff"] > 0)
        pred[name] = _rate(sel["pred_diff"] > 0)
        back[name] = _rate(sel["model_argmax"] == sel["top"])
    out["context_wins"], out["predicted_wins"], out["falls_back"] = wins, pred, back
    share = {}
    for key, counts in (("two_thirds", ((2, 1),)), ("one_third", ((1, 2),))):
        share[key] = _rate(_select(frame, "disagree", counts, WITHIN)["model_diff"] > 0)
    out["share"] = share
    out["share_effect"] = _diff(share["two_thirds"], share["one_third"])
    out["repeats"] = {
        str(n): _rate(_select(frame, "disagree", ((n, 0),), WITHIN)["model_diff"] > 0)
        for n in (1, 2, 3)
    }
    out["distance_effect"] = _diff(wins["near"], wins["far"])
    out["beyond_drop"] = _diff(wins["within"], wins["beyond"])
    within = frame[frame["placement"].isin(WITHIN)]
    out["theory"] = {
        "within": _summary(within),
        "beyond": _summary(frame[frame["placement"] == "beyond"]),
    }
    out["families"] = _families(frame)
    return out


def make_prompts(config: KnowledgeHijackConfig, seed: int) -> list[Any]:
    """The designed prompts of one seed: ``n_prompts`` of length ``prompt_len`` near the end or
    the start, or of length ``T_train + prompt_len`` with the pairs beyond ``T_train``."""
    from tlassoc.data import BigramModel
    from tlassoc.theory import designed_prompts

    return designed_prompts(
        BigramModel.tiny_shakespeare(),
        n_prompts=config.n_prompts,
        seq_len=config.prompt_len,
        train_len=config.task.seq_len,
        seed=seed,
    )


@torch.no_grad()
def copy_through_ffn(model: Any, **kwargs: Any) -> Any:
    """The theory's memories with the copy path read *through* the last feed-forward layer
    (a diagnostic of ours, not a claim): row ``k`` of ``A`` is ``(o_k + FFN(o_k) - FFN(0))
    W_U`` with ``o_k = w_E(k) W_V W_O`` of the last layer, instead of ``o_k W_U`` alone;
    ``B`` as in :meth:`tlassoc.theory.TheoryParams.from_model`. For a linear feed-forward layer
    this is exactly what the induction head's output adds to the logits.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> m = AssocTransformer(presets.rpe(d_model=16, n_ctx=16, ffn_type="linear"))
        >>> copy_through_ffn(m).copy.shape
        torch.Size([65, 65])
    """
    from tlassoc.heads.adapter import head_weights
    from tlassoc.theory import TheoryParams

    base = TheoryParams.from_model(model, **kwargs)
    w = head_weights(model)
    last = w.n_layers - 1
    out = w.ov_out(last).float()
    ffn = w.ffn[last] if last < len(w.ffn) else None
    if ffn is not None:
        out = out + ffn(out).float() - ffn(torch.zeros_like(out)).float()
    return TheoryParams((out @ w.W_U.float()).cpu(), base.bigram, **kwargs)


def _ffn_copy_numbers(frame: pd.DataFrame) -> dict[str, Any]:
    within = frame[frame["placement"].isin(WITHIN)]
    sel = _select(frame, "disagree", MAJORITY, WITHIN)
    return {
        "within": _summary(within),
        "beyond": _summary(frame[frame["placement"] == "beyond"]),
        "predicted_wins_within": _rate(sel["pred_diff"] > 0),
    }


def evaluate_model(
    model: Any,
    encoding: str,
    config: KnowledgeHijackConfig,
    pool: list[int],
    seed: int,
    prompts: list[Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Designed prompts on one trained model: the numbers of :func:`hijack_numbers` on the scored
    queries (``pool``), plus the win rates over all and over the unscored queries.

    Args:
        model: The trained model.
        encoding: Its ``positional_embedding_type`` (``standard``: the theory drops keys past
            ``T_train``).
        config: The experiment's settings.
        pool: The scored query tokens.
        seed: Seed of the prompts (used when ``prompts`` is not given).
        prompts: The prompts (default :func:`make_prompts` with ``seed``).

    Returns:
        ``(numbers, frame)``: the numbers and the full :func:`tlassoc.theory.compare` frame
        (with a ``scored`` column).
    """
    from tlassoc.theory import TheoryParams, compare

    T = config.task.seq_len
    prompts = prompts if prompts is not None else make_prompts(config, seed)
    params = TheoryParams.from_model(model, train_len=T if encoding == "standard" else None)
    frame = compare(model, prompts, params)
    frame["scored"] = frame["a"].isin(pool)
    numbers = hijack_numbers(frame[frame["scored"]])
    scored = [p for p, keep in zip(prompts, frame["scored"], strict=True) if keep]
    if scored:
        ffn_params = copy_through_ffn(model, train_len=params.train_len)
        numbers["theory_ffn_copy"] = _ffn_copy_numbers(compare(model, scored, ffn_params))
    for key, part in (("all_queries", frame), ("unscored_queries", frame[~frame["scored"]])):
        sel = _select(part, "disagree", MAJORITY, WITHIN)
        numbers[key] = {"n_prompts": int(len(part)), "context_wins": _rate(sel["model_diff"] > 0)}
    return numbers, frame


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


class KnowledgeHijackExperiment(Experiment):
    """In-context against global knowledge on designed prompts; APE's oversight past T_train."""

    name = "knowledge_hijack"
    description = "designed prompts: when in-context pairs beat the global bigram, vs theory"
    config_class = KnowledgeHijackConfig

    def quick_config(self) -> KnowledgeHijackConfig:
        """Small setting for tests (d 32, 60 steps, 2 seeds, 400 prompts)."""
        return KnowledgeHijackConfig().override(QUICK)

    def measure(self, config: KnowledgeHijackConfig, progress: bool = True) -> Result:
        _kit.check_config(config, KnowledgeHijackConfig)
        from tlassoc.memory.probes import probe_evaluator

        t0 = time.perf_counter()
        task = make_task(config.task, batch_size=config.train.batch_size)
        pool = _kit.trained_queries(task, config.min_trigger_rate)
        prompts = functools.cache(lambda seed: make_prompts(config, seed + 1000))

        def run(enc: str, seed: int) -> tuple[Any, dict[str, Any], pd.DataFrame]:
            seed_prompts = prompts(seed)
            model, rec = _kit.train_one(
                config, enc, seed, task, progress=progress, evaluators=[probe_evaluator(task)]
            )
            numbers, frame = evaluate_model(model, enc, config, pool, seed + 1000, seed_prompts)
            return model, {**numbers, **rec}, frame

        runs = _kit.run_grid(
            config.seeds, config.encodings, run, lambda _: {"scored_queries": pool}
        )
        artifacts = {"models": runs.models, "frames": runs.extras}
        return _kit.make_result(self.name, config, runs.per_seed, t0, artifacts)

    def claims(self, config: KnowledgeHijackConfig) -> list[Claim]:
        """Wang & Sato's qualitative statements on designed prompts, as thresholds of ours (the
        papers give no numbers; see each claim's meaning)."""
        out = []
        for enc in config.encodings:
            if enc not in ("relative", "standard"):
                continue
            lab = _kit.label(enc).lower()
            out += [
                Claim(f"{lab}_context_wins", f"{enc}.context_wins.within", ">=", 0.5,
                      "Inside T_train, an in-context pair that disagrees with the global top "
                      "bigram wins (its logit is above the top bigram's) in at least half of the "
                      "prompts where it is the in-context majority: context can override "
                      "global knowledge (threshold ours: a majority)."),
                Claim(f"{lab}_theory_correlation", f"{enc}.theory.within.correlation", ">=", 0.5,
                      "The theory's logit differences, read off the model's own memories, "
                      "correlate with the model's (Pearson r >= 0.5 inside T_train; threshold "
                      "ours)."),
                Claim(f"{lab}_theory_agreement", f"{enc}.theory.within.agreement", ">=", 0.5,
                      "The theory's argmax equals the model's in at least half of the prompts "
                      "inside T_train (threshold ours; chance is about 1/65)."),
                Claim(f"{lab}_share_effect", f"{enc}.share_effect", ">=", 0.1,
                      "A larger in-context share helps: b1 wins more often with share 2/3 than "
                      "with 1/3 (difference >= 0.1, about one standard error with the ~55 prompts "
                      "per family; threshold ours)."),
                Claim(f"{lab}_distance", f"{enc}.distance_effect", "abs<=", 0.15,
                      "Distance does not enter the theory: the win rate with the pairs near the "
                      "end and near the start differ by at most 0.15 (about two standard errors; "
                      "threshold ours)."),
            ]  # fmt: skip
        if "relative" in config.encodings:
            out.append(
                Claim("rpe_beyond", "relative.beyond_drop", "abs<=", 0.15,
                      "RPE keeps the in-context answer when all evidence lies beyond T_train "
                      "(win rate within 0.15 of inside; threshold ours).")
            )  # fmt: skip
        if "standard" in config.encodings:
            out += [
                Claim("ape_oversight", "standard.beyond_drop", ">=", 0.3,
                      "APE overlooks evidence beyond T_train: its win rate drops by at least "
                      "0.3 (the drop threshold of the length-generalisation experiment)."),
                Claim("ape_falls_back", "standard.falls_back.beyond", ">=", 0.5,
                      "Beyond T_train APE falls back to the global bigram: its argmax is the "
                      "top bigram in at least half of the prompts (threshold ours)."),
            ]  # fmt: skip
        return out

    def report(self, result: Result) -> Report:
        from tlassoc.experiments._hijack_report import build_report

        return build_report(self, result)


__all__ = [
    "KnowledgeHijackConfig",
    "KnowledgeHijackExperiment",
    "copy_through_ffn",
    "evaluate_model",
    "hijack_model",
    "make_prompts",
    "hijack_numbers",
    "hijack_task",
    "hijack_train",
]
