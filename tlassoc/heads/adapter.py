"""One typed adapter for the three model kinds tlassoc analyses.

:class:`~tlassoc.model.AssocTransformer`, TransformerLens 3.x ``HookedTransformer`` and
TransformerLens 4.x ``TransformerBridge`` all run with ``run_with_cache`` / ``run_with_hooks``
and TransformerLens's hook names; their weights are read here, once, into a
:class:`HeadWeights`: embeddings, the stacked attention weights, absolute positions, each
layer's relative-position term (:class:`RelativePositions`) and feed-forward block
(:class:`FeedForward`). ``tlassoc.heads``, ``tlassoc.memory``, ``tlassoc.patching`` and
``tlassoc.theory`` read models only through this module; :func:`model_kind` tells the kinds
apart by class (never by class name) and refuses anything else with one line.

Matrix convention
-----------------
tlassoc uses TransformerLens's **row convention** everywhere: activations are row vectors and a
matrix acts on the right, ``x @ W``. A token ``k`` enters as ``w_E(k) = W_E[k]``; a head scores
``score(t, s) = (x_t W_Q) . (x_s W_K) / sqrt(d_head)`` (``W_Q`` is the identity with
``identity_query``) and writes ``z W_O`` with ``z = Σ_s A[t, s] x_s W_V``; the full OV circuit
of a head is ``W_E W_V W_O W_U`` (:meth:`HeadWeights.full_ov`). Shapes follow TransformerLens:
``W_Q, W_K, W_V [n_layers, n_heads, d_model, d_head]``, ``W_O [n_layers, n_heads, d_head,
d_model]``, ``W_E [d_vocab, d_model]``, ``W_U [d_model, d_vocab]``.

The papers write column vectors (``y = W x``, so their ``W_K`` is ``(W_Q W_K^T)`` read as a
bilinear form and their ``W_O`` is our ``W_O^T``). That convention appears only in the functions
that print paper notation: :func:`tlassoc.memory.circuit` / :func:`tlassoc.memory.memory_table`
and the ideal constructions of :mod:`tlassoc.memory.ideal`, which say so in their docstrings
(see docs/method.md, Associative memories).

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> w = head_weights(AssocTransformer(presets.rpe(d_model=16)))
    >>> w.kind, w.relative[0].form, w.relative[1] is None, tuple(w.full_ov(1).shape)
    ('assoc', 'vector', True, (65, 65))
"""

from __future__ import annotations

import operator
import reprlib
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal, Protocol, TypeAlias

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc._tl import model_classes
from tlassoc.model import AssocTransformer

__all__ = [
    "FeedForward",
    "HeadWeights",
    "Model",
    "ModelKind",
    "NotAModelError",
    "RelativePositions",
    "TransformerLensModel",
    "bos_token_id",
    "check_head",
    "check_layer",
    "check_model",
    "check_tokens",
    "head_weights",
    "model_device",
    "model_kind",
    "special_token_ids",
]

ModelKind = Literal["assoc", "hooked_transformer", "bridge"]

_EXPECTED = "an AssocTransformer, HookedTransformer or TransformerBridge"


class TransformerLensModel(Protocol):
    """What tlassoc uses of a TransformerLens model (``HookedTransformer``, ``TransformerBridge``
    or :class:`~tlassoc.model.AssocTransformer`)."""

    cfg: Any

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


#: The type of every ``model`` argument of the analyses.
Model: TypeAlias = AssocTransformer | TransformerLensModel


class NotAModelError(TypeError, ValueError):
    """A value that is not one of the model kinds (or not the kind a function needs).

    A ``TypeError`` and a ``ValueError``, so either ``except`` catches it.
    """


def _short(value: Any) -> str:
    if isinstance(value, torch.nn.Module):
        return f"<{type(value).__name__}>"
    return reprlib.repr(value)


