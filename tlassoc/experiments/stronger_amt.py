"""The "stronger" associative-memory transformer fitted to a trained model (Wang & Sato).

The associative-memory transformer (AMT) predicts the logit of candidate ``j`` after a prompt
ending in ``a`` as the in-context share of ``j`` among the continuations of ``a`` plus the global
bigram memory: ``ξ(j) = share_a(j) + π_b(j|a)``. The stronger AMT weights the two terms,
``ξ(j) = α share_a(j) + β_aj``. This experiment trains the model of the knowledge-hijack
experiment (linear feed-forward memory, loss on all positions; per encoding and seed), runs it on
designed prompts inside ``T_train`` (queries that are frequent triggers, as there), and fits to
its last-position logits, on one half of the prompts:

* ``unweighted``: ``c · (share + π_b)``, one overall scale ``c`` (α = β);
* ``scalar``: ``α share + β π_b`` (two numbers);
* ``weighted``: ``α share + β_aj`` with a free ``β_aj`` for every query ``a`` and candidate ``j``
  (the stronger AMT);
* ``from_weights``: no fit, the theory with both memories read off the model's weights
  (:meth:`tlassoc.theory.TheoryParams.from_model`);
* ``from_weights_ffn_copy``: the same with the copy path read through the feed-forward layer
  (:func:`tlassoc.experiments.knowledge_hijack.copy_through_ffn`, a diagnostic).

Logits and predictions are centred over the vocabulary per prompt (a softmax does not see a
shift). The fits are ordinary least squares in closed form [ours]: for ``weighted``, ``β_a·`` is
the mean over the fit prompts with query ``a`` of ``logits - α share`` and ``α`` the regression
of the within-query deviations of the logits on those of the shares. On the other half of the
prompts it reports the variance explained (R²) of all centred logits and of the contrast
``logit(x) - logit(y)`` of :func:`tlassoc.theory.compare` (``x = b1``, ``y`` the global top
bigram or ``b2``).

Example:
    >>> cfg = StrongerAMTConfig()
    >>> cfg.encodings, cfg.seeds, cfg.test_fraction
    (('relative',), (0, 1, 2), 0.5)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc.config import RunConfig
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig, check_int
from tlassoc.data import make_task
from tlassoc.experiments import _kit
from tlassoc.experiments.framework import Claim, Experiment, Report, Result
from tlassoc.experiments.knowledge_hijack import (
    QUICK,
    copy_through_ffn,
    hijack_model,
    hijack_task,
    hijack_train,
)

#: The fitted forms, then the theory read off the weights without a fit, in report order.
FITS = ("unweighted", "scalar", "weighted", "from_weights", "from_weights_ffn_copy")


@dataclass
class StrongerAMTConfig(RunConfig):
    """The stronger-AMT fit: the knowledge-hijack run plus the prompt and split settings.

    Each seed ``s`` trains every encoding with ``model.seed = train.seed = s``, draws its prompts
    with seed ``s + 1000`` and splits them with seed ``s + 2000``. ``model.n_ctx`` is derived:
    ``max(T_train, prompt_len)``.

    Args:
        model: The model (with a feed-forward layer, the global bigram memory).
        train: How each model is trained (loss on all positions).
        task: The trigger task; ``task.seq_len`` is ``T_train``.
        encodings: Positional encodings fitted (``positional_embedding_type`` values).
        seeds: Seeds; every claim must hold for each.
        n_prompts: Designed prompts drawn per model, before keeping the trained queries.
        prompt_len: Length of the prompts (all inside ``T_train``).
        min_trigger_rate: A query token is kept when it is a trigger in at least this fraction
            of training sequences.
        test_fraction: Fraction of the kept prompts held out for the R² (the rest is fitted).
    """

    model: AssocConfig = field(default_factory=hijack_model)
    train: TrainConfig = field(default_factory=hijack_train)
    task: TaskConfig = field(default_factory=hijack_task)
    encodings: tuple[str, ...] = ("relative",)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_prompts: int = 6000
    prompt_len: int = 48
    min_trigger_rate: float = 0.25
    test_fraction: float = 0.5

    def __post_init__(self) -> None:
        _kit.check_runs(self.encodings, self.seeds)
        check_int("n_prompts", self.n_prompts, minimum=16)
        check_int("prompt_len", self.prompt_len, minimum=16)
        for name in ("min_trigger_rate", "test_fraction"):
            setattr(self, name, _kit.check_number(name, getattr(self, name)))
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction={self.test_fraction!r}; expected 0 < x < 1")
        if isinstance(self.model, AssocConfig) and isinstance(self.task, TaskConfig):
            _kit.check_ffn(self.model)
            self.model = _kit.with_n_ctx(self.model, max(self.task.seq_len, self.prompt_len))
        super().__post_init__()


# ------------------------------------------------------------------------------------------------
# The fits
# ------------------------------------------------------------------------------------------------


def _center(x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True)


def _r2(y: Tensor, pred: Tensor) -> float | None:
    total = float(((y - y.mean()) ** 2).sum())
    return None if total == 0 else 1.0 - float(((y - pred) ** 2).sum()) / total


def _lstsq(y: Tensor, *features: Tensor) -> list[float]:
    X = torch.stack([f.flatten() for f in features], 1).double()
    sol = torch.linalg.lstsq(X, y.flatten().double().unsqueeze(1)).solution
    return [float(v) for v in sol.flatten()]


def fit_weighted(
    logits: Float[Tensor, "prompt vocab"],
    share: Float[Tensor, "prompt vocab"],
    queries: Int[Tensor, " prompt"],
    d_vocab: int,
) -> tuple[float, Tensor, Tensor]:
    """Least-squares ``α`` and ``β_aj`` of ``logits ≈ α share + β[a]`` (all inputs centred).

    Returns:
        ``(alpha, beta [d_vocab, d_vocab], fitted [d_vocab] bool: rows with a fit prompt)``.

    Example:
        >>> share = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> beta = torch.tensor([[0.5, -0.5], [0.0, 0.0]])
        >>> q = torch.tensor([0, 0, 1])
        >>> alpha, b, ok = fit_weighted(2 * share + beta[q], share, q, 2)
        >>> round(alpha, 6), ok.tolist()
        (2.0, [True, True])
    """
    kw = {"dtype": logits.dtype}
    counts = torch.zeros(d_vocab, **kw).index_add_(0, queries, torch.ones(len(queries), **kw))
    fitted = counts > 0
    denom = counts.clamp(min=1)[:, None]
    mean_l = torch.zeros(d_vocab, logits.shape[1], **kw).index_add_(0, queries, logits) / denom
    mean_s = torch.zeros(d_vocab, share.shape[1], **kw).index_add_(0, queries, share.to(**kw))
    mean_s = mean_s / denom
    share = share.to(**kw)
    dev_l, dev_s = logits - mean_l[queries], share - mean_s[queries]
    var = float((dev_s**2).sum())
    alpha = float((dev_l * dev_s).sum()) / var if var > 0 else 0.0
    return alpha, mean_l - alpha * mean_s, fitted


def amt_fits(
    logits: Float[Tensor, "prompt vocab"],
    share: Float[Tensor, "prompt vocab"],
    bigram: Float[Tensor, "prompt vocab"],
    theories: dict[str, Float[Tensor, "prompt vocab"]],
    queries: Int[Tensor, " prompt"],
    contrast: Int[Tensor, "prompt 2"],
    test: Tensor,
) -> dict[str, Any]:
    """Fit the AMT forms on the prompts outside ``test`` and score them on ``test``.

    Args:
        logits: The model's last-position logits.
        share: In-context share ``share_a(j)`` per prompt.
        bigram: ``π_b(j | a)`` per prompt.
        theories: Name -> the theory's ``ξ`` with memories read off the weights (scored as they
            are, not fitted).
        queries: The query token ``a`` of each prompt.
        contrast: ``(x, y)`` per prompt (the contrast of :func:`tlassoc.theory.compare`).
        test: Boolean mask of the held-out prompts.

    Returns:
        Per form (:data:`FITS`): its parameters, ``r2_logits`` and ``r2_contrast`` on the
        held-out prompts; plus ``gain_logits`` / ``gain_contrast`` (weighted minus unweighted)
        and the held-out contrasts for figures (``contrast_model`` and ``contrast_<form>``).
    """
    L, S, P = (_center(t.double()) for t in (logits, share, bigram))
    fit = ~test
    d_vocab = L.shape[1]
    (c,) = _lstsq(L[fit], S[fit] + P[fit])
    a_s, b_s = _lstsq(L[fit], S[fit], P[fit])
    alpha, beta, fitted = fit_weighted(L[fit], S[fit], queries[fit], d_vocab)
    q = queries[test]
    weighted = alpha * S[test] + beta[q]
    fallback = ~fitted[q]
    weighted[fallback] = a_s * S[test][fallback] + b_s * P[test][fallback]
    preds = {
        "unweighted": c * (S[test] + P[test]),
        "scalar": a_s * S[test] + b_s * P[test],
        "weighted": weighted,
        **{name: _center(x.double())[test] for name, x in theories.items()},
    }
    rows = torch.arange(int(test.sum()))
    xy = contrast[test]

    def diff(t: Tensor) -> Tensor:
        return t[rows, xy[:, 0]] - t[rows, xy[:, 1]]

    out: dict[str, Any] = {"n_fit": int(fit.sum()), "n_test": int(test.sum())}
    out["contrast_model"] = diff(L[test]).tolist()
    for name, pred in preds.items():
        out[name] = {"r2_logits": _r2(L[test], pred), "r2_contrast": _r2(diff(L[test]), diff(pred))}
        out[f"contrast_{name}"] = diff(pred).tolist()
    out["unweighted"]["scale"] = c
    out["scalar"].update(alpha=a_s, beta=b_s)
    out["weighted"].update(alpha=alpha, queries_fitted=int(fitted.sum()),
                           test_prompts_without_fit=int(fallback.sum()))  # fmt: skip
    out["beta"] = beta[fitted]
    out["beta_rows"] = fitted.nonzero().flatten()
    for key in ("logits", "contrast"):
        w, u = out["weighted"][f"r2_{key}"], out["unweighted"][f"r2_{key}"]
        out[f"gain_{key}"] = None if w is None or u is None else w - u
    return out


def _beta_vs_bigram(beta: Tensor, rows: Tensor, conditional: Tensor) -> dict[str, Any]:
    """Correlation of the fitted ``β_aj`` with ``π_b(j|a)`` and ``log π_b(j|a)`` (pairs seen in
    the corpus)."""
    p = conditional[rows].double()
    seen = p > 0
    b = beta.double()[seen]

    def corr(x: Tensor) -> float | None:
        if len(x) < 3 or float(x.std()) == 0 or float(b.std()) == 0:
            return None
        return float(torch.corrcoef(torch.stack([b, x]))[0, 1])

    return {"corr_bigram": corr(p[seen]), "corr_log_bigram": corr(p[seen].log())}


@torch.no_grad()
def fit_model(
    model: Any, config: StrongerAMTConfig, pool: list[int], seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Designed prompts inside ``T_train`` on one model, and the four AMT forms fitted to it.

    Returns:
        ``(numbers, extras)``: JSON-able numbers, and the fitted ``β`` rows and held-out
        contrasts for the figures.
    """
    from tlassoc.data import BigramModel
    from tlassoc.theory import TheoryParams, designed_prompts, predict_logits

    bigram = BigramModel.tiny_shakespeare()
    prompts = [
        p
        for p in designed_prompts(
            bigram, n_prompts=config.n_prompts, seq_len=config.prompt_len, seed=seed + 1000
        )
        if p.a in pool
    ]
    if len(prompts) < 4:
        raise ValueError(
            f"only {len(prompts)} designed prompts have a trained query; expected at least 4 "
            "(raise n_prompts or lower min_trigger_rate)"
        )
    tokens = torch.stack([p.tokens for p in prompts])
    queries = torch.tensor([p.a for p in prompts])
    V = model.cfg.d_vocab
    logits = model(tokens.to(next(model.parameters()).device))[:, -1].float().cpu()
    share = predict_logits(tokens, TheoryParams(torch.eye(V), torch.zeros(V, V)))
    pi = bigram.conditional[queries]
    theories = {
        "from_weights": predict_logits(tokens, TheoryParams.from_model(model)),
        "from_weights_ffn_copy": predict_logits(tokens, copy_through_ffn(model)),
    }
    contrast = torch.tensor([p.contrast for p in prompts])
    gen = torch.Generator().manual_seed(seed + 2000)
    n_test = max(1, min(len(prompts) - 1, round(config.test_fraction * len(prompts))))
    test = torch.zeros(len(prompts), dtype=torch.bool)
    test[torch.randperm(len(prompts), generator=gen)[:n_test]] = True
    fits = amt_fits(logits, share, pi, theories, queries, contrast, test)
    extras = {
        k: fits.pop(k) for k in list(fits) if k.startswith("contrast") or k.startswith("beta")
    }
    fits["n_prompts"] = len(prompts)
    fits["weighted"].update(_beta_vs_bigram(extras["beta"], extras["beta_rows"],
                                            bigram.conditional))  # fmt: skip
    return fits, extras


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------


