"""Read a weight matrix (or a composed circuit) as an associative memory in chosen bases.

A memory ``W = Σ α_ij v_j u_i^T`` stores the pair ``u_i -> v_j`` with strength ``v_j^T W u_i``.
:func:`memory_table` expresses any matrix in an input basis (rows ``u_i``) and an output basis
(rows ``v_j``) and returns the labelled score table, the stored pairs ranked by strength, the
signal-to-cross-talk ratio and the recall (top-1 retrieval) of the expected pairs.

This module prints paper notation, so its matrices are in the papers' column convention
(``y = W x``; tlassoc's own row convention is stated in :mod:`tlassoc.heads.adapter`):
:func:`circuit` builds them from the weights, e.g. ``circuit(model, "W_K1 W_O0 W_V0")`` is
Bietti's ``W_K^2 W_O^1 W_V^1`` (digits are tlassoc's 0-based layer indices; the papers count
layers from 1). For attention, ``W_K{l}`` is the bilinear score matrix ``W_Q W_K^T`` (rows:
query, columns: key) — with an identity query, just ``W_K^T``. Any of the three model kinds
works (see docs/method.md, Associative memories).

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> from tlassoc.memory import build_ideal
    >>> model = build_ideal(AssocTransformer(presets.rpe(d_model=128, n_ctx=64)))
    >>> table = memory_table(model, "W_K1", basis(model, "tokens"), basis(model, "ov", layer=0),
    ...                      expected="identity", per="output")
    >>> table.recall > 0.9
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tlassoc.heads.adapter import HeadWeights, Model, check_head, check_layer, head_weights
from tlassoc.memory import probes

__all__ = [
    "BASIS_KINDS",
    "Basis",
    "MemoryTable",
    "basis",
    "circuit",
    "memory_report",
    "memory_table",
]

BASIS_KINDS = ("tokens", "positions", "relative", "unembed", "ov", "value")


@dataclass
class Basis:
    """Labelled embedding vectors (rows) in which a memory is read.

    Attributes:
        name: short name for tables and plots.
        vectors: ``[n, dim]``, one vector per row.
        labels: one label per vector.
    """

    name: str
    vectors: Float[Tensor, "n dim"]
    labels: list[str]

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(
                f"basis {self.name!r} has vectors of shape {tuple(self.vectors.shape)}; "
                "expected [n, dim]"
            )
        if len(self.labels) != self.vectors.shape[0]:
            raise ValueError(
                f"basis {self.name!r} has {self.vectors.shape[0]} vectors but "
                f"{len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        """Size of each vector."""
        return self.vectors.shape[1]


def _token_labels(model: Model | HeadWeights, d_vocab: int) -> list[str]:
    """One label per token id: the tokenizer's strings (escaped), else the ids."""
    tok = getattr(model, "tokenizer", None)
    if hasattr(tok, "id_to_str"):  # tlassoc's tokenizers
        return [repr(s)[1:-1] for s in tok.id_to_str(list(range(d_vocab)))]
    if hasattr(tok, "convert_ids_to_tokens"):  # Hugging Face's
        return [str(s) for s in tok.convert_ids_to_tokens(list(range(d_vocab)))]
    return [str(i) for i in range(d_vocab)]


