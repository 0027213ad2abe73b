"""`AssocConfig`: the configuration of an :class:`~tlassoc.model.AssocTransformer`.

Field names follow TransformerLens's ``HookedTransformerConfig`` (``n_layers``, ``d_model``,
``n_heads``, ``d_head``, ``d_vocab``, ``n_ctx``, ``positional_embedding_type``,
``normalization_type``, ``act_fn``-like ``ffn_type``…) so that TransformerLens tools which read
``model.cfg`` work unchanged. ``positional_embedding_type`` is extended with ``"relative"`` and
``"none"``.

Example:
    >>> cfg = AssocConfig(n_layers=2, d_model=64, positional_embedding_type="relative")
    >>> cfg.d_head, cfg.max_relative_distance, cfg.relative_layers
    (64, 64, (0,))
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from tlassoc.config import _fields

POSITIONAL_TYPES = ("standard", "relative", "alibi", "rotary", "none")
#: Encodings that act inside attention, in the layers named by ``relative_layers``.
ATTENTION_POSITIONS = ("relative", "alibi", "rotary")
RELATIVE_FORMS = ("vector", "bias")
FFN_TYPES = (None, "linear", "relu")
NORMALIZATION_TYPES = (None, "LN")

DTYPES = ("float32", "float64", "float16", "bfloat16")


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name}={value!r}; expected a sequence of layer indices") from None
    for v in items:
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{name}={value!r}; expected integers, got {v!r}")
    return tuple(sorted(set(items)))


@dataclass
class AssocConfig:
    """Configuration of an associative-memory transformer.

    Args:
        n_layers: Number of attention layers.
        d_model: Residual stream width.
        n_ctx: Longest sequence the model is meant to see. Absolute positions (``"standard"``)
            cannot go past it; relative and no positions can.
        n_heads: Heads per layer.
        d_head: Width of a head; defaults to ``d_model // n_heads``.
        d_vocab: Vocabulary size (65 for Tiny Shakespeare characters).
        positional_embedding_type: ``"standard"`` (learned/frozen absolute ``W_pos`` added to the
            embeddings, APE), ``"relative"`` (RPE), ``"alibi"`` (a fixed linear penalty
            ``-m_h (t - s)`` per head), ``"rotary"`` (RoPE: queries and keys rotated by their
            position) or ``"none"``. The last three act only in ``relative_layers``.
        relative_layers: Layers whose attention gets the relative, ALiBi or rotary position term
            (default: layer 0, the previous-token layer).
        max_relative_distance: Number of distinct distances; ``t - s`` is clipped at
            ``max_relative_distance - 1``. Default 64.
        relative_form: ``"vector"`` (default): a vector ``r_j`` per distance added to the key input,
            ``score(t, s) = q_t . W_K (x_s + r_{t-s}) / sqrt(d_head)``; ``"bias"``: a learned scalar
            per distance and head added to the score (T5-style).
        rotary_base: Base of the rotary frequencies, ``theta_i = base^(-2i / d_head)``.
        length_scale_len: Length-scaled attention (an experiment, off when ``None``): every
            attention logit of query ``t`` is multiplied by ``log(t + 1) / log(length_scale_len)``
            so the softmax sharpens as the number of keys grows; set it to the training length.
        identity_query: ``W_Q = I`` (the papers' simplified model); needs ``d_head == d_model``.
        frozen: ``fnmatch`` patterns of parameter names kept at their initial values
            (``requires_grad=False``), e.g. ``("embed.W_E", "blocks.0.attn.W_V")``.
        zero_init: Patterns of parameters initialised to zero instead of randomly.
        ffn_type: ``None`` (attention only), ``"linear"`` or ``"relu"`` feed-forward layer.
        ffn_layers: Layers with a feed-forward layer (default: the last layer).
        d_mlp: Feed-forward width (default ``d_model`` for linear, ``4 * d_model`` for relu).
        normalization_type: ``None`` (the papers' model) or ``"LN"`` (pre-LayerNorm).
        eps: LayerNorm epsilon.
        init_std: Standard deviation of random weights (default ``1/sqrt(d_model)``, so random
            embeddings are nearly orthonormal).
        seed: Seed of the weight initialisation (same seed, same bits).
        device: Device of the parameters (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        dtype: Parameter dtype, one of float32, float64, float16, bfloat16 (a ``torch.dtype``
            after construction, as TransformerLens tools expect).
        use_attn_result: Compute per-head outputs ``hook_result`` (as in TransformerLens).
        fast_attention: When no hook is attached to an attention layer (training), compute it
            with PyTorch's fused ``scaled_dot_product_attention`` (the same numbers up to float
            rounding); ``False`` always takes the step-by-step hooked path.
        default_prepend_bos: Kept for TransformerLens helpers; the character vocabulary has no
            BOS token, so this is ``False``.
        model_name: A name for reports.
    """

    n_layers: int = 2
    d_model: int = 128
    n_ctx: int = 512
    n_heads: int = 1
    d_head: int | None = None
    d_vocab: int = 65
    positional_embedding_type: str = "standard"
    relative_layers: tuple[int, ...] = (0,)
    max_relative_distance: int = 64
    relative_form: str = "vector"
    rotary_base: float = 10000.0
    length_scale_len: int | None = None
    identity_query: bool = False
    frozen: tuple[str, ...] = ()
    zero_init: tuple[str, ...] = ()
    ffn_type: str | None = None
    ffn_layers: tuple[int, ...] | None = None
    d_mlp: int | None = None
    normalization_type: str | None = None
    eps: float = 1e-5
    init_std: float | None = None
    seed: int | None = 0
    device: str = "cpu"
    dtype: str = "float32"
    use_attn_result: bool = False
    fast_attention: bool = True
    default_prepend_bos: bool = False
    model_name: str = "tlassoc"

    # Constant fields TransformerLens tools may read.
    n_key_value_heads: None = None
    attention_dir: str = "causal"
    original_architecture: str = "AssocTransformer"
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    use_local_attn: bool = False
    gated_mlp: bool = False
    final_rms: bool = False
    parallel_attn_mlp: bool = False
    post_embedding_ln: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_ctx", "n_heads", "d_vocab", "max_relative_distance"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}; expected a positive integer")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "pass d_head explicitly"
                )
            self.d_head = self.d_model // self.n_heads
        if not isinstance(self.d_head, int) or isinstance(self.d_head, bool) or self.d_head < 1:
            raise ValueError(f"d_head={self.d_head!r}; expected a positive integer")
        if self.positional_embedding_type not in POSITIONAL_TYPES:
            raise ValueError(
                f"positional_embedding_type={self.positional_embedding_type!r}; expected one of "
                f"{POSITIONAL_TYPES}"
            )
        if self.relative_form not in RELATIVE_FORMS:
            raise ValueError(
                f"relative_form={self.relative_form!r}; expected one of {RELATIVE_FORMS}"
            )
        self.relative_layers = _as_int_tuple("relative_layers", self.relative_layers)
        self._check_layers("relative_layers", self.relative_layers)
        kind = self.positional_embedding_type
        if kind in ATTENTION_POSITIONS and not self.relative_layers:
            raise ValueError(
                f"positional_embedding_type={kind!r} needs at least one relative layer"
            )
        if kind == "rotary" and self.d_head % 2:
            raise ValueError(f"d_head={self.d_head}; rotary positions need an even d_head")
        ok_base = isinstance(self.rotary_base, (int, float)) and not isinstance(
            self.rotary_base, bool
        )
        if not (ok_base and math.isfinite(self.rotary_base) and self.rotary_base > 1):
            raise ValueError(f"rotary_base={self.rotary_base!r}; expected a finite number > 1")
        self.rotary_base = float(self.rotary_base)
        scale = self.length_scale_len
        if scale is not None and (
            isinstance(scale, bool) or not isinstance(scale, int) or scale < 2
        ):
            raise ValueError(f"length_scale_len={scale!r}; expected an integer >= 2 or None")
        if self.ffn_type not in FFN_TYPES:
            raise ValueError(f"ffn_type={self.ffn_type!r}; expected one of {FFN_TYPES}")
        if self.ffn_layers is None:
            self.ffn_layers = (self.n_layers - 1,) if self.ffn_type else ()
        self.ffn_layers = _as_int_tuple("ffn_layers", self.ffn_layers)
        self._check_layers("ffn_layers", self.ffn_layers)
        if self.ffn_type is None and self.ffn_layers:
            raise ValueError(f"ffn_layers={self.ffn_layers} given but ffn_type is None")
        if self.ffn_type is not None and not self.ffn_layers:
            raise ValueError(f"ffn_type={self.ffn_type!r} given but ffn_layers is empty")
        if self.d_mlp is None and self.ffn_type is not None:
            self.d_mlp = self.d_model if self.ffn_type == "linear" else 4 * self.d_model
        bad_mlp = isinstance(self.d_mlp, bool) or not isinstance(self.d_mlp, int)
        if self.d_mlp is not None and (bad_mlp or self.d_mlp < 1):
            raise ValueError(f"d_mlp={self.d_mlp!r}; expected a positive integer")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(
                f"normalization_type={self.normalization_type!r}; expected one of "
                f"{NORMALIZATION_TYPES}"
            )
        if self.identity_query and self.d_head != self.d_model:
            raise ValueError(
                f"identity_query=True needs d_head == d_model, got d_head={self.d_head} and "
                f"d_model={self.d_model}"
            )
        if self.init_std is None:
            self.init_std = 1.0 / math.sqrt(self.d_model)
        for name in ("eps", "init_std"):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not (ok and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}={v!r}; expected a positive finite number")
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not -(2**63) <= self.seed < 2**64
        ):
            raise ValueError(f"seed={self.seed!r}; expected an integer in [-2**63, 2**64) or None")
        self.dtype = _torch_dtype(self.dtype)
        self._check_dtype_range()
        for name in ("frozen", "zero_init"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            value = tuple(value)
            if not all(isinstance(p, str) and p for p in value):
                raise ValueError(f"{name}={value!r}; expected a tuple of parameter-name patterns")
            setattr(self, name, value)
        import torch

        try:
            self.device = str(torch.device(self.device))
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device={self.device!r}; expected a torch device such as 'cpu'"
            ) from None

    def _check_dtype_range(self) -> None:
        """Numbers the parameter dtype cannot hold (they would become inf) are refused."""
        import torch

        info = torch.finfo(self.dtype)
        for name in ("init_std", "eps"):
            value = getattr(self, name)
            if value > info.max:
                raise ValueError(
                    f"{name}={value!r}; expected at most {info.max:.5g}, the largest "
                    f"{self.dtype} number (the model's dtype)"
                )

    def _check_layers(self, name: str, layers: tuple[int, ...]) -> None:
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise ValueError(
                f"{name} has layer {bad[0]}; expected 0 <= layer < n_layers={self.n_layers}"
            )

    # --- derived values TransformerLens reads -------------------------------------------------
    @property
    def attn_only(self) -> bool:
        """True when no layer has a feed-forward block."""
        return self.ffn_type is None

    @property
    def act_fn(self) -> str | None:
        return self.ffn_type

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    def has_relative(self, layer: int) -> bool:
        """Whether attention in ``layer`` gets the relative-position term."""
        return self.positional_embedding_type == "relative" and layer in self.relative_layers

    def position_in_attention(self, layer: int) -> str | None:
        """``"relative"``, ``"alibi"`` or ``"rotary"`` when attention in ``layer`` gets that
        position term, else ``None``."""
        kind = self.positional_embedding_type
        return kind if kind in ATTENTION_POSITIONS and layer in self.relative_layers else None

    def has_ffn(self, layer: int) -> bool:
        return layer in self.ffn_layers  # type: ignore[operator]

    def matches(self, patterns: tuple[str, ...], name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    # --- (de)serialisation -------------------------------------------------------------------
    _not_serialised: ClassVar[frozenset[str]] = frozenset()  # set below: the constant fields
    _derived: ClassVar[tuple[str, ...]] = ("d_head", "init_std", "d_mlp", "ffn_layers")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; :meth:`from_dict` inverts it exactly.

        Example:
            >>> AssocConfig.from_dict(AssocConfig(d_model=32).to_dict()) == AssocConfig(d_model=32)
            True
        """
        return _fields.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> AssocConfig:
        """Inverse of :meth:`to_dict`; an unknown or ill-typed field is named in the error."""
        if isinstance(data, dict) and data.get("extra") == {}:  # written by tlassoc 0.1
            data = {k: v for k, v in data.items() if k != "extra"}
        return _fields.from_dict(cls, data, path)

    def replace(self, **changes: Any) -> AssocConfig:
        """A copy with some fields changed (validated again).

        Values that were derived from others (``d_head``, ``init_std``, ``d_mlp``, ``ffn_layers``)
        are derived again unless they were set to something else or are given in ``changes``.

        Example:
            >>> AssocConfig(d_model=64).replace(d_model=32).d_head
            32
        """
        data = self.to_dict()
        defaults = AssocConfig(
            **{k: data[k] for k in ("n_layers", "d_model", "n_heads", "ffn_type")}
        )
        for name in self._derived:
            if name not in changes and getattr(self, name) == getattr(defaults, name):
                data[name] = None
        data.update(changes)
        return AssocConfig.from_dict(data)


def _torch_dtype(value: Any) -> Any:
    import torch

    table = {name: getattr(torch, name) for name in DTYPES}
    if isinstance(value, str) and value.removeprefix("torch.") in table:
        return table[value.removeprefix("torch.")]
    if value in table.values():
        return value
    raise ValueError(f"dtype={value!r}; expected one of {list(DTYPES)}")


_CONSTANT_FIELDS = {
    "n_key_value_heads",
    "attention_dir",
    "original_architecture",
    "use_split_qkv_input",
    "use_attn_in",
    "use_hook_mlp_in",
    "use_local_attn",
    "gated_mlp",
    "final_rms",
    "parallel_attn_mlp",
    "post_embedding_ln",
}
AssocConfig._not_serialised = frozenset(_CONSTANT_FIELDS)
