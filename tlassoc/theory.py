"""Predicted logits of the associative-memory transformer on designed prompts (see
docs/method.md, Theory on designed prompts).

For a prompt ending in token ``a``, let ``S_a`` be the positions right after earlier
occurrences of ``a`` (``s`` with ``z_{s-1} = a``, ``s <= t``). The induction head attends
uniformly over ``S_a`` and copies ``z_s``; the feed-forward memory adds the global bigram of
``a``. The predicted logit of candidate ``j`` is

    ξ(j) = mean_{s ∈ S_a} A[z_s, j] + B[a, j]

which for the ideal memories (``A = α I``, ``B = β π_b``) is Wang & Sato's
``α |{s ∈ S_a : z_s = j}| / |S_a| + β π_b(j|a)``. [ours] refinements, each switchable:

* ``standard`` positions: a key ``s >= train_len`` has no working previous-token head, so it
  is dropped from ``S_a`` (the model falls back to the bigram when all evidence is late).
* Position 0 attends only to itself, so its key looks like "after ``z_0``": when ``z_0 = a`` it
  joins ``S_a`` and copies ``a`` (``first_token=True``).
* With ``S_a`` empty the induction head spreads over all keys: ``ξ`` uses the mean of
  ``A[z_s]`` over every ``s <= t`` (``empty="uniform"``) or nothing (``empty="zero"``).

:func:`designed_prompts` builds prompt families and :func:`compare` puts the theory next to a
model.

Example:
    >>> import torch
    >>> from tlassoc.data import BigramModel
    >>> params = TheoryParams.ideal(BigramModel.tiny_shakespeare(), alpha=10.0, beta=10.0)
    >>> predict_logits(torch.tensor([5, 1, 2, 1, 2, 1, 3, 1]), params).shape
    torch.Size([1, 65])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc.heads.adapter import Model, check_model, check_tokens, head_weights, model_device

__all__ = [
    "DesignedPrompt",
    "TheoryParams",
    "compare",
    "designed_prompts",
    "predict_logits",
    "summarize",
]


@dataclass
class TheoryParams:
    """The two memories the theory reads.

    Attributes:
        copy: ``A [d_vocab, d_vocab]``: logits written when the induction head copies token
            ``k`` (row ``k``).
        bigram: ``B [d_vocab, d_vocab]``: logits from the current token ``a`` alone (row ``a``).
        train_len: training length with ``standard`` positions (keys at ``s >= train_len`` are
            ignored); ``None``: none.
        first_token: count position 0 as "after ``z_0``".
        empty: ``"uniform"`` or ``"zero"`` (module docs).
    """

    copy: Tensor
    bigram: Tensor
    train_len: int | None = None
    first_token: bool = True
    empty: str = "uniform"

    def __post_init__(self) -> None:
        v = self.copy.shape[0]
        for name in ("copy", "bigram"):
            t = getattr(self, name)
            if t.ndim != 2 or t.shape != (v, v):
                raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({v}, {v})")
        if self.empty not in ("uniform", "zero"):
            raise ValueError(f"empty={self.empty!r}; expected 'uniform' or 'zero'")

    @property
    def d_vocab(self) -> int:
        return self.copy.shape[0]

    @classmethod
    def ideal(
        cls, bigram: Any, alpha: float = 10.0, beta: float = 10.0, **kwargs: Any
    ) -> TheoryParams:
        """``A = α I``, ``B = β π_b`` (the ideal memories of :func:`tlassoc.memory.build_ideal`).

        Args:
            bigram: a ``BigramModel`` or a ``[d_vocab, d_vocab]`` matrix ``β_ij``.
            alpha: in-context strength.
            beta: bigram strength.
            **kwargs: ``train_len``, ``first_token``, ``empty``.
        """
        from tlassoc.memory.ideal import _bigram_matrix

        mat = _bigram_matrix(
            bigram, bigram.d_vocab if hasattr(bigram, "d_vocab") else bigram.shape[0]
        )
        return cls(alpha * torch.eye(mat.shape[0]), beta * mat.float(), **kwargs)

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: Model, **kwargs: Any) -> TheoryParams:
        """Read ``A`` and ``B`` off a model's weights (any of the three kinds).

        ``A`` is the last layer's full OV circuit on the token embeddings,
        ``w_E(k) W_V W_O W_U`` (summed over heads); ``B`` is everything that depends on the
        current token alone: ``(w_E(a) + FFN(w_E(a))) W_U`` (the direct path and the last
        layer's feed-forward memory). Needs a model without layer norm.

        Example:
            >>> from tlassoc import AssocTransformer, presets
            >>> p = TheoryParams.from_model(AssocTransformer(presets.rpe(d_model=32)))
            >>> p.copy.shape
            torch.Size([65, 65])
        """
        w = head_weights(model)
        if w.normalization_type is not None:
            raise ValueError(
                f"normalization_type={w.normalization_type!r}; TheoryParams.from_model expected "
                "a model without layer norm (None)"
            )
        last = w.n_layers - 1
        W_E, W_U = w.W_E.float(), w.W_U.float()
        copy = w.full_ov(last).float()
        resid = W_E.clone()
        ffn = w.ffn[last] if last < len(w.ffn) else None
        if ffn is not None:
            resid = resid + ffn(w.W_E).float()
        return cls(copy.cpu(), (resid @ W_U).cpu(), **kwargs)


def _check_tokens(tokens: Any, d_vocab: int) -> Tensor:
    return check_tokens(tokens, d_vocab, "cpu", what="prompt token")


def predict_logits(
    tokens: Int[Tensor, "batch pos"] | Int[Tensor, " pos"], params: TheoryParams
) -> Float[Tensor, "batch d_vocab"]:
    """Predicted logits ``ξ`` at the last position of each prompt (module docs).

    Example:
        >>> p = TheoryParams(torch.eye(4), torch.zeros(4, 4))
        >>> predict_logits(torch.tensor([0, 1, 2, 1, 3, 1]), p)  # after 1: 2 once, 3 once
        tensor([[0.0000, 0.0000, 0.5000, 0.5000]])
    """
    tokens = _check_tokens(tokens, params.d_vocab)
    batch, n = tokens.shape
    a = tokens[:, -1]
    after = torch.zeros(batch, n, dtype=torch.bool)
    after[:, 1:] = tokens[:, :-1] == a[:, None]
    if params.first_token:
        after[:, 0] = tokens[:, 0] == a
    if params.train_len is not None:
        after[:, params.train_len :] = False
    copies = params.copy.float()[tokens]  # [batch, pos, vocab]
    count = after.sum(1, keepdim=True)
    weights = after.float() / count.clamp(min=1)
    if params.empty == "uniform":
        weights = torch.where(count > 0, weights, torch.full_like(weights, 1.0 / n))
    xi = torch.einsum("bp,bpv->bv", weights, copies)
    return xi + params.bigram.float()[a]


# ------------------------------------------------------------------------------------------------
# designed prompts
# ------------------------------------------------------------------------------------------------


@dataclass
class DesignedPrompt:
    """One designed prompt: filler tokens, ``n`` pairs ``a b1`` and ``m`` pairs ``a b2``, last
    token ``a``.

    Attributes:
        tokens: ``[pos]`` token ids.
        a, b1, b2: the query token and the two in-context continuations.
        top: the global top bigram successor of ``a``.
        n, m: repeats of ``a b1`` and ``a b2``.
        relation: ``"agree"`` (``b1`` is the global top bigram) or ``"disagree"`` (``b1`` is not;
            ``b2`` is, when ``m > 0``).
        placement: ``"near"`` (pairs close to the end), ``"far"`` (close to the start) or
            ``"beyond"`` (all pairs at positions ``>= train_len``).
        beyond: whether the evidence lies beyond ``train_len``.
    """

    tokens: Tensor
    a: int
    b1: int
    b2: int
    top: int
    n: int
    m: int
    relation: str
    placement: str
    beyond: bool

    @property
    def contrast(self) -> tuple[int, int]:
        """``(x, y)`` whose logit difference is compared: ``x = b1`` and ``y`` the global top
        bigram, or ``b2`` when the top is ``b1``."""
        return self.b1, (self.b2 if self.top == self.b1 else self.top)

    def meta(self) -> dict[str, Any]:
        """Every field but the tokens (not copied), plus the prompt ``length``."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tokens"}
        d["length"] = int(self.tokens.numel())
        return d


