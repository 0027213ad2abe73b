"""The bigram-with-triggers task (Bietti et al. 2023), sampled in batches.

Each sequence picks ``k`` trigger tokens and, for each trigger, an output token. The first token
comes from the unigram ``π_u``; afterwards, if the previous token is a trigger the next one is
that trigger's output, otherwise it is drawn from the global bigram ``π_b(·|previous)``. The
trigger → output pairs are the sequence's in-context knowledge; the bigrams are global knowledge.
The full data model, labels and statistics: docs/method.md, "Data model".

Sampling is vectorised: all random numbers are drawn up front, and the Markov chain advances one
position per step with one batched inverse-CDF lookup (``torch.searchsorted``) over the whole
batch. The same seed gives the same bits on every device.

Example:
    >>> from tlassoc.data.bigram import BigramModel
    >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), batch_size=4, seq_len=32)
    >>> batch = task.sample(seed=0)
    >>> batch.tokens.shape, batch.labels.shape, batch.triggers.shape
    (torch.Size([4, 32]), torch.Size([4, 32]), torch.Size([4, 5]))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tlassoc.data.bigram import (
    BigramModel,
    check_positive,
    inverse_cdf,
    make_generator,
    run_chain,
    uniforms,
)
from tlassoc.tokenizer import WordTokenizer

TRIGGER_MODES = ("fixed", "random")
OUTPUT_MODES = ("uniform", "bigram")
OUTPUT_SPLITS = ("all", "train", "test")


@dataclass
class TriggerBatch:
    """One batch of sequences with next-token targets and in-context labels.

    Attributes:
        tokens: model inputs, ``[batch, seq_len]`` int64.
        targets: the next token at every position (``seq[:, 1:]``), ``[batch, seq_len]``.
        labels: per *target*: ``0`` = ordinary (global) token, ``n >= 1`` = the target follows
            a trigger for the ``n``-th time in this sequence (so it is the ``n``-th occurrence of
            that trigger's output); ``n >= 2`` is predictable only in context. ``-1`` marks a
            target with nothing to predict (the analogy task's next capital).
        triggers: the trigger tokens of each sequence, ``[batch, k]``.
        outputs: ``outputs[b, j]`` is the output of ``triggers[b, j]``, ``[batch, k]``.
        prefix_len: number of leading tokens guaranteed to contain no trigger.

    Example:
        >>> b = TriggerBatch(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]),
        ...                  torch.tensor([[1, 0]]), torch.tensor([[0]]), torch.tensor([[1]]))
        >>> b.batch_size, b.seq_len
        (1, 2)
    """

    tokens: Int[Tensor, "batch seq"]
    targets: Int[Tensor, "batch seq"]
    labels: Int[Tensor, "batch seq"]
    triggers: Int[Tensor, "batch k"]
    outputs: Int[Tensor, "batch k"]
    prefix_len: int = field(default=0)

    @property
    def batch_size(self) -> int:
        """Number of sequences."""
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        """Number of input positions per sequence."""
        return self.tokens.shape[1]

    @property
    def sequences(self) -> Int[Tensor, "batch seq_plus_1"]:
        """The full sampled sequences: ``tokens`` followed by the last target."""
        return torch.cat([self.tokens, self.targets[:, -1:]], dim=1)

    def to(self, device: torch.device | str) -> TriggerBatch:
        """A copy with every tensor on ``device``.

        Example:
            >>> b = TriggerBatch(*(torch.zeros(1, 1, dtype=torch.long) for _ in range(5)))
            >>> b.to("cpu").tokens.device.type
            'cpu'
        """
        moved = {
            f.name: getattr(self, f.name).to(device)
            if isinstance(getattr(self, f.name), Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return TriggerBatch(**moved)

    def decode(self, i: int, tokenizer, mark: bool = False) -> str:
        """Text of sequence ``i`` (its ``seq_len + 1`` sampled tokens).

        Args:
            i: sequence index in the batch.
            tokenizer: a :class:`~tlassoc.tokenizer.CharTokenizer` or ``WordTokenizer``.
            mark: wrap every token that is a trigger's output (label ``>= 1``) in brackets.

        Example:
            >>> from tlassoc.tokenizer import CharTokenizer
            >>> b = TriggerBatch(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]),
            ...                  torch.tensor([[1, 0]]), torch.tensor([[0]]), torch.tensor([[1]]))
            >>> b.decode(0, CharTokenizer("ab"), mark=True)
            'a[b]b'
        """
        if not -self.batch_size <= i < self.batch_size:
            raise ValueError(f"sequence index {i} is outside the batch of {self.batch_size}")
        pieces = tokenizer.id_to_str(self.sequences[i].tolist())
        if mark:
            labels = self.labels[i].tolist()
            pieces = [pieces[0]] + [
                f"[{p}]" if lab >= 1 else p for p, lab in zip(pieces[1:], labels, strict=True)
            ]
        sep = " " if isinstance(tokenizer, WordTokenizer) else ""
        return sep.join(pieces)


def count_labels(
    tokens: Int[Tensor, "batch seq"], triggers: Int[Tensor, "batch k"]
) -> Int[Tensor, "batch seq"]:
    """Labels of the targets: ``n`` where ``tokens[b, t]`` is a trigger seen for the ``n``-th time.

    Example:
        >>> count_labels(torch.tensor([[2, 0, 2, 2]]), torch.tensor([[2]])).tolist()
        [[1, 0, 2, 3]]
    """
    labels = torch.zeros(tokens.shape, dtype=torch.int32, device=tokens.device)
    for j in range(triggers.shape[1]):  # k is small; each pass is one batched cumsum
        hits = (tokens == triggers[:, j : j + 1]).to(torch.int32)
        labels.addcmul_(hits.cumsum(1, dtype=torch.int32), hits)
    return labels.to(torch.int64)


@dataclass
class TriggerBigramTask:
    """Configuration and sampler of the bigram-with-triggers task.

    Args:
        bigram: the global bigram model (e.g. ``BigramModel.tiny_shakespeare()``).
        n_triggers: ``k``, the number of triggers per sequence (0 gives the plain bigram chain).
        trigger_mode: ``"fixed"``: the ``k`` most frequent tokens by unigram (ties: lower id);
            ``"random"``: per sequence, ``k`` tokens drawn from ``π_u`` without replacement.
        output_mode: ``"uniform"`` over the allowed outputs, or ``"bigram"`` from
            ``π_b(·|trigger)`` restricted to the allowed outputs (a trigger whose successors are
            all disallowed falls back to uniform over the allowed outputs).
        output_not_trigger: never let a trigger's output equal the trigger itself.
        output_split: ``"all"``; ``"train"``: outputs among the first ``n_train_outputs`` ids;
            ``"test"``: outputs among the other ids (out-of-distribution evaluation).
        n_train_outputs: size of the training part of the output split (48 = 75 % of 65);
            only checked and used when ``output_split`` is not ``"all"``.
        seq_len: input positions per sequence (``seq_len + 1`` tokens are sampled).
        batch_size: sequences per batch.
        device: where the batches live.

    Example:
        >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare())
        >>> "".join(task.bigram.vocab[i] for i in task.fixed_triggers.tolist())
        ' etoa'
    """

    bigram: BigramModel
    n_triggers: int = 5
    trigger_mode: str = "fixed"
    output_mode: str = "uniform"
    output_not_trigger: bool = False
    output_split: str = "all"
    n_train_outputs: int = 48
    seq_len: int = 256
    batch_size: int = 512
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.bigram, BigramModel):
            raise ValueError(f"bigram must be a BigramModel, got {type(self.bigram).__name__}")
        d = self.bigram.d_vocab
        k = self.n_triggers
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"n_triggers {k!r} is invalid; expected an integer >= 0")
        if k > d:
            raise ValueError(f"n_triggers {k} > d_vocab {d}")
        _check_choice("trigger_mode", self.trigger_mode, TRIGGER_MODES)
        _check_choice("output_mode", self.output_mode, OUTPUT_MODES)
        _check_choice("output_split", self.output_split, OUTPUT_SPLITS)
        n_seen = int((self.bigram.unigram_counts > 0).sum())
        if k > n_seen:
            raise ValueError(
                f"n_triggers {k} > {n_seen} tokens with non-zero unigram count; "
                "triggers must be tokens that occur"
            )
        n_train = self.n_train_outputs
        bad_type = isinstance(n_train, bool) or not isinstance(n_train, int)
        if bad_type or (self.output_split != "all" and not 0 < n_train < d):
            raise ValueError(f"n_train_outputs {n_train!r} is invalid; expected 0 < n < {d}")
        self.seq_len = check_positive("seq_len", self.seq_len)
        self.batch_size = check_positive("batch_size", self.batch_size)
        if not isinstance(self.output_not_trigger, bool):
            raise ValueError(f"output_not_trigger {self.output_not_trigger!r} is not a bool")
        self.device = torch.device(self.device)
        n_allowed = int(self.allowed_outputs.sum())
        if self.output_not_trigger and n_allowed < 2:
            raise ValueError(
                f"output_split {self.output_split!r} allows {n_allowed} output token(s); "
                "output_not_trigger needs at least 2"
            )

    # ------------------------------------------------------------------ derived
    @property
    def tokenizer(self):
        """The bigram model's tokenizer."""
        return self.bigram.tokenizer

    @property
    def fixed_triggers(self) -> Int[Tensor, " k"]:
        """The ``k`` most frequent tokens by unigram count (ties broken by lower id)."""
        order = torch.sort(self.bigram.unigram_counts, descending=True, stable=True).indices
        return order[: self.n_triggers].clone()

    @property
    def allowed_outputs(self) -> Tensor:
        """Boolean mask ``[d_vocab]`` of the tokens the output split allows."""
        ids = torch.arange(self.bigram.d_vocab)
        if self.output_split == "train":
            return ids < self.n_train_outputs
        if self.output_split == "test":
            return ids >= self.n_train_outputs
        return torch.ones(self.bigram.d_vocab, dtype=torch.bool)

    # ------------------------------------------------------------------ sampling
    def sample_triggers(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[Int[Tensor, "batch k"], Int[Tensor, "batch k"]]:
        """Draw ``(triggers, outputs)`` for ``batch_size`` sequences (on the generator's device).

        Example:
            >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), n_triggers=2)
            >>> trig, out = task.sample_triggers(3, torch.Generator().manual_seed(0))
            >>> trig.shape, out.shape
            (torch.Size([3, 2]), torch.Size([3, 2]))
        """
        dev = generator.device if generator is not None else torch.device("cpu")
        k, d = self.n_triggers, self.bigram.d_vocab
        if self.trigger_mode == "fixed":
            triggers = self.fixed_triggers.to(dev).expand(batch_size, k).clone()
        else:
            # Without replacement, proportional to π_u (Efraimidis–Spirakis): the k smallest
            # keys -log(u) / π_u(v); tokens of zero probability get key +inf.
            unigram = self.bigram.unigram_counts.to(dev, torch.float64)
            keys = -uniforms((batch_size, d), generator).log() / unigram
            triggers = keys.topk(k, dim=1, largest=False, sorted=True).indices
        if k == 0:
            return triggers, triggers.clone()
        u = uniforms((batch_size, k), generator)
        if self.output_mode == "uniform":
            return triggers, self._uniform_outputs(triggers, u)
        allowed = self.allowed_outputs.to(dev).expand(batch_size, k, d).clone()
        if self.output_not_trigger:
            allowed.scatter_(2, triggers.unsqueeze(-1), False)
        weights = self.bigram._conditional64().to(dev)[triggers] * allowed
        empty = weights.sum(-1, keepdim=True) == 0
        weights = torch.where(empty, allowed.to(weights.dtype), weights)
        outputs = inverse_cdf(weights.view(-1, d), u.view(-1))
        return triggers, outputs.view(batch_size, k)

    def _uniform_outputs(self, triggers: Tensor, u: Tensor) -> Tensor:
        """Uniform draw from the allowed outputs (minus the trigger itself if requested)."""
        allowed = self.allowed_outputs.nonzero().flatten().to(triggers.device)  # sorted ids
        m = allowed.numel()
        if not self.output_not_trigger:
            return allowed[(u * m).to(torch.int64).clamp_(max=m - 1)]
        # Position of the trigger in the allowed list, and whether it is in it at all.
        pos = torch.searchsorted(allowed, triggers)
        inside = allowed[pos.clamp(max=m - 1)] == triggers
        m_eff = m - inside.to(torch.int64)
        index = (u * m_eff).to(torch.int64)
        index = torch.minimum(index, m_eff - 1)
        index += (inside & (index >= pos)).to(torch.int64)  # skip over the trigger
        return allowed[index]

    def sample(
        self,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        *,
        trigger_free_prefix: int = 0,
        batch_size: int | None = None,
        seq_len: int | None = None,
    ) -> TriggerBatch:
        """Sample one batch.

        Args:
            generator: source of randomness (its device is where the random numbers are drawn).
            seed: alternative to ``generator``; with neither, torch's global RNG is used.
            trigger_free_prefix: the first ``L`` tokens contain no trigger of their sequence:
                they follow the bigram chain with triggers removed from every row (a row with
                all its mass on triggers falls back to the unigram without triggers); the usual
                process continues from token ``L`` on. For evaluation beyond the training length.
            batch_size: overrides the configured batch size.
            seq_len: overrides the configured sequence length.

        Example:
            >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), batch_size=2, seq_len=8)
            >>> task.sample(seed=1).tokens.dtype
            torch.int64
        """
        gen = make_generator(generator, seed)
        n = check_positive("batch_size", batch_size if batch_size is not None else self.batch_size)
        length = check_positive("seq_len", seq_len if seq_len is not None else self.seq_len)
        prefix = self._check_prefix(trigger_free_prefix, length)
        triggers, outputs = self.sample_triggers(n, gen)
        u = uniforms((length + 1, n), gen)  # time-major: row t drives position t
        dev = self.device
        triggers, outputs, u = triggers.to(dev), outputs.to(dev), u.to(dev)
        seq = self._chain(triggers, outputs, u, prefix)
        tokens, targets = seq[:, :-1], seq[:, 1:]
        labels = count_labels(tokens, triggers)
        return TriggerBatch(tokens, targets, labels, triggers, outputs, prefix_len=prefix)

    def batches(self, seed: int | None = None) -> Iterator[TriggerBatch]:
        """Endless stream of fresh batches from one generator seeded with ``seed``.

        Example:
            >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), batch_size=2, seq_len=4)
            >>> stream = task.batches(seed=0)
            >>> next(stream).tokens.shape
            torch.Size([2, 4])
        """
        gen = make_generator(None, seed)
        while True:
            yield self.sample(generator=gen)

    def place_segment(
        self,
        segment: TriggerBatch,
        prefix_len: int,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> TriggerBatch:
        """Put ``prefix_len`` trigger-free bigram tokens in front of an existing batch.

        The result holds the *same* in-context segment (tokens, triggers, outputs, labels) moved
        ``prefix_len`` positions later, so in-context accuracy can be compared with the segment
        placed early and placed beyond a training length. The prefix avoids the segment's
        triggers; the transition from the prefix into the segment is not a bigram draw and is
        labelled 0.

        Example:
            >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), batch_size=2, seq_len=8)
            >>> late = task.place_segment(task.sample(seed=0), 16, seed=1)
            >>> late.seq_len, late.prefix_len
            (24, 16)
        """
        if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 0:
            raise ValueError(f"prefix_len {prefix_len!r} is invalid; expected an integer >= 0")
        if prefix_len == 0:
            return segment.to(self.device)
        gen = make_generator(generator, seed)
        segment = segment.to(self.device)
        u = uniforms((prefix_len, segment.batch_size), gen).to(self.device)
        self._check_prefix_possible(segment.triggers)
        prefix = self._trigger_free(segment.triggers, u)
        full = torch.cat([prefix, segment.sequences], dim=1)
        zeros = torch.zeros_like(prefix)
        labels = torch.cat([zeros, segment.labels], dim=1)
        return TriggerBatch(
            full[:, :-1],
            full[:, 1:],
            labels,
            segment.triggers,
            segment.outputs,
            prefix_len=prefix_len + segment.prefix_len,
        )

    # ------------------------------------------------------------------ internals
    def _check_prefix(self, prefix: int, length: int) -> int:
        if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= length:
            raise ValueError(
                f"trigger_free_prefix {prefix!r} is invalid; expected 0 <= L <= seq_len {length}"
            )
        if prefix > 0 and self.n_triggers >= int((self.bigram.unigram_counts > 0).sum()):
            raise ValueError(
                f"trigger_free_prefix {prefix} needs a non-trigger token, but all tokens that "
                f"occur are among the {self.n_triggers} triggers"
            )
        return prefix

    def _check_prefix_possible(self, triggers: Tensor) -> None:
        seen = (self.bigram.unigram_counts > 0).to(triggers.device)
        free = seen.expand(triggers.shape[0], -1).clone()
        free.scatter_(1, triggers, False)
        if not bool(free.any(1).all()):
            raise ValueError("a trigger-free prefix is impossible: every token is a trigger")

    def _trigger_free(self, triggers: Tensor, u: Tensor) -> Tensor:
        """Bigram chain of ``u.shape[0]`` tokens that never emits a sequence's trigger.

        ``u`` is time-major ``[steps, batch]``; returns ``[batch, steps]``.
        """
        length, n = u.shape
        d = self.bigram.d_vocab
        dev = u.device
        allowed = torch.ones((n, d), dtype=torch.bool, device=dev)
        allowed.scatter_(1, triggers, False)
        unigram = self.bigram.unigram_counts.to(dev, torch.float64) * allowed
        cond = self.bigram._conditional64().to(dev)
        out = torch.empty((n, length), dtype=torch.int64, device=dev)
        prev = inverse_cdf(unigram, u[0])
        out[:, 0] = prev
        for t in range(1, length):
            weights = cond.index_select(0, prev) * allowed
            empty = weights.sum(-1, keepdim=True) == 0
            weights = torch.where(empty, unigram, weights)
            prev = inverse_cdf(weights, u[t])
            out[:, t] = prev
        return out

    def _chain(self, triggers: Tensor, outputs: Tensor, u: Tensor, prefix: int) -> Tensor:
        """Run the trigger process for ``u.shape[0]`` tokens; the first ``prefix`` are free."""
        total, n = u.shape
        d = self.bigram.d_vocab
        tables = self.bigram.tables(u.device)
        # After token v, sequence b uses bigram row v, or row d + o (always o) if v is a trigger
        # of b with output o.
        row_of = torch.arange(d, device=u.device).expand(n, d).clone()
        row_of.scatter_(1, triggers, outputs + d)
        if prefix > 0:
            head = self._trigger_free(triggers, u[:prefix])
            tail = run_chain(tables, head[:, -1], u[prefix:], row_of)
            return torch.cat([head, tail[:, 1:]], dim=1)
        first = torch.searchsorted(tables.first, u[0], right=True)
        return run_chain(tables, first, u[1:], row_of)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r} is unknown; expected one of {list(choices)}")


def make_task(config: Any, batch_size: int = 512, device: Any = "cpu") -> TriggerBigramTask:
    """The :class:`TriggerBigramTask` a :class:`~tlassoc.config.TaskConfig` describes, on the
    shipped Tiny Shakespeare bigram statistics.

    Example:
        >>> from tlassoc.config import TaskConfig
        >>> make_task(TaskConfig(seq_len=32), batch_size=4).sample(seed=0).tokens.shape
        torch.Size([4, 32])
    """
    from tlassoc.config import TaskConfig

    if not isinstance(config, TaskConfig):
        raise TypeError(f"config={type(config).__name__}; expected a TaskConfig")
    return TriggerBigramTask(
        BigramModel.tiny_shakespeare(),
        n_triggers=config.n_triggers,
        trigger_mode=config.trigger_mode,
        output_mode=config.output_mode,
        output_not_trigger=config.output_not_trigger,
        output_split=config.output_split,
        n_train_outputs=config.n_train_outputs,
        seq_len=config.seq_len,
        batch_size=batch_size,
        device=device,
    )