@torch.no_grad()
def basis(
    model: Model | HeadWeights,
    kind: str,
    *,
    layer: int | None = None,
    head: int = 0,
    n: int | None = None,
) -> Basis:
    """A standard embedding basis of ``model``.

    Args:
        model: any of the three model kinds (or its ``HeadWeights``; token labels are then
            the ids).
        kind: ``"tokens"`` (``w_E(k)``), ``"positions"`` (``p_t``, ``standard`` positions),
            ``"relative"`` (``r_j``, ``relative`` positions, vector form), ``"unembed"``
            (``w_U(k)``, the columns of ``W_U``), ``"ov"`` (``W_O W_V w_E(k)``: what
            ``layer``'s head writes when it attends to token ``k``),
            ``"value"`` (``W_V w_E(k)``, ``d_head`` vectors: the input side of ``W_O``).
        layer: the layer for ``"ov"``/``"value"``.
        head: the head for ``"ov"``/``"value"``.
        n: keep only the first ``n`` vectors (e.g. the training positions).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> b = basis(AssocTransformer(presets.ape(d_model=32, n_ctx=16)), "positions", n=8)
        >>> len(b), b.labels[:2]
        (8, ['p0', 'p1'])
    """
    if kind not in BASIS_KINDS:
        raise ValueError(f"basis kind {kind!r}; expected one of {BASIS_KINDS}")
    w = head_weights(model)
    if kind in ("ov", "value"):
        if layer is None:
            raise ValueError(f"basis {kind!r} needs layer=")
        check_layer(layer, w.n_layers)
        check_head(head, w.n_heads)
    if kind == "positions" and w.W_pos is None:
        raise ValueError(
            f"basis 'positions' needs positional_embedding_type 'standard', the model has "
            f"{w.positional_embedding_type!r}"
        )
    if kind == "relative" and w.W_rel is None:
        raise ValueError(
            "basis 'relative' needs positional_embedding_type 'relative' with "
            f"relative_form 'vector', the model has {w.positional_embedding_type!r}"
        )
    labels = _token_labels(model, w.d_vocab)
    if kind == "tokens":
        b = Basis("tokens", w.W_E.float(), labels)
    elif kind == "unembed":
        b = Basis("unembed", w.W_U.float().T, labels)
    elif kind == "positions":
        P = w.W_pos.float()
        b = Basis("positions", P, [f"p{t}" for t in range(P.shape[0])])
    elif kind == "relative":
        R = w.W_rel.float()
        b = Basis("relative", R, [f"d{j}" for j in range(R.shape[0])])
    elif kind == "value":
        vals = w.W_E.float() @ w.W_V[layer, head].float()
        b = Basis(f"value{layer}", vals, [f"V{layer}({s})" for s in labels])
    else:
        ov = w.ov_out(layer, head).float()
        b = Basis(f"ov{layer}", ov, [f"OV{layer}({s})" for s in labels])
    if n is not None:
        if not 1 <= n <= len(b):
            raise ValueError(f"n={n}; expected 1 <= n <= {len(b)} ({b.name} has {len(b)} vectors)")
        b = Basis(b.name, b.vectors[:n], b.labels[:n])
    return b


_TERM = re.compile(r"^(W_[KQVOF])(\d+)$|^(W_[EU])$")


@torch.no_grad()
def _term(w: HeadWeights, term: str, head: int) -> Tensor:
    """One matrix of a circuit expression, in the papers' column convention."""
    m = _TERM.match(term)
    if m is None:
        raise ValueError(
            f"unknown matrix {term!r} in circuit; expected W_K<l>, W_Q<l>, W_V<l>, W_O<l>, "
            "W_F<l>, W_E or W_U (l: 0-based layer)"
        )
    if m.group(3):
        return (w.W_E if term == "W_E" else w.W_U).float().T
    name, layer = m.group(1), check_layer(int(m.group(2)), w.n_layers)
    if name == "W_K":
        return w.W_Q[layer, head].float() @ w.W_K[layer, head].float().T
    if name in ("W_Q", "W_V", "W_O"):
        return getattr(w, name)[layer, head].float().T
    ffn = w.ffn[layer] if layer < len(w.ffn) else None
    if ffn is None:
        raise ValueError(f"W_F{layer}: layer {layer} has no feed-forward layer")
    try:
        return ffn.matrix.float().T
    except ValueError as err:
        raise ValueError(f"W_F{layer}: {err}") from None


def circuit(model: Model | HeadWeights, expr: str, head: int = 0) -> Float[Tensor, "d_out d_in"]:
    """A product of weight matrices in the papers' column convention.

    Args:
        model: any of the three model kinds (or its ``HeadWeights``).
        expr: space-separated terms multiplied left to right, e.g. ``"W_K1 W_O0 W_V0"``.
        head: the head of every attention term.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.rpe(d_model=32, n_ctx=16))
        >>> circuit(model, "W_U W_O1 W_V1 W_E").shape  # the full OV circuit [vocab, vocab]
        torch.Size([65, 65])
    """
    if not isinstance(expr, str) or not expr.split():
        raise ValueError(f"circuit expression {expr!r} is empty")
    w = head_weights(model)
    check_head(head, w.n_heads)
    terms = expr.split()
    out = _term(w, terms[0], head)
    for prev, term in zip(terms, terms[1:], strict=False):
        nxt = _term(w, term, head)
        if out.shape[1] != nxt.shape[0]:
            raise ValueError(
                f"circuit {expr!r}: {prev} has input size {out.shape[1]} but {term} has output "
                f"size {nxt.shape[0]}"
            )
        out = out @ nxt
    return out


