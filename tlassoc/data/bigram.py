"""Global bigram statistics: the "global knowledge" of the bigram-with-triggers task.

A :class:`BigramModel` holds exact unigram and bigram counts over a vocabulary and derives from
them the unigram distribution ``π_u``, the row-normalised conditional ``π_b(·|i)``, the conditional
entropy (the floor of the global-bigram loss) and a vectorised Markov-chain sampler.

The Tiny Shakespeare statistics ship with the package as a derived table
(``tiny_shakespeare_counts.json``, rebuilt by ``python -m tlassoc.data.build_tables SRC_DIR``), so
:meth:`BigramModel.tiny_shakespeare` works offline and never reads the raw text.

Example:
    >>> bigram = BigramModel.tiny_shakespeare()
    >>> bigram.d_vocab, bigram.n_bigrams, round(bigram.conditional_entropy(), 3)
    (65, 1403, 2.453)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlassoc._io import atomic_write_text
from tlassoc.tokenizer import CharTokenizer, WordTokenizer

#: File name of the shipped Tiny Shakespeare count table inside ``tlassoc/data``.
TINY_SHAKESPEARE_TABLE = "tiny_shakespeare_counts.json"
#: Format tag written into count tables.
COUNTS_FORMAT = "tlassoc.bigram_counts/1"


def _as_count_tensor(values: Any, name: str, shape: tuple[int, ...]) -> Tensor:
    """Validate non-negative integer counts of a given shape and return them as int64."""
    try:
        array = np.asarray(values.cpu() if isinstance(values, Tensor) else values)
    except Exception as err:  # pragma: no cover - numpy accepts nearly everything
        raise ValueError(f"{name} could not be read as an array: {err}") from None
    if array.shape != shape:
        raise ValueError(f"{name} has shape {tuple(array.shape)}; expected {shape}")
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} has dtype {array.dtype}; expected integer counts")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values; expected integer counts")
    if np.any(array < 0):
        raise ValueError(f"{name} has a negative entry {array.min()}; expected counts >= 0")
    if np.any(array != np.round(array)):
        raise ValueError(f"{name} has non-integer entries; expected integer counts")
    return torch.as_tensor(array.astype(np.int64))


def inverse_cdf(
    weights: Float[Tensor, "batch vocab"], u: Float[Tensor, " batch"]
) -> Int[Tensor, " batch"]:
    """Draw one index per row of non-negative ``weights`` from uniforms ``u`` in ``[0, 1)``.

    Rows need not be normalised. A zero-weight index is never returned (rounding included), so a
    row must have some positive weight.

    Example:
        >>> inverse_cdf(torch.tensor([[0.0, 1.0, 3.0]]), torch.tensor([0.2])).tolist()
        [1]
    """
    cum = weights.cumsum(-1)
    total = cum[..., -1:]
    index = torch.searchsorted(cum, u.unsqueeze(-1).to(cum.dtype) * total, right=True)
    index = index.clamp_(max=weights.shape[-1] - 1)
    # Guard against float rounding at the top of the row: fall back to the last positive entry.
    positive = weights > 0
    last = (positive * torch.arange(1, weights.shape[-1] + 1, device=weights.device)).argmax(-1)
    bad = ~positive.gather(-1, index).squeeze(-1)
    return torch.where(bad, last, index.squeeze(-1))


def sampling_table(probs: Float[Tensor, "rows vocab"]) -> Float[Tensor, "rows vocab"]:
    """Cumulative rows for inverse-CDF sampling with ``searchsorted(..., right=True)``.

    From each row's last positive entry on, the table holds ``+inf`` so a uniform in ``[0, 1)``
    can never land on a zero-probability token, even after rounding.

    Example:
        >>> sampling_table(torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)).tolist()
        [[0.5, inf, inf]]
    """
    probs = probs.to(torch.float64)
    cum = probs.cumsum(-1) / probs.sum(-1, keepdim=True)
    positive = probs > 0
    last = (positive * torch.arange(1, probs.shape[-1] + 1)).argmax(-1, keepdim=True)
    after_last = torch.arange(probs.shape[-1]).unsqueeze(0) >= last
    return cum.masked_fill(after_last, float("inf"))


def alias_table(probs: Float[Tensor, "rows vocab"]) -> tuple[Tensor, Tensor]:
    """Walker/Vose alias tables of each row of ``probs`` (rows need not be normalised).

    Drawing column ``j`` uniformly and a uniform ``f``, the sample is ``j`` if
    ``f < accept[r, j]`` else ``alias[r, j]``. Zero-probability tokens are never drawn: their
    ``accept`` is 0 and every alias is a token of positive probability.

    Returns:
        ``(accept, alias)``: float64 and int64, both ``[rows, vocab]``.

    Example:
        >>> accept, alias = alias_table(torch.tensor([[0.0, 1.0, 3.0]]))
        >>> accept[0, 0].item(), alias[0, 0].item()
        (0.0, 2)
    """
    probs = probs.to(torch.float64).cpu()
    rows, d = probs.shape
    accept = torch.zeros((rows, d), dtype=torch.float64)
    alias = torch.zeros((rows, d), dtype=torch.int64)
    for r in range(rows):
        row = probs[r]
        total = float(row.sum())
        if not total > 0:
            raise ValueError(f"row {r} of the distribution has no positive entry")
        scaled = (row * d / total).tolist()
        acc = [0.0] * d
        ali = list(range(d))
        small = [j for j in range(d) if scaled[j] < 1.0]
        large = [j for j in range(d) if scaled[j] >= 1.0]
        while small and large:
            j, big = small.pop(), large[-1]
            acc[j], ali[j] = scaled[j], big
            scaled[big] -= 1.0 - scaled[j]
            if scaled[big] < 1.0:
                small.append(large.pop())
        for j in large + small:  # leftovers are 1 up to rounding
            acc[j], ali[j] = 1.0, j
        best = int(row.argmax())
        for j in range(d):  # rounding must never make a zero-probability token drawable
            if row[j] <= 0:
                acc[j] = 0.0
                if row[ali[j]] <= 0:
                    ali[j] = best
            elif row[ali[j]] <= 0:
                acc[j], ali[j] = 1.0, j
        accept[r] = torch.tensor(acc, dtype=torch.float64)
        alias[r] = torch.tensor(ali, dtype=torch.int64)
    return accept, alias


@dataclass(frozen=True)
class ChainTables:
    """Flat sampling tables of a bigram chain on one device.

    Attributes:
        first: cumulative unigram ``[d_vocab]`` for ``searchsorted(..., right=True)``.
        accept: alias acceptance thresholds, ``[2 * d_vocab * d_vocab]`` (row-major).
        alias: alias tokens, same layout. Rows ``0..d-1`` are the bigram rows ``π_b(·|i)``;
            row ``d + o`` always emits token ``o`` (used for a trigger whose output is ``o``).
        d_vocab: number of tokens.
    """

    first: Tensor
    accept: Tensor
    alias: Tensor
    d_vocab: int


def run_chain(
    tables: ChainTables,
    first: Int[Tensor, " batch"],
    u: Float[Tensor, "steps batch"],
    row_of: Int[Tensor, "batch d_vocab"] | None = None,
) -> Int[Tensor, "batch steps_plus_1"]:
    """Run the chain from tokens ``first`` for ``u.shape[0]`` steps, one uniform per step.

    ``u`` is time-major (row ``t`` holds the uniforms of step ``t``), so every step reads one
    contiguous row. Each step is a handful of batched gathers of length ``batch``: pick a column
    ``j = floor(u * d)`` and keep it if the fractional part is below ``accept``, else take its
    alias. ``row_of[b, v]`` is the table row used after token ``v`` in sequence ``b`` (default
    ``v``: the plain bigram chain; ``d + o`` forces output ``o``).

    Example:
        >>> tables = BigramModel.from_text("abab").tables()
        >>> run_chain(tables, torch.tensor([0]), torch.rand(3, 1, dtype=torch.float64)).tolist()
        [[0, 1, 0, 1]]
    """
    steps, n = u.shape
    d = tables.d_vocab
    dev = first.device
    scaled = u * d
    col = scaled.to(torch.int64).clamp_(max=d - 1)  # floor, as u >= 0
    frac = scaled.sub_(col)
    if row_of is None:
        row_of = torch.arange(d, device=dev).expand(n, d)
    # offset[b * d + v] = start of the table row used after token v in sequence b.
    offset = (row_of * d).reshape(-1).contiguous()
    base = torch.arange(n, device=dev) * d
    seq = torch.empty((n, steps + 1), dtype=torch.int64, device=dev)
    seq[:, 0] = first
    prev = first
    for t in range(steps):
        idx = offset.index_select(0, prev + base).add_(col[t])
        keep = frac[t] < tables.accept.index_select(0, idx)
        prev = torch.where(keep, col[t], tables.alias.index_select(0, idx), out=seq[:, t + 1])
    return seq


class BigramModel:
    """Exact unigram and bigram counts over a vocabulary, with the distributions they define.

    Rows of characters that are never followed by anything (e.g. a character that only occurs as
    the last one of the text) have no empirical conditional; :attr:`conditional` then falls back
    to the unigram distribution for that row, so the chain can always continue. Such rows carry no
    weight in :meth:`conditional_entropy`.

    Args:
        vocab: the tokens; a string means one token per character. Token id = index.
        unigram_counts: how often each token occurs, shape ``[d_vocab]``.
        bigram_counts: ``bigram_counts[i, j]`` = how often token ``j`` directly follows ``i``,
            shape ``[d_vocab, d_vocab]``.
        provenance: optional description of where the counts come from (kept as metadata).

    Example:
        >>> bigram = BigramModel.from_text("abab")
        >>> bigram.vocab, bigram.bigram_counts.tolist()
        (['a', 'b'], [[0, 2], [1, 0]])
        >>> bigram.top_successor("a")
        1
    """

    def __init__(
        self,
        vocab: str | Sequence[str],
        unigram_counts: Any,
        bigram_counts: Any,
        provenance: dict[str, Any] | None = None,
    ):
        vocab = list(vocab)
        if not vocab:
            raise ValueError("vocab is empty; expected at least one token")
        if all(isinstance(t, str) and len(t) == 1 for t in vocab):
            self.tokenizer: CharTokenizer | WordTokenizer = CharTokenizer(vocab)
        else:
            self.tokenizer = WordTokenizer(vocab)
        d = len(vocab)
        self.vocab: list[str] = vocab
        self.unigram_counts: Int[Tensor, " d_vocab"] = _as_count_tensor(
            unigram_counts, "unigram_counts", (d,)
        )
        self.bigram_counts: Int[Tensor, "d_vocab d_vocab"] = _as_count_tensor(
            bigram_counts, "bigram_counts", (d, d)
        )
        if int(self.unigram_counts.sum()) == 0:
            raise ValueError("unigram_counts are all zero; expected at least one occurrence")
        self.provenance: dict[str, Any] = dict(provenance or {})
        self._tables: dict[str, ChainTables] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_text(cls, text: str) -> BigramModel:
        """Count characters and character bigrams of ``text`` exactly.

        The vocabulary is the sorted set of distinct characters.

        Example:
            >>> BigramModel.from_text("aab").unigram_counts.tolist()
            [2, 1]
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text is empty; expected at least one character")
        vocab = sorted(set(text))
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        alphabet = np.array([ord(c) for c in vocab], dtype=np.uint32)
        ids = np.searchsorted(alphabet, codes).astype(np.int64)
        d = len(vocab)
        unigram = np.bincount(ids, minlength=d)
        bigram = np.bincount(ids[:-1] * d + ids[1:], minlength=d * d).reshape(d, d)
        return cls("".join(vocab), unigram, bigram)

    @classmethod
    def from_json(cls, path: str | Path) -> BigramModel:
        """Load a count table written by :meth:`to_json` / ``build_tables``.

        Example:
            >>> import tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "t.json")
            >>> BigramModel.from_text("abc").to_json(path)
            >>> BigramModel.from_json(path).vocab
            ['a', 'b', 'c']
        """
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls._from_dict(data, str(path))

    @classmethod
    def _from_dict(cls, data: Any, where: str) -> BigramModel:
        if not isinstance(data, dict) or data.get("format") != COUNTS_FORMAT:
            raise ValueError(f"{where} is not a count table with format {COUNTS_FORMAT!r}")
        return cls(
            data["vocab"],
            data["unigram_counts"],
            data["bigram_counts"],
            provenance=data.get("provenance"),
        )

    @classmethod
    def tiny_shakespeare(cls) -> BigramModel:
        """The Tiny Shakespeare statistics shipped with tlassoc (offline, no raw text needed).

        Example:
            >>> BigramModel.tiny_shakespeare().provenance["n_characters"]
            1115394
        """
        data = _shipped_table(TINY_SHAKESPEARE_TABLE)
        return cls._from_dict(data, TINY_SHAKESPEARE_TABLE)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready table: format tag, vocab, counts and provenance.

        Example:
            >>> BigramModel.from_text("ab").to_dict()["bigram_counts"]
            [[0, 1], [0, 0]]
        """
        vocab: str | list[str] = self.vocab
        if isinstance(self.tokenizer, CharTokenizer):
            vocab = "".join(self.vocab)
        return {
            "format": COUNTS_FORMAT,
            "vocab": vocab,
            "unigram_counts": self.unigram_counts.tolist(),
            "bigram_counts": self.bigram_counts.tolist(),
            "provenance": self.provenance,
        }

    def to_json(self, path: str | Path) -> None:
        """Write the table as JSON atomically (one matrix row per line).

        Example:
            >>> import tempfile, os
            >>> BigramModel.from_text("ab").to_json(os.path.join(tempfile.mkdtemp(), "t.json"))
        """
        atomic_write_text(Path(path), format_counts_json(self.to_dict()))

    # ------------------------------------------------------------------ distributions
    @property
    def d_vocab(self) -> int:
        """Number of tokens."""
        return len(self.vocab)

    @property
    def n_bigrams(self) -> int:
        """Number of distinct bigrams that occur (non-zero entries of the count matrix)."""
        return int((self.bigram_counts > 0).sum())

    @property
    def unigram(self) -> Float[Tensor, " d_vocab"]:
        """Unigram distribution ``π_u`` (float32)."""
        counts = self.unigram_counts.to(torch.float64)
        return (counts / counts.sum()).to(torch.float32)

    @property
    def conditional(self) -> Float[Tensor, "d_vocab d_vocab"]:
        """Row-normalised bigram matrix ``π_b(j|i)`` (float32).

        A row whose token is never followed by anything falls back to the unigram distribution.
        """
        return self._conditional64().to(torch.float32)

    def _conditional64(self) -> Tensor:
        counts = self.bigram_counts.to(torch.float64)
        totals = counts.sum(-1, keepdim=True)
        unigram = self.unigram_counts.to(torch.float64)
        unigram = (unigram / unigram.sum()).expand_as(counts)
        return torch.where(totals > 0, counts / totals.clamp(min=1), unigram)

    def conditional_entropy(self) -> float:
        """``H(next | prev)`` in nats over the empirical bigram distribution.

        Each row is weighted by how often its token is followed by something, i.e.
        ``-Σ_ij p(i, j) log π_b(j|i)`` with ``p(i, j) = count(i, j) / Σ count``. This is the
        lowest loss a model without context beyond the previous token can reach.

        Example:
            >>> BigramModel.from_text("abab").conditional_entropy()
            0.0
            >>> round(BigramModel.from_text("aab").conditional_entropy(), 4)  # log 2
            0.6931
        """
        counts = self.bigram_counts.to(torch.float64)
        total = counts.sum()
        if total == 0:
            return 0.0
        cond = counts / counts.sum(-1, keepdim=True).clamp(min=1)
        mask = counts > 0
        return max(0.0, float(-(counts[mask] / total * cond[mask].log()).sum()))

    def top_successor(self, token: int | str) -> int:
        """Id of the most frequent successor of ``token`` (lowest id on ties).

        A token never followed by anything returns the most frequent token overall.

        Example:
            >>> BigramModel.tiny_shakespeare().tokenizer.vocab[
            ...     BigramModel.tiny_shakespeare().top_successor("q")]
            'u'
        """
        i = self._token_id(token)
        row = self.bigram_counts[i]
        if int(row.sum()) == 0:
            row = self.unigram_counts
        return int(row.argmax())

    def _token_id(self, token: int | str) -> int:
        if isinstance(token, str):
            return self.tokenizer.token_to_id(token)
        i = int(token)
        if not 0 <= i < self.d_vocab:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self.d_vocab})")
        return i

    def tables(self, device: torch.device | str = "cpu") -> ChainTables:
        """Sampling tables of the chain (cached per device); see :class:`ChainTables`.

        Example:
            >>> tables = BigramModel.from_text("ab").tables()
            >>> tables.accept.shape  # 2 * d_vocab rows of d_vocab columns, flattened
            torch.Size([8])
        """
        key = str(torch.device(device))
        if key not in self._tables:
            d = self.d_vocab
            first = sampling_table(self.unigram_counts.to(torch.float64).unsqueeze(0))[0]
            accept, alias = alias_table(self._conditional64())
            # Rows d..2d-1 are deterministic: row d + o always emits token o (for triggers).
            forced_accept = torch.zeros((d, d), dtype=torch.float64)
            forced_alias = torch.arange(d).unsqueeze(1).expand(d, d)
            self._tables[key] = ChainTables(
                first=first.to(device),
                accept=torch.cat([accept, forced_accept]).reshape(-1).to(device),
                alias=torch.cat([alias, forced_alias]).reshape(-1).to(device),
                d_vocab=d,
            )
        return self._tables[key]

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        length: int,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> Int[Tensor, "n length"]:
        """Sample ``n`` sequences of the bigram Markov chain (first token from ``π_u``).

        All randomness is drawn up front from ``generator`` (or ``seed``), so the same seed
        gives the same tokens on every device. Each step is one vectorised operation over the
        batch.

        Example:
            >>> BigramModel.from_text("abab").sample(2, 4, seed=0).shape
            torch.Size([2, 4])
        """
        check_positive("n", n)
        check_positive("length", length)
        u = uniforms((length, n), generator, seed).to(device)  # time-major
        tables = self.tables(device)
        first = torch.searchsorted(tables.first, u[0], right=True)
        return run_chain(tables, first, u[1:])

    def __repr__(self) -> str:
        return f"BigramModel(d_vocab={self.d_vocab}, n_bigrams={self.n_bigrams})"


def check_positive(name: str, value: Any) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise a ``ValueError``.

    Example:
        >>> check_positive("seq_len", 3)
        3
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} {value!r} is invalid; expected a positive integer")
    return int(value)


def make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    """One generator from either a ``torch.Generator`` or an integer seed (not both).

    With neither, returns ``None`` (torch's global RNG is used).

    Example:
        >>> make_generator(None, 3).initial_seed()
        3
    """
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed {seed!r} is invalid; expected an integer")
        return torch.Generator().manual_seed(int(seed))
    return generator


def uniforms(
    shape: tuple[int, ...], generator: torch.Generator | None, seed: int | None = None
) -> Float[Tensor, "..."]:
    """float64 uniforms in ``[0, 1)`` drawn on the generator's device (CPU by default).

    Example:
        >>> uniforms((2, 3), None, seed=0).shape
        torch.Size([2, 3])
    """
    gen = make_generator(generator, seed)
    device = gen.device if gen is not None else "cpu"
    return torch.rand(shape, generator=gen, dtype=torch.float64, device=device)


def format_counts_json(data: dict[str, Any]) -> str:
    """Serialise a count table with one matrix row per line (diff-friendly, compact).

    Example:
        >>> print(format_counts_json({"a": [[1, 2], [3, 4]]}), end="")
        {
          "a": [
            [1, 2],
            [3, 4]
          ]
        }
    """
    lines = ["{"]
    items = list(data.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], list):
            rows = [f"    {json.dumps(row, separators=(', ', ': '))}" for row in value]
            lines.append(f"  {json.dumps(key)}: [")
            lines.append(",\n".join(rows))
            lines.append(f"  ]{comma}")
        elif isinstance(value, list):
            text = json.dumps(value, separators=(", ", ": "))
            lines.append(f"  {json.dumps(key)}: {text}{comma}")
        else:
            text = json.dumps(value, indent=2, ensure_ascii=True).replace("\n", "\n  ")
            lines.append(f"  {json.dumps(key)}: {text}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=4)
def _shipped_table_text(name: str) -> str:
    return resources.files("tlassoc.data").joinpath(name).read_text(encoding="utf-8")


def _shipped_table(name: str) -> Any:
    return json.loads(_shipped_table_text(name))