COUNTS = ((1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (3, 1), (1, 3), (3, 0))


def designed_prompts(
    bigram: Any,
    *,
    n_prompts: int = 240,
    seq_len: int = 48,
    counts: tuple[tuple[int, int], ...] = COUNTS,
    train_len: int | None = None,
    seed: int = 0,
) -> list[DesignedPrompt]:
    """A balanced set of designed prompts (docs/method.md, Theory on designed prompts).

    Families cycle over ``counts`` (``(n, m)``), ``relation`` (agree/disagree) and placement
    (near/far; plus ``beyond`` when ``train_len`` is given, in prompts of length
    ``train_len + seq_len`` whose pairs all lie after ``train_len``). ``a`` is drawn among the
    tokens with at least three distinct successors whose top successor is not ``a`` itself;
    fillers are uniform over the tokens other than ``a``, ``b1``, ``b2`` (so ``S_a`` holds
    exactly the designed pairs), and the prompt never starts with ``a``.

    Args:
        bigram: a ``BigramModel`` (the global bigrams ``π_b``).
        n_prompts: number of prompts.
        seq_len: length of near/far prompts.
        counts: the ``(n, m)`` repeat counts.
        train_len: add ``beyond`` prompts past this training length.
        seed: seed (same seed, same prompts).

    Example:
        >>> from tlassoc.data import BigramModel
        >>> ps = designed_prompts(BigramModel.tiny_shakespeare(), n_prompts=4, seq_len=24)
        >>> len(ps), int(ps[0].tokens[-1]) == ps[0].a
        (4, True)
    """
    from tlassoc.data import BigramModel

    if not isinstance(bigram, BigramModel):
        raise ValueError(f"bigram=<{type(bigram).__name__}>; expected a BigramModel")
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts={n_prompts!r}; expected an integer >= 1")
    longest = max(2 * (n + m) + n + m for n, m in counts) + 3
    if seq_len < longest:
        raise ValueError(f"seq_len={seq_len} is too short for counts {counts}; need >= {longest}")
    if train_len is not None and (not isinstance(train_len, int) or train_len < 1):
        raise ValueError(f"train_len={train_len!r}; expected a positive integer")
    d = bigram.d_vocab
    counts_mat = bigram.bigram_counts
    cands = [
        i for i in range(d) if int((counts_mat[i] > 0).sum()) >= 3 and bigram.top_successor(i) != i
    ]
    if not cands:
        raise ValueError("no token has three distinct successors; cannot design prompts")
    placements = ["near", "far"] + (["beyond"] if train_len is not None else [])
    gen = torch.Generator().manual_seed(seed)

    def randint(hi: int) -> int:
        return int(torch.randint(hi, (1,), generator=gen))

    out: list[DesignedPrompt] = []
    for i in range(n_prompts):
        n, m = counts[i % len(counts)]
        relation = ("agree", "disagree")[(i // len(counts)) % 2]
        placement = placements[(i // (2 * len(counts))) % len(placements)]
        a = cands[randint(len(cands))]
        top = bigram.top_successor(a)
        others = [j for j in range(d) if j not in (a, top)]
        if relation == "agree":
            b1 = top
            b2 = others[randint(len(others))]
        else:
            b1 = others[randint(len(others))]
            rest = [j for j in others if j != b1]
            b2 = top if m > 0 else rest[randint(len(rest))]
        length = seq_len + (train_len if placement == "beyond" else 0)
        filler_ids = torch.tensor([j for j in range(d) if j not in (a, b1, b2)])
        seq = filler_ids[torch.randint(len(filler_ids), (length,), generator=gen)]
        outs = [b1] * n + [b2] * m
        outs = [outs[k] for k in torch.randperm(len(outs), generator=gen).tolist()]
        span = 3 * len(outs)  # "a b filler" per pair
        if placement == "far":
            start = 1
        elif placement == "near":
            start = length - 1 - span - 1
        else:
            start = train_len + 1 + randint(max(1, length - 2 - span - train_len - 1))
        for k, b in enumerate(outs):
            seq[start + 3 * k] = a
            seq[start + 3 * k + 1] = b
        seq[-1] = a
        beyond = placement == "beyond"
        out.append(DesignedPrompt(seq.clone(), a, b1, b2, top, n, m, relation, placement, beyond))
    return out


# ------------------------------------------------------------------------------------------------
# theory versus model
# ------------------------------------------------------------------------------------------------


def summarize(frame: pd.DataFrame) -> dict[str, float]:
    """Agreement of argmax choices and Pearson correlation of logit differences.

    Example:
        >>> f = pd.DataFrame({"agree": [True, False], "pred_diff": [1.0, 2.0],
        ...                   "model_diff": [1.5, 2.5]})
        >>> summarize(f)["agreement"], round(summarize(f)["correlation"], 3)
        (0.5, 1.0)
    """
    x = torch.tensor(frame["pred_diff"].to_numpy(), dtype=torch.float64)
    y = torch.tensor(frame["model_diff"].to_numpy(), dtype=torch.float64)
    if len(x) > 1 and float(x.std()) > 0 and float(y.std()) > 0:
        corr = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    else:
        corr = math.nan
    return {"n": int(len(frame)), "agreement": float(frame["agree"].mean()), "correlation": corr}


@torch.no_grad()
def compare(
    model: Model,
    prompts: list[DesignedPrompt],
    params: TheoryParams | None = None,
    *,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Predicted versus measured logits at the last position of each prompt.

    Args:
        model: any of the three model kinds.
        prompts: from :func:`designed_prompts` (or any :class:`DesignedPrompt` list).
        params: the theory's memories; default :meth:`TheoryParams.from_model`.
        batch_size: prompts per forward pass (prompts are grouped by length).

    Returns:
        One row per prompt: its metadata, ``x``/``y`` (contrast tokens), ``pred_diff`` and
        ``model_diff`` (``ξ(x) - ξ(y)`` and ``logit(x) - logit(y)``), ``pred_argmax``,
        ``model_argmax`` and ``agree``. ``frame.attrs["summary"]`` holds :func:`summarize`.

    Example:
        >>> from tlassoc.data import BigramModel
        >>> from tlassoc.memory import ideal_model
        >>> bg = BigramModel.tiny_shakespeare()
        >>> model = ideal_model("relative", d_model=128, n_ctx=64, bigram=bg)
        >>> frame = compare(model, designed_prompts(bg, n_prompts=16, seq_len=32),
        ...                 TheoryParams.ideal(bg))
        >>> frame.attrs["summary"]["agreement"] > 0.8
        True
    """
    check_model(model)
    if not prompts:
        raise ValueError("compare got no prompts")
    if params is None:
        params = TheoryParams.from_model(model)
    if params.d_vocab != model.cfg.d_vocab:
        raise ValueError(
            f"theory d_vocab {params.d_vocab} does not match the model's d_vocab "
            f"{model.cfg.d_vocab}"
        )
    for k, p in enumerate(prompts):
        if not isinstance(p, DesignedPrompt):
            raise ValueError(f"prompt {k} is a {type(p).__name__}; expected a DesignedPrompt")
        try:
            _check_tokens(p.tokens, model.cfg.d_vocab)
        except ValueError as err:
            raise ValueError(f"prompt {k}: {err}") from None
    was_training = model.training
    model.eval()
    try:
        measured: dict[int, Tensor] = {}
        by_len: dict[int, list[int]] = {}
        for k, p in enumerate(prompts):
            by_len.setdefault(int(p.tokens.numel()), []).append(k)
        for idx in by_len.values():
            for lo in range(0, len(idx), batch_size):
                chunk = idx[lo : lo + batch_size]
                toks = torch.stack([prompts[k].tokens for k in chunk]).to(model_device(model))
                logits = model(toks)[:, -1].float().cpu()
                for k, row in zip(chunk, logits, strict=True):
                    measured[k] = row
    finally:
        model.train(was_training)
    rows = []
    for k, p in enumerate(prompts):
        pred = predict_logits(p.tokens, params)[0]
        meas = measured[k]
        x, y = p.contrast
        rows.append(
            {
                **p.meta(),
                "x": x,
                "y": y,
                "pred_diff": float(pred[x] - pred[y]),
                "model_diff": float(meas[x] - meas[y]),
                "pred_argmax": int(pred.argmax()),
                "model_argmax": int(meas.argmax()),
            }
        )
    frame = pd.DataFrame(rows)
    frame["agree"] = frame["pred_argmax"] == frame["model_argmax"]
    frame.attrs["summary"] = summarize(frame)
    return frame
