"""Capital–country analogy data: the ``questions-words.txt`` format and an in-context task.

``parse_questions_words`` reads Google's analogy file format (word2vec). ``capital_world_pairs``
returns the 116 (capital, country) pairs of its ``capital-world`` section from a table shipped
with tlassoc (``capital_world_pairs.csv``, rebuilt by ``python -m tlassoc.data.build_tables``).

:class:`AnalogyTask` is **tlassoc's own design** (docs/method.md, "Choices that are ours"; the
papers do not publish theirs). Its vocabulary is the 232 words, capitals first (ids ``0..n-1``)
and their countries after them (id of the country of capital ``i`` is ``n + i``). A sequence is a
run of ``capital country`` pairs:

- global knowledge: a capital is followed by its true country;
- in-context knowledge: per sequence, ``k`` capitals (the triggers) are remapped to a random
  *other* country, and every occurrence of such a capital in that sequence is followed by its
  remapped country;
- each pair slot holds one of the triggers with probability ``p_trigger`` (trigger uniform among
  the ``k``), otherwise a uniformly drawn non-trigger capital;
- labels of the targets: ``0`` = a capital's true country (global pair), ``n >= 1`` = the ``n``-th
  occurrence of a remapped pair's country, ``-1`` = the capital that opens the next pair
  (random, nothing to predict);
- ``trigger_free_prefix=L`` keeps the remapped pairs out of the first ``L`` tokens.

Example:
    >>> task = AnalogyTask(n_triggers=2, batch_size=3, seq_len=10)
    >>> batch = task.sample(seed=0)
    >>> batch.tokens.shape, task.d_vocab
    (torch.Size([3, 10]), 232)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch
from torch import Tensor

from tlassoc.data.bigram import check_positive, make_generator
from tlassoc.data.triggers import TriggerBatch, count_labels
from tlassoc.tokenizer import WordTokenizer

CAPITAL_WORLD_TABLE = "capital_world_pairs.csv"


def parse_questions_words(text: str) -> dict[str, list[tuple[str, str, str, str]]]:
    """Parse the ``questions-words.txt`` analogy format.

    Section lines start with ``": "`` followed by the section name; every other non-blank line is
    one question of exactly four whitespace-separated words. Blank lines are skipped.

    Raises:
        ValueError: naming the 1-based line number, for a question that is not four words, a
            question before any section, an empty or repeated section name.

    Example:
        >>> parse_questions_words(": capitals\\nAthens Greece Berlin Germany\\n")
        {'capitals': [('Athens', 'Greece', 'Berlin', 'Germany')]}
    """
    if not isinstance(text, str):
        raise ValueError(f"expected the file text as a str, got {type(text).__name__}")
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    current: list[tuple[str, str, str, str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith(":"):
            name = line[1:].strip()
            if not line.startswith(": ") or not name or len(name.split()) != 1:
                raise ValueError(
                    f"line {number}: malformed section line {line!r}; expected ': section-name'"
                )
            if name in sections:
                raise ValueError(f"line {number}: section {name!r} appears a second time")
            current = sections[name] = []
            continue
        words = line.split()
        if current is None:
            raise ValueError(f"line {number}: question {line!r} comes before any ': section' line")
        if len(words) != 4:
            raise ValueError(f"line {number}: question {line!r} has {len(words)} words; expected 4")
        current.append((words[0], words[1], words[2], words[3]))
    return sections


def pairs_from_section(questions: Sequence[tuple[str, str, str, str]]) -> list[tuple[str, str]]:
    """Distinct ``(word1, word2)`` and ``(word3, word4)`` pairs of a section, sorted.

    Example:
        >>> pairs_from_section([("a", "A", "b", "B"), ("b", "B", "a", "A")])
        [('a', 'A'), ('b', 'B')]
    """
    pairs = {(q[0], q[1]) for q in questions} | {(q[2], q[3]) for q in questions}
    return sorted(pairs)


def capital_world_pairs() -> list[tuple[str, str]]:
    """The 116 (capital, country) pairs of ``capital-world``, sorted by capital (shipped table).

    Example:
        >>> pairs = capital_world_pairs()
        >>> len(pairs), ("Paris", "France") in pairs
        (116, True)
    """
    return list(_shipped_pairs())


@lru_cache(maxsize=1)
def _shipped_pairs() -> tuple[tuple[str, str], ...]:
    text = resources.files("tlassoc.data").joinpath(CAPITAL_WORLD_TABLE).read_text("utf-8")
    return tuple(read_pairs_csv(text))


def read_pairs_csv(text: str) -> list[tuple[str, str]]:
    """Read ``capital,country`` rows, skipping ``#`` comment lines and the header.

    Example:
        >>> read_pairs_csv("# note\\ncapital,country\\nParis,France\\n")
        [('Paris', 'France')]
    """
    pairs = []
    header_seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split(",")
        if len(cells) != 2 or not all(c.strip() for c in cells):
            raise ValueError(f"line {number}: {line!r} is not 'capital,country'")
        if not header_seen:
            header_seen = True
            if cells == ["capital", "country"]:
                continue
        pairs.append((cells[0].strip(), cells[1].strip()))
    return pairs


@dataclass
class AnalogyTask:
    """Sequences of (capital, country) pairs with sequence-specific remapped capitals.

    Our design (see the module docstring): vocabulary = capitals then countries; triggers are
    capitals remapped, in this sequence only, to another country.

    Args:
        pairs: (capital, country) pairs; default :func:`capital_world_pairs` (116 pairs).
        n_triggers: ``k`` remapped capitals per sequence (0 = global pairs only).
        p_trigger: probability that a pair slot holds a remapped capital.
        seq_len: input positions per sequence (``seq_len + 1`` tokens are sampled).
        batch_size: sequences per batch.
        device: where the batches live.

    Example:
        >>> task = AnalogyTask(batch_size=1, seq_len=6, n_triggers=1)
        >>> task.tokenizer.decode(task.sample(seed=0).tokens[0])  # doctest: +SKIP
        'Vienna Austria Rome Italy Nairobi Kenya'
    """

    pairs: Sequence[tuple[str, str]] | None = None
    n_triggers: int = 3
    p_trigger: float = 0.25
    seq_len: int = 256
    batch_size: int = 512
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        pairs = [tuple(p) for p in (self.pairs if self.pairs is not None else _shipped_pairs())]
        if not pairs:
            raise ValueError("pairs is empty; expected at least one (capital, country) pair")
        bad = [p for p in pairs if len(p) != 2 or not all(isinstance(w, str) for w in p)]
        if bad:
            raise ValueError(f"pair {bad[0]!r} is not a (capital, country) pair of strings")
        words = [p[0] for p in pairs] + [p[1] for p in pairs]
        if len(set(words)) != len(words):
            dup = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"word(s) {dup[:5]!r} occur in more than one pair or role")
        self.pairs = [(str(a), str(b)) for a, b in pairs]
        n = len(self.pairs)
        k = self.n_triggers
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"n_triggers {k!r} is invalid; expected an integer >= 0")
        if k > n:
            raise ValueError(f"n_triggers {k} > number of capitals {n}")
        if k > 0 and n < 2:
            raise ValueError("remapping needs at least 2 pairs (a capital needs another country)")
        p = self.p_trigger
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p_trigger {p!r} is invalid; expected a probability in [0, 1]")
        if k == n and p < 1.0:
            raise ValueError(
                f"n_triggers {k} = number of capitals leaves no global capital; "
                "use p_trigger=1.0 or fewer triggers"
            )
        self.seq_len = check_positive("seq_len", self.seq_len)
        self.batch_size = check_positive("batch_size", self.batch_size)
        self.device = torch.device(self.device)
        self.tokenizer = WordTokenizer(words)

    @property
    def n_pairs(self) -> int:
        """Number of (capital, country) pairs."""
        return len(self.pairs)

    @property
    def d_vocab(self) -> int:
        """Vocabulary size (two words per pair)."""
        return 2 * self.n_pairs

    @property
    def vocab(self) -> list[str]:
        """Capitals (ids ``0..n-1``) then their countries (ids ``n..2n-1``)."""
        return self.tokenizer.vocab

    def sample(
        self,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        *,
        trigger_free_prefix: int = 0,
        batch_size: int | None = None,
        seq_len: int | None = None,
    ) -> TriggerBatch:
        """Sample one batch of pair sequences.

        Args:
            generator: source of randomness; or ``seed``; with neither, torch's global RNG.
            trigger_free_prefix: no remapped capital occurs among the first ``L`` tokens.
            batch_size: overrides the configured batch size.
            seq_len: overrides the configured sequence length.

        Returns:
            A :class:`TriggerBatch`: ``triggers`` are the remapped capitals' ids and ``outputs``
            the ids of the countries they map to in this sequence.

        Example:
            >>> batch = AnalogyTask(batch_size=2, seq_len=8).sample(seed=0)
            >>> batch.labels.shape
            torch.Size([2, 8])
        """
        gen = make_generator(generator, seed)
        b = check_positive("batch_size", batch_size if batch_size is not None else self.batch_size)
        length = check_positive("seq_len", seq_len if seq_len is not None else self.seq_len)
        if (
            isinstance(trigger_free_prefix, bool)
            or not isinstance(trigger_free_prefix, int)
            or not 0 <= trigger_free_prefix <= length
        ):
            raise ValueError(
                f"trigger_free_prefix {trigger_free_prefix!r} is invalid; "
                f"expected 0 <= L <= seq_len {length}"
            )
        n, k = self.n_pairs, self.n_triggers
        if k == n and trigger_free_prefix > 0:
            raise ValueError("trigger_free_prefix needs a non-trigger capital; all are triggers")
        dev = gen.device if gen is not None else torch.device("cpu")
        slots = (length + 2) // 2  # pairs needed for length + 1 tokens
        # Triggers: k distinct capitals per sequence; each remapped to one of the other countries.
        order = torch.rand((b, n), generator=gen, device=dev).argsort(dim=1)
        triggers = order[:, :k]
        shift = torch.randint(1, max(n, 2), (b, k), generator=gen, device=dev)
        remapped = (triggers + shift) % n
        # Slots: a trigger with probability p_trigger (outside the prefix), else a free capital.
        slot_pos = 2 * torch.arange(slots, device=dev)
        use_trigger = torch.rand((b, slots), generator=gen, device=dev) < self.p_trigger
        use_trigger &= (slot_pos >= trigger_free_prefix).unsqueeze(0)
        if k == 0:
            use_trigger[:] = False
        elif k == n:
            use_trigger[:] = True
        # The capital of each slot: a uniform trigger, or a uniform non-trigger capital.
        which = torch.randint(0, max(k, 1), (b, slots), generator=gen, device=dev)
        pick = torch.randint(0, max(n - k, 1), (b, slots), generator=gen, device=dev)
        free_capital = order[:, k:].gather(1, pick) if k < n else pick
        if k > 0:
            capitals = torch.where(use_trigger, triggers.gather(1, which), free_capital)
            countries = torch.where(use_trigger, remapped.gather(1, which), capitals) + n
        else:
            capitals = free_capital
            countries = capitals + n
        seq = torch.stack([capitals, countries], dim=2).reshape(b, 2 * slots)[:, : length + 1]
        seq, triggers = seq.to(self.device), triggers.to(self.device)
        outputs = remapped.to(self.device) + n
        tokens, targets = seq[:, :-1], seq[:, 1:]
        labels = count_labels(tokens, triggers)
        is_country = torch.arange(length, device=self.device) % 2 == 1
        labels = labels.masked_fill(is_country.unsqueeze(0), -1)
        return TriggerBatch(
            tokens, targets, labels, triggers, outputs, prefix_len=trigger_free_prefix
        )

    def batches(self, seed: int | None = None) -> Iterator[TriggerBatch]:
        """Endless stream of fresh batches from one generator seeded with ``seed``.

        Example:
            >>> next(AnalogyTask(batch_size=2, seq_len=4).batches(seed=0)).tokens.shape
            torch.Size([2, 4])
        """
        gen = make_generator(None, seed)
        while True:
            yield self.sample(generator=gen)

    def true_country(self, capitals: Tensor) -> Tensor:
        """Ids of the true countries of capital ids ``capitals``.

        Example:
            >>> AnalogyTask().true_country(torch.tensor([0, 1])).tolist()
            [116, 117]
        """
        if capitals.numel() and (capitals.min() < 0 or capitals.max() >= self.n_pairs):
            raise ValueError(f"capital ids must lie in [0, {self.n_pairs})")
        return capitals + self.n_pairs