@dataclass
class MemoryTable:
    """A matrix read as an associative memory.

    Attributes:
        name: what was read (e.g. the circuit expression).
        scores: ``[n_out, n_in]``, ``scores[j, i] = v_j^T W u_i``.
        out_basis: the output basis (rows of ``scores``).
        in_basis: the input basis (columns of ``scores``).
        expected: ``[n_out, n_in]`` boolean mask of the pairs the memory should store (given, or
            the top output of each input when none was given).
        pairs: the ``top`` strongest entries, ranked: ``rank, input, output, strength, z``
            (strength over the cross-talk standard deviation) and ``expected``.
        signal_to_crosstalk: mean strength of the expected pairs / standard deviation of the other
            entries.
        recall: fraction of inputs (``per="input"``) or outputs (``per="output"``) with an
            expected pair whose top-scoring partner is an expected one (the papers' probes).
        per: which side ``recall`` runs over.
    """

    name: str
    scores: Tensor
    out_basis: Basis
    in_basis: Basis
    expected: Tensor
    pairs: pd.DataFrame
    signal_to_crosstalk: float
    recall: float
    per: str
    probes: dict[str, float] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The full score table, labelled (outputs as rows, inputs as columns)."""
        return pd.DataFrame(
            self.scores.numpy(), index=self.out_basis.labels, columns=self.in_basis.labels
        )

    def summary(self) -> dict[str, Any]:
        """One-row summary: name, bases, sizes, signal-to-cross-talk, recall, probes."""
        return {
            "memory": self.name,
            "output": self.out_basis.name,
            "input": self.in_basis.name,
            "n_out": len(self.out_basis),
            "n_in": len(self.in_basis),
            "signal_to_crosstalk": self.signal_to_crosstalk,
            "recall": self.recall,
            "recall_over": self.per,
            **self.probes,
        }


def _expected_mask(expected: Any, n_out: int, n_in: int, scores: Tensor) -> Tensor:
    if expected is None:
        mask = torch.zeros(n_out, n_in, dtype=torch.bool)
        mask[scores.argmax(0), torch.arange(n_in)] = True
        return mask
    if isinstance(expected, str):
        m = re.fullmatch(r"identity|shift(?::(-?\d+))?", expected)
        if m is None:
            raise ValueError(f"expected={expected!r}; use 'identity', 'shift:<k>', a mask or pairs")
        k = int(m.group(1) or 1) if expected.startswith("shift") else 0
        out_idx = torch.arange(n_out)[:, None]
        in_idx = torch.arange(n_in)[None, :]
        return in_idx == out_idx - k
    if isinstance(expected, Tensor) and expected.dtype == torch.bool:
        if tuple(expected.shape) != (n_out, n_in):
            raise ValueError(
                f"expected mask has shape {tuple(expected.shape)}; expected ({n_out}, {n_in})"
            )
        return expected.cpu()
    mask = torch.zeros(n_out, n_in, dtype=torch.bool)
    for pair in expected:
        j, i = (int(x) for x in pair)
        if not (0 <= j < n_out and 0 <= i < n_in):
            raise ValueError(f"expected pair {(j, i)} is outside the table ({n_out}, {n_in})")
        mask[j, i] = True
    return mask


@torch.no_grad()
def memory_table(
    model: Model | HeadWeights | None,
    matrix: str | Tensor,
    out_basis: Basis,
    in_basis: Basis,
    *,
    expected: Any = None,
    per: str = "input",
    top: int = 20,
    name: str | None = None,
) -> MemoryTable:
    """Express ``matrix`` in two bases and rank its stored pairs.

    Args:
        model: the model (used when ``matrix`` is a circuit expression; else may be ``None``).
        matrix: a circuit expression (:func:`circuit`) or a ``[d_out, d_in]`` tensor (column
            convention).
        out_basis: basis of the output side (query side of an attention score matrix).
        in_basis: basis of the input side (key side).
        expected: the pairs the memory should store: ``"identity"`` (output ``i`` for input
            ``i``), ``"shift:k"`` (output ``t`` for input ``t - k``, e.g. ``"shift:1"`` for the
            previous-token head on absolute positions), a boolean ``[n_out, n_in]`` mask, a list of
            ``(output, input)`` index pairs, or ``None`` (each input's top output).
        per: ``"input"``: recall = fraction of inputs whose top output is expected (``W_O``,
            ``W_F``); ``"output"``: fraction of outputs (queries) whose top input is expected
            (``W_K`` probes).
        top: number of ranked pairs to keep.
        name: label of the table (default: the expression).

    Returns:
        A :class:`MemoryTable`.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> model = AssocTransformer(presets.ape(d_model=32, n_ctx=16))
        >>> t = memory_table(model, "W_K0", basis(model, "positions"), basis(model, "positions"),
        ...                  expected="shift:1", per="output")
        >>> list(t.pairs.columns)
        ['rank', 'input', 'output', 'strength', 'z', 'expected']
    """
    if per not in ("input", "output"):
        raise ValueError(f"per={per!r}; expected 'input' or 'output'")
    if isinstance(matrix, str):
        label = matrix
        matrix = circuit(model, matrix)
    elif isinstance(matrix, Tensor):
        label = "matrix"
        if matrix.ndim != 2:
            raise ValueError(f"matrix has shape {tuple(matrix.shape)}; expected [d_out, d_in]")
        matrix = matrix.detach().float().cpu()
    else:
        raise ValueError(
            f"matrix=<{type(matrix).__name__}>; expected a circuit expression or a tensor"
        )
    for side, b, size in (
        ("output", out_basis, matrix.shape[0]),
        ("input", in_basis, matrix.shape[1]),
    ):
        if not isinstance(b, Basis):
            raise ValueError(f"{side}_basis=<{type(b).__name__}>; expected a Basis")
        if b.dim != size:
            raise ValueError(
                f"{side} basis {b.name!r} has vectors of size {b.dim}, but the matrix's {side} "
                f"side has size {size}"
            )
    scores = out_basis.vectors.float().cpu() @ matrix.cpu() @ in_basis.vectors.float().cpu().T
    n_out, n_in = scores.shape
    mask = _expected_mask(expected, n_out, n_in, scores)
    rest = scores[~mask]
    noise = float(rest.std()) if rest.numel() > 1 else float("nan")
    signal = float(scores[mask].mean()) if mask.any() else float("nan")
    if per == "input":
        has = mask.any(0)
        hit = mask[scores.argmax(0), torch.arange(n_in)]
    else:
        has = mask.any(1)
        hit = mask[torch.arange(n_out), scores.argmax(1)]
    recall = float(hit[has].float().mean()) if has.any() else float("nan")
    k = min(top, scores.numel())
    values, flat = scores.flatten().topk(k)
    rows, cols = flat // n_in, flat % n_in
    pairs = pd.DataFrame(
        {
            "rank": range(1, k + 1),
            "input": [in_basis.labels[i] for i in cols.tolist()],
            "output": [out_basis.labels[j] for j in rows.tolist()],
            "strength": values.tolist(),
            "z": (values / noise).tolist() if noise == noise and noise > 0 else [float("nan")] * k,
            "expected": mask[rows, cols].tolist(),
        }
    )
    return MemoryTable(
        name=name or label,
        scores=scores,
        out_basis=out_basis,
        in_basis=in_basis,
        expected=mask,
        pairs=pairs,
        signal_to_crosstalk=signal / noise if noise > 0 else float("nan"),
        recall=recall,
        per=per,
    )


def memory_report(
    model: Model,
    *,
    n_positions: int | None = None,
    triggers: Tensor | list[int] | None = None,
    bigram: Any = None,
    top: int = 20,
) -> dict[str, MemoryTable]:
    """The induction circuit's memories of a two-layer model, read in their natural bases.

    * ``"W_K0"``: previous-token head. ``standard`` positions: positions (queries) vs
      positions (keys), expected ``t -> t - 1``, over the first ``n_positions`` (default
      ``n_ctx``); ``relative`` positions (vector form): tokens vs relative distances, expected
      distance 1.
    * ``"W_K1 W_O0 W_V0"``: induction head, tokens vs layer-0 OV outputs, expected identity
      (restricted to ``triggers`` when given, as Bietti's probe).
    * ``"W_U W_O1"``: copy, unembedding vs layer-1 values, expected identity.
    * ``"W_U W_F1"``: the feed-forward memory (linear FFN only), unembedding vs tokens, each
      token's top output.

    ``recall`` of each table is its top-1 retrieval; ``probes`` holds the recall probes
    (docs/method.md, Recall probes) computed by :mod:`tlassoc.memory.probes` (``probe_wk1``,
    ``probe_wk2`` with ``triggers``, ``probe_wo2``, ``probe_wf`` with ``bigram``).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> from tlassoc.memory import build_ideal
        >>> report = memory_report(build_ideal(AssocTransformer(presets.rpe(d_model=128))))
        >>> sorted(report)
        ['W_K0', 'W_K1 W_O0 W_V0', 'W_U W_O1']
    """
    w = head_weights(model)
    if w.n_layers < 2:
        raise ValueError(f"n_layers={w.n_layers}; memory_report expected >= 2 layers")
    out: dict[str, MemoryTable] = {}
    rel0 = w.relative_at(0)
    if w.W_pos is not None:
        pos = basis(w, "positions", n=n_positions)
        out["W_K0"] = memory_table(w, "W_K0", pos, pos, expected="shift:1", per="output", top=top)
    elif rel0 is not None and rel0.form == "vector":
        tok, rel = basis(model, "tokens"), basis(w, "relative")
        mask = torch.zeros(len(tok), len(rel), dtype=torch.bool)
        mask[:, 1] = True
        out["W_K0"] = memory_table(w, "W_K0", tok, rel, expected=mask, per="output", top=top)
    tok = basis(model, "tokens")
    ov0 = basis(model, "ov", layer=0)
    if triggers is not None:
        idx = torch.as_tensor(triggers, dtype=torch.long).flatten().unique()
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= w.d_vocab:
            raise ValueError(f"triggers={idx.tolist()}; expected token ids in [0, {w.d_vocab})")
        tok = Basis(tok.name, tok.vectors[idx], [tok.labels[i] for i in idx.tolist()])
        ov0 = Basis(ov0.name, ov0.vectors[idx], [ov0.labels[i] for i in idx.tolist()])
    out["W_K1 W_O0 W_V0"] = memory_table(
        w, "W_K1", tok, ov0, expected="identity", per="output", top=top, name="W_K1 W_O0 W_V0"
    )
    out["W_U W_O1"] = memory_table(
        w,
        "W_O1",
        basis(model, "unembed"),
        basis(model, "value", layer=1),
        expected="identity",
        per="input",
        top=top,
        name="W_U W_O1",
    )
    ffn1 = w.ffn[1] if len(w.ffn) > 1 else None
    if ffn1 is not None and ffn1.act == "linear" and ffn1.W_gate is None:
        out["W_U W_F1"] = memory_table(
            w,
            "W_F1",
            basis(model, "unembed"),
            basis(model, "tokens"),
            per="input",
            top=top,
            name="W_U W_F1",
        )
    trig = None if triggers is None else torch.as_tensor(triggers, dtype=torch.long).flatten()
    if "W_K0" in out:
        out["W_K0"].probes["probe_wk1"] = probes.wk1_probe(w, n_positions)
    if trig is not None:
        out["W_K1 W_O0 W_V0"].probes["probe_wk2"] = probes.wk2_probe(w, trig)
    out["W_U W_O1"].probes["probe_wo2"] = probes.wo2_probe(w)
    if "W_U W_F1" in out and bigram is not None:
        out["W_U W_F1"].probes["probe_wf"] = probes.wf_probe(w, bigram, trig)
    return out