def model_kind(model: Any) -> ModelKind:
    """Which of the three model kinds ``model`` is (by class, subclasses included).

    Raises:
        NotAModelError: anything else, e.g. a string.

    Example:
        >>> from tlassoc import AssocTransformer, AssocConfig
        >>> model_kind(AssocTransformer(AssocConfig(d_model=16)))
        'assoc'
        >>> model_kind("abc")
        Traceback (most recent call last):
        ...
        tlassoc.heads.adapter.NotAModelError: model='abc'; expected an AssocTransformer, ...
    """
    if isinstance(model, AssocTransformer):
        return "assoc"
    for kind, cls in model_classes().items():
        if isinstance(model, cls):
            return kind  # type: ignore[return-value]
    raise NotAModelError(f"model={_short(model)}; expected {_EXPECTED}")


def check_model(model: Any, *, assoc_only: str | None = None) -> ModelKind:
    """:func:`model_kind`, and with ``assoc_only`` (the caller's name) refuse every kind but
    ``AssocTransformer`` in one line.

    Example:
        >>> check_model(None, assoc_only="build_ideal")
        Traceback (most recent call last):
        ...
        tlassoc.heads.adapter.NotAModelError: model=None; build_ideal expected an AssocTransformer
    """
    if assoc_only is not None and not isinstance(model, AssocTransformer):
        raise NotAModelError(f"model={_short(model)}; {assoc_only} expected an AssocTransformer")
    return model_kind(model)


def check_layer(layer: Any, n_layers: int, name: str = "layer") -> int:
    """``layer`` as an int in ``[0, n_layers)``, else a ``ValueError`` naming it.

    Example:
        >>> check_layer(3, 2)
        Traceback (most recent call last):
        ...
        ValueError: layer 3 >= n_layers 2; expected 0 <= layer < 2
    """
    return _check_index(layer, n_layers, name, "n_layers")


def check_head(head: Any, n_heads: int) -> int:
    """``head`` as an int in ``[0, n_heads)``, else a ``ValueError`` naming it."""
    return _check_index(head, n_heads, "head", "n_heads")


def _check_index(value: Any, size: int, name: str, size_name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        index = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r}; expected an integer index") from None
    if not 0 <= index < size:
        bound = f">= {size_name} {size}" if index >= 0 else "< 0"
        raise ValueError(f"{name} {index} {bound}; expected 0 <= {name} < {size}")
    return index


def model_device(model: Model) -> torch.device:
    """The device of ``model``'s parameters."""
    return next(iter(model.parameters())).device


def check_tokens(
    tokens: Any, d_vocab: int, device: torch.device | str | None = None, what: str = "token"
) -> Int[Tensor, "batch pos"]:
    """An integer ``[batch, pos]`` tensor of ids in ``[0, d_vocab)`` (a ``[pos]`` one gains a
    batch axis), on ``device``; otherwise a ``ValueError`` naming the offending id.

    Example:
        >>> check_tokens(torch.tensor([1, 70]), 65)
        Traceback (most recent call last):
        ...
        ValueError: token id 70 is outside the vocabulary [0, d_vocab=65)
    """
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point:
        raise ValueError(f"{what}s={_short(tokens)}; expected an integer token tensor")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"{what} tensor has shape {tuple(tokens.shape)}; expected [batch, pos]")
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= d_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what} id {bad} is outside the vocabulary [0, d_vocab={d_vocab})")
    return tokens.long() if device is None else tokens.long().to(device)


def bos_token_id(model: Model) -> int | None:
    """The BOS id TransformerLens would prepend to text for ``model`` (``None``: none).

    AssocTransformer's character vocabulary has no BOS; GPT-2 prepends ``<|endoftext|>`` (50256).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> bos_token_id(AssocTransformer(presets.rpe(d_model=16))) is None
        True
    """
    if check_model(model) == "assoc":
        return None
    tok = getattr(model, "tokenizer", None)
    if not getattr(model.cfg, "default_prepend_bos", False) or tok is None:
        return None
    bos = getattr(tok, "bos_token_id", None)
    return int(bos) if bos is not None and bos < model.cfg.d_vocab else None