class StrongerAMTExperiment(Experiment):
    """How much of a trained model's logits the weighted AMT explains, against the plain one."""

    name = "stronger_amt"
    description = "fit the weighted AMT (α, β_ij) to a trained model: R² against the unweighted"
    config_class = StrongerAMTConfig

    def quick_config(self) -> StrongerAMTConfig:
        """Small setting for tests (d 32, 60 steps, 2 seeds, 400 prompts)."""
        return StrongerAMTConfig().override(QUICK)

    def measure(self, config: StrongerAMTConfig, progress: bool = True) -> Result:
        _kit.check_config(config, StrongerAMTConfig)
        t0 = time.perf_counter()
        task = make_task(config.task, batch_size=config.train.batch_size)
        pool = _kit.trained_queries(task, config.min_trigger_rate)

        def run(enc: str, seed: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
            model, rec = _kit.train_one(config, enc, seed, task, progress=progress)
            fits, extra = fit_model(model, config, pool, seed)
            return model, {**fits, **rec}, extra

        runs = _kit.run_grid(
            config.seeds, config.encodings, run, lambda _: {"scored_queries": pool}
        )
        artifacts = {"models": runs.models, "fits": runs.extras}
        return _kit.make_result(self.name, config, runs.per_seed, t0, artifacts)

    def claims(self, config: StrongerAMTConfig) -> list[Claim]:
        """The stronger AMT describes a trained model better than the plain one (Wang & Sato
        state it qualitatively; the thresholds are ours)."""
        out = []
        for enc in config.encodings:
            lab = _kit.label(enc).lower()
            out += [
                Claim(f"{lab}_weighted_explains", f"{enc}.weighted.r2_logits", ">=", 0.8,
                      "The weighted AMT explains at least 80 % of the variance of the held-out "
                      "centred logits (threshold ours)."),
                Claim(f"{lab}_weighted_beats_unweighted", f"{enc}.gain_logits", ">=", 0.1,
                      "Weighting the two memories explains at least 0.1 more of that variance "
                      "than the unweighted AMT with its best overall scale (threshold ours)."),
                Claim(f"{lab}_weighted_contrast", f"{enc}.weighted.r2_contrast", ">=", 0.5,
                      "The weighted AMT explains at least half of the variance of the held-out "
                      "decision contrasts logit(b1) - logit(y) (threshold ours)."),
                Claim(f"{lab}_alpha_positive", f"{enc}.weighted.alpha", ">", 0.0,
                      "The fitted in-context strength α is positive: the copy path raises the "
                      "logit of what the context says."),
            ]  # fmt: skip
        return out

    def report(self, result: Result) -> Report:
        from tlassoc.experiments._amt_report import build_report

        return build_report(self, result)


__all__ = [
    "FITS",
    "StrongerAMTConfig",
    "StrongerAMTExperiment",
    "amt_fits",
    "fit_model",
    "fit_weighted",
]