def special_token_ids(model: Model) -> set[int]:
    """The tokenizer's BOS/EOS/PAD ids (none for an AssocTransformer)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or check_model(model) == "assoc":
        return set()
    ids = {getattr(tok, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {int(i) for i in ids if i is not None}


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


@dataclass(frozen=True)
class FeedForward:
    """One layer's feed-forward block ``act(x W_in + b_in) W_out + b_out`` (gated:
    ``act(x W_gate) * (x W_in + b_in)`` before ``W_out``).

    Attributes:
        W_in: ``[d_model, d_mlp]``.
        b_in: ``[d_mlp]``.
        W_out: ``[d_mlp, d_model]``.
        b_out: ``[d_model]``.
        act: ``"linear"`` (tlassoc's linear memory), ``"relu"``, ``"gelu"``, ``"gelu_new"``...
        W_gate: ``[d_model, d_mlp]`` for gated blocks, else ``None``.
    """

    W_in: Float[Tensor, "d_model d_mlp"]
    b_in: Float[Tensor, " d_mlp"]
    W_out: Float[Tensor, "d_mlp d_model"]
    b_out: Float[Tensor, " d_model"]
    act: str
    W_gate: Float[Tensor, "d_model d_mlp"] | None = None

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The block's output for residual rows ``x`` (no layer norm)."""
        if self.act not in _ACTIVATIONS:
            raise ValueError(f"act={self.act!r}; expected one of {sorted(_ACTIVATIONS)}")
        pre = x @ self.W_in + self.b_in
        act = _ACTIVATIONS[self.act]
        post = act(pre) if self.W_gate is None else act(x @ self.W_gate) * pre
        return post @ self.W_out + self.b_out

    @property
    def matrix(self) -> Float[Tensor, "d_model d_model"]:
        """``W_in W_out``: the block as one matrix (linear blocks only).

        Example:
            >>> ff = FeedForward(torch.eye(2), torch.zeros(2), 2 * torch.eye(2), torch.zeros(2),
            ...                  "relu")
            >>> ff.matrix
            Traceback (most recent call last):
            ...
            ValueError: a 'relu' feed-forward layer is not a matrix; only linear ones are
        """
        if self.act != "linear" or self.W_gate is not None:
            raise ValueError(
                f"a {self.act!r} feed-forward layer is not a matrix; only linear ones are"
            )
        return self.W_in @ self.W_out


@dataclass(frozen=True)
class RelativePositions:
    """One layer's relative-position term (``positional_embedding_type="relative"``).

    Exactly one of:

    * ``W_rel [n_dist, d_model]`` (vector form): a vector ``r_j`` per distance ``j = t - s``
      joins the key input, ``score(t, s) += (x_t W_Q) . (r_j W_K) / sqrt(d_head)``;
    * ``b_rel [n_heads, n_dist]`` (bias form, T5-style): a learned scalar per head and distance.
    """

    W_rel: Float[Tensor, "n_dist d_model"] | None = None
    b_rel: Float[Tensor, "n_heads n_dist"] | None = None

    def __post_init__(self) -> None:
        if (self.W_rel is None) == (self.b_rel is None):
            raise ValueError("RelativePositions takes exactly one of W_rel and b_rel")

    @property
    def form(self) -> Literal["vector", "bias"]:
        """``"vector"`` or ``"bias"`` (as ``AssocConfig.relative_form``)."""
        return "vector" if self.W_rel is not None else "bias"

    @property
    def n_dist(self) -> int:
        """Number of distances."""
        return self.W_rel.shape[0] if self.W_rel is not None else self.b_rel.shape[1]


@dataclass(frozen=True)
class HeadWeights:
    """A model's weights in TransformerLens's layout and row convention, detached.

    Attributes:
        W_E: ``[d_vocab, d_model]``.
        W_U: ``[d_model, d_vocab]``.
        W_Q, W_K, W_V: ``[n_layers, n_heads, d_model, d_head]`` (``W_Q`` is the identity for an
            ``identity_query`` AssocTransformer; grouped key/value heads are expanded).
        W_O: ``[n_layers, n_heads, d_head, d_model]``.
        kind: :data:`ModelKind` of the model read.
        W_pos: ``[n_ctx, d_model]`` absolute positions (``positional_embedding_type="standard"``),
            else ``None``.
        relative: per layer, its :class:`RelativePositions` or ``None``.
        ffn: per layer, its :class:`FeedForward` or ``None``.
        positional_embedding_type: ``"standard"``, ``"relative"`` or ``"none"`` (TransformerLens
            has more, e.g. ``"rotary"``).
        normalization_type: ``None``, ``"LN"``, ``"LNPre"``... (from the model's config).
    """

    W_E: Float[Tensor, "d_vocab d_model"]
    W_U: Float[Tensor, "d_model d_vocab"]
    W_Q: Float[Tensor, "n_layers n_heads d_model d_qk"]
    W_K: Float[Tensor, "n_layers n_heads d_model d_qk"]
    W_V: Float[Tensor, "n_layers n_heads d_model d_head"]
    W_O: Float[Tensor, "n_layers n_heads d_head d_model"]
    _: KW_ONLY
    kind: ModelKind = "assoc"
    W_pos: Float[Tensor, "n_ctx d_model"] | None = None
    relative: tuple[RelativePositions | None, ...] = ()
    ffn: tuple[FeedForward | None, ...] = ()
    positional_embedding_type: str = "standard"
    normalization_type: str | None = None

    @property
    def n_layers(self) -> int:
        return self.W_K.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_K.shape[1]

    @property
    def d_model(self) -> int:
        return self.W_E.shape[1]

    @property
    def d_head(self) -> int:
        return self.W_K.shape[-1]

    @property
    def d_vocab(self) -> int:
        return self.W_E.shape[0]

    @property
    def ffn_layers(self) -> tuple[int, ...]:
        """The layers that have a feed-forward block."""
        return tuple(i for i, f in enumerate(self.ffn) if f is not None)

    @property
    def W_rel(self) -> Float[Tensor, "n_dist d_model"] | None:
        """The relative-position vectors ``r_j`` (vector form; an AssocTransformer shares one
        set between its relative layers), else ``None``."""
        return next((r.W_rel for r in self.relative if r is not None and r.W_rel is not None), None)

    def relative_at(self, layer: int) -> RelativePositions | None:
        """Layer ``layer``'s relative-position term (``None``: none)."""
        check_layer(layer, self.n_layers)
        return self.relative[layer] if layer < len(self.relative) else None

    def ov_out(
        self,
        layer: int,
        head: int | None = None,
        tokens: Int[Tensor, " n"] | None = None,
    ) -> Float[Tensor, "n d_model"]:
        """``W_E[tokens] W_V W_O``: what ``(layer, head)`` writes when it attends to each token
        (``head=None``: summed over the layer's heads; ``tokens=None``: the whole vocabulary)."""
        check_layer(layer, self.n_layers)
        E = self.W_E if tokens is None else self.W_E[tokens]
        if head is None:
            return torch.einsum("vm,hmd,hdn->vn", E, self.W_V[layer], self.W_O[layer])
        check_head(head, self.n_heads)
        return E @ self.W_V[layer, head] @ self.W_O[layer, head]

    def full_ov(
        self,
        layer: int,
        head: int | None = None,
        tokens: Int[Tensor, " n"] | None = None,
    ) -> Float[Tensor, "n d_vocab"]:
        """The full OV circuit ``W_E[tokens] W_V W_O W_U`` of ``(layer, head)`` (direct path):
        row ``i`` is the head's logit contribution when it attends to token ``tokens[i]``.

        The one definition of this circuit in tlassoc (copying scores, full-OV top-k, the
        ``W_O²`` probe and the theory's copy memory all read it).

        Example:
            >>> from tlassoc import AssocTransformer, presets
            >>> w = head_weights(AssocTransformer(presets.rpe(d_model=16)))
            >>> w.full_ov(1, 0, torch.tensor([3, 4])).shape
            torch.Size([2, 65])
        """
        return self.ov_out(layer, head, tokens) @ self.W_U


def _expand_kv(w: Tensor, n_heads: int) -> Tensor:
    if w.shape[1] == n_heads:
        return w
    return w.repeat_interleave(n_heads // w.shape[1], dim=1)


@torch.no_grad()
def head_weights(model: Model | HeadWeights) -> HeadWeights:
    """Read a model's weights into one :class:`HeadWeights` (any of the three kinds; a
    ``HeadWeights`` comes back as it is, so functions can take either).

    AssocTransformer, ``HookedTransformer`` and ``TransformerBridge`` all expose the stacked
    TransformerLens properties; this adapter detaches them, expands grouped key/value heads to
    ``n_heads``, checks the shapes, and adds the relative-position term and feed-forward block of
    each layer, so every analysis reads one layout. A ``TransformerBridge`` reports the weights
    as currently processed: load it through :func:`tlassoc.pretrained.load_model`
    (compatibility mode, LayerNorm folded) to compare with ``HookedTransformer``.

    Raises:
        NotAModelError: ``model`` is not one of the three kinds.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> w = head_weights(AssocTransformer(presets.rpe(d_model=16)))
        >>> tuple(w.W_Q.shape), w.positional_embedding_type
        ((2, 1, 16, 16), 'relative')
    """
    if isinstance(model, HeadWeights):
        return model
    kind = check_model(model)
    cfg = model.cfg
    n_heads = cfg.n_heads
    relative, ffn = (_assoc_extras if kind == "assoc" else _tl_extras)(model)
    w = HeadWeights(
        model.W_E.detach(),
        model.W_U.detach(),
        model.W_Q.detach(),
        _expand_kv(model.W_K.detach(), n_heads),
        _expand_kv(model.W_V.detach(), n_heads),
        model.W_O.detach(),
        kind=kind,
        W_pos=_absolute_positions(model),
        relative=relative,
        ffn=ffn,
        positional_embedding_type=getattr(cfg, "positional_embedding_type", "standard"),
        normalization_type=getattr(cfg, "normalization_type", None),
    )
    if w.W_Q.shape[:2] != (cfg.n_layers, n_heads):
        raise ValueError(
            f"W_Q has shape {tuple(w.W_Q.shape)}; expected [n_layers={cfg.n_layers}, "
            f"n_heads={n_heads}, d_model, d_head]"
        )
    return w


def _absolute_positions(model: Model) -> Tensor | None:
    if getattr(model.cfg, "positional_embedding_type", "standard") != "standard":
        return None
    try:
        return model.W_pos.detach()
    except AttributeError:  # pragma: no cover - a foreign model without W_pos
        return None


def _assoc_extras(
    model: AssocTransformer,
) -> tuple[tuple[RelativePositions | None, ...], tuple[FeedForward | None, ...]]:
    cfg = model.cfg
    relative: list[RelativePositions | None] = []
    ffn: list[FeedForward | None] = []
    for block in model.blocks:
        rel = None
        if block.attn.relative:
            if cfg.relative_form == "bias":
                rel = RelativePositions(b_rel=block.attn.b_rel.detach())
            else:
                rel = RelativePositions(W_rel=model.W_rel.detach())
        relative.append(rel)
        mlp = block.mlp if block.has_mlp else None
        ffn.append(
            None
            if mlp is None
            else FeedForward(
                mlp.W_in.detach(),
                mlp.b_in.detach(),
                mlp.W_out.detach(),
                mlp.b_out.detach(),
                act=cfg.ffn_type,
            )
        )
    return tuple(relative), tuple(ffn)


def _tl_extras(
    model: TransformerLensModel,
) -> tuple[tuple[RelativePositions | None, ...], tuple[FeedForward | None, ...]]:
    """TransformerLens models: no learned relative positions; the stacked MLP weights."""
    cfg = model.cfg
    n = cfg.n_layers
    if getattr(cfg, "attn_only", False) or not getattr(cfg, "d_mlp", None):
        return (None,) * n, (None,) * n
    try:
        W_in, b_in, W_out, b_out = model.W_in, model.b_in, model.W_out, model.b_out
        W_gate = model.W_gate if getattr(cfg, "gated_mlp", False) else None
    except (AttributeError, NotImplementedError):  # pragma: no cover - e.g. mixture of experts
        return (None,) * n, (None,) * n
    act = str(getattr(cfg, "act_fn", "relu"))
    ffn = tuple(
        FeedForward(
            W_in[i].detach(),
            b_in[i].detach(),
            W_out[i].detach(),
            b_out[i].detach(),
            act=act,
            W_gate=None if W_gate is None else W_gate[i].detach(),
        )
        for i in range(n)
    )
    return (None,) * n, ffn
