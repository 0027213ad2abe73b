"""TriggerBigramTask: properties of sampled batches, statistics, options and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tlassoc.data import BigramModel, TriggerBatch, TriggerBigramTask

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def shakespeare() -> BigramModel:
    return BigramModel.tiny_shakespeare()


def reference_labels(tokens: list[int], triggers: list[int]) -> list[int]:
    """Plain-Python recount: n if tokens[t] is a trigger seen for the n-th time."""
    seen: dict[int, int] = {}
    labels = []
    for tok in tokens:
        if tok in triggers:
            seen[tok] = seen.get(tok, 0) + 1
            labels.append(seen[tok])
        else:
            labels.append(0)
    return labels


@st.composite
def small_bigram(draw) -> BigramModel:
    d = draw(st.integers(2, 7))
    flat = draw(st.lists(st.integers(0, 4), min_size=d * d, max_size=d * d))
    counts = torch.tensor(flat).view(d, d)
    unigram = counts.sum(0) + counts.sum(1)
    if int(unigram.sum()) == 0:
        unigram[0] = 1
    return BigramModel("abcdefg"[:d], unigram, counts)


@st.composite
def task_config(draw):
    bigram = draw(st.one_of(small_bigram(), st.just(BigramModel.tiny_shakespeare())))
    d = bigram.d_vocab
    n_seen = int((bigram.unigram_counts > 0).sum())
    k = draw(st.integers(0, min(n_seen, 6)))
    split = draw(st.sampled_from(["all", "train", "test"]))
    n_train = draw(st.integers(1, d - 1))
    not_trigger = draw(st.booleans())
    if not_trigger and split != "all":
        assume((n_train if split == "train" else d - n_train) >= 2)
    seq_len = draw(st.integers(1, 40))
    prefix = draw(st.integers(0, seq_len)) if k < n_seen else 0
    task = TriggerBigramTask(
        bigram,
        n_triggers=k,
        trigger_mode=draw(st.sampled_from(["fixed", "random"])),
        output_mode=draw(st.sampled_from(["uniform", "bigram"])),
        output_not_trigger=not_trigger,
        output_split=split,
        n_train_outputs=n_train,
        seq_len=seq_len,
        batch_size=draw(st.integers(1, 6)),
    )
    return task, prefix, draw(st.integers(0, 2**32))


@SETTINGS
@given(task_config())
def test_batch_properties(config):
    task, prefix, seed = config
    bigram = task.bigram
    batch = task.sample(seed=seed, trigger_free_prefix=prefix)
    n, length, k = task.batch_size, task.seq_len, task.n_triggers
    for name in ("tokens", "targets", "labels"):
        tensor = getattr(batch, name)
        assert tensor.shape == (n, length) and tensor.dtype == torch.int64, name
    assert batch.triggers.shape == (n, k) and batch.outputs.shape == (n, k)
    assert torch.equal(batch.tokens[:, 1:], batch.targets[:, :-1])
    assert batch.prefix_len == prefix
    counts, unigram = bigram.bigram_counts, bigram.unigram_counts
    seen = (unigram > 0).nonzero().flatten().tolist()
    allowed = task.allowed_outputs
    for b in range(n):
        trig, out = batch.triggers[b].tolist(), batch.outputs[b].tolist()
        seq = batch.sequences[b].tolist()
        toks, tgts = seq[:-1], seq[1:]
        # Triggers: distinct, occurring tokens; fixed mode = the k most frequent.
        assert len(set(trig)) == k and set(trig) <= set(seen)
        if task.trigger_mode == "fixed":
            assert trig == task.fixed_triggers.tolist()
        # Outputs respect the split and the not-trigger option; bigram outputs are bigrams.
        for j, o in zip(trig, out, strict=True):
            assert bool(allowed[o])
            if task.output_not_trigger:
                assert o != j
            if task.output_mode == "bigram":
                options = (counts[j] > 0) & allowed
                if task.output_not_trigger:
                    options[j] = False
                assert bool(options[o]) or not bool(options.any())
        # After a trigger always comes its output.
        mapping = dict(zip(trig, out, strict=True))
        for src, tgt in zip(toks, tgts, strict=True):
            if src in mapping:
                assert tgt == mapping[src]
        # Labels are an exact recount.
        assert batch.labels[b].tolist() == reference_labels(toks, trig)
        # The trigger-free prefix holds no trigger.
        assert not set(seq[:prefix]) & set(trig)
        # Non-trigger transitions use bigrams that occur (or the documented fallbacks).
        assert int(unigram[seq[0]]) > 0
        for t, (src, tgt) in enumerate(zip(toks, tgts, strict=True)):
            if src in mapping:
                continue
            row = counts[src]
            if t + 1 < prefix:  # restricted to non-triggers, falling back to the unigram
                free = row.clone()
                free[trig] = 0
                assert tgt not in trig
                assert int(free[tgt]) > 0 or (int(free.sum()) == 0 and int(unigram[tgt]) > 0)
            else:
                assert int(row[tgt]) > 0 or (int(row.sum()) == 0 and int(unigram[tgt]) > 0)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**40), st.integers(0, 2**40))
def test_seeds(seed_a, seed_b):
    task = TriggerBigramTask(
        BigramModel.tiny_shakespeare(), trigger_mode="random", batch_size=4, seq_len=32
    )
    a = task.sample(seed=seed_a)
    again = task.sample(generator=torch.Generator().manual_seed(seed_a))
    for name in ("tokens", "targets", "labels", "triggers", "outputs"):
        assert torch.equal(getattr(a, name), getattr(again, name))
    if seed_a != seed_b:
        assert not torch.equal(a.sequences, task.sample(seed=seed_b).sequences)


def test_fixed_triggers_of_tiny_shakespeare(shakespeare):
    task = TriggerBigramTask(shakespeare)
    assert [shakespeare.vocab[i] for i in task.fixed_triggers.tolist()] == [" ", "e", "t", "o", "a"]
    assert (task.n_triggers, task.seq_len, task.batch_size) == (5, 256, 512)
    assert task.trigger_mode == "fixed" and task.output_mode == "uniform"
    assert task.tokenizer is shakespeare.tokenizer


def test_ood_split(shakespeare):
    train = TriggerBigramTask(shakespeare, output_split="train", batch_size=64, seq_len=8)
    test = TriggerBigramTask(shakespeare, output_split="test", batch_size=64, seq_len=8)
    out_train = train.sample(seed=0).outputs
    out_test = test.sample(seed=0).outputs
    assert int(out_train.max()) < 48 and int(out_test.min()) >= 48
    assert len(out_train.unique()) > 30 and len(out_test.unique()) == 17
    small = TriggerBigramTask(
        shakespeare, output_split="train", n_train_outputs=10, batch_size=16, seq_len=4
    )
    assert int(small.sample(seed=1).outputs.max()) < 10


def _tv_and_noise(cond: torch.Tensor, prev: torch.Tensor, nxt: torch.Tensor):
    """Pooled total variation of empirical transitions vs ``cond`` and its noise bound."""
    d = cond.shape[0]
    counts = torch.zeros(d, d, dtype=torch.float64)
    counts.index_put_((prev, nxt), torch.ones_like(prev, dtype=torch.float64), accumulate=True)
    n_i = counts.sum(1)
    p = cond.double()
    emp = counts / n_i.clamp(min=1).unsqueeze(1)
    tv = (0.5 * (emp - p).abs().sum(1) * n_i).sum() / n_i.sum()
    # E[TV_i] <= 1/2 Σ_j sqrt(p_ij (1 - p_ij) / n_i) (Jensen); the pooled TV concentrates
    # around ~0.8 of this bound, so "tv < bound" holds for the right sampler.
    noise = 0.5 * (p * (1 - p) / n_i.clamp(min=1).unsqueeze(1)).sqrt().sum(1)
    return float(tv), float((noise * n_i).sum() / n_i.sum())


def _non_trigger_transitions(batch: TriggerBatch):
    is_trigger = (batch.tokens.unsqueeze(-1) == batch.triggers.unsqueeze(1)).any(-1)
    return batch.tokens[~is_trigger], batch.targets[~is_trigger]


def test_transition_statistics_match_bigram_and_check_is_tight(shakespeare):
    cond = shakespeare.conditional
    task = TriggerBigramTask(shakespeare, batch_size=256, seq_len=256)
    tv, noise = _tv_and_noise(cond, *_non_trigger_transitions(task.sample(seed=123)))
    assert tv < noise, (tv, noise)
    # Deliberately wrong samplers fail the same check: rows permuted, and a mild 10 % uniform
    # contamination of every row.
    perm = torch.randperm(65, generator=torch.Generator().manual_seed(0))
    permuted = BigramModel(
        shakespeare.vocab, shakespeare.unigram_counts, shakespeare.bigram_counts[perm]
    )
    counts = shakespeare.bigram_counts
    mixed = BigramModel(
        shakespeare.vocab,
        shakespeare.unigram_counts,
        counts * 9 + counts.sum(1, keepdim=True) // 65,
    )
    for wrong in (permuted, mixed):
        wrong_task = TriggerBigramTask(wrong, batch_size=256, seq_len=256)
        assert wrong_task.fixed_triggers.tolist() == task.fixed_triggers.tolist()
        bad_tv, bad_noise = _tv_and_noise(
            cond, *_non_trigger_transitions(wrong_task.sample(seed=123))
        )
        assert bad_tv > 1.5 * bad_noise, (bad_tv, bad_noise)


def test_uniform_outputs_and_random_triggers_follow_their_laws(shakespeare):
    task = TriggerBigramTask(shakespeare, trigger_mode="random", batch_size=2000, seq_len=1)
    batch = task.sample(seed=5)
    # Outputs uniform over 65 tokens: each count ~ 10000/65 = 154 ± 12.
    out_counts = torch.bincount(batch.outputs.flatten(), minlength=65).double()
    assert float(out_counts.min()) > 100 and float(out_counts.max()) < 210
    # Without self-outputs on the test split: each trigger's output is uniform over the other
    # allowed ids.
    ood = TriggerBigramTask(
        shakespeare, output_not_trigger=True, output_split="test", batch_size=3000, seq_len=1
    )
    outs = ood.sample(seed=6).outputs
    t_col = ood.fixed_triggers.tolist().index(58)  # 't', itself in the test split
    per_token = torch.bincount(outs[:, t_col], minlength=65)
    assert int(per_token[58]) == 0 and int(per_token[:48].sum()) == 0
    assert int(per_token[48:].count_nonzero()) == 16
    assert int(per_token.max()) < 3000 / 16 * 1.4 and int(per_token[48:58].min()) > 3000 / 16 * 0.6
    # Bigram outputs follow π_b(·|trigger): 't' is most often followed by 'h'.
    bigram_out = TriggerBigramTask(shakespeare, output_mode="bigram", batch_size=500, seq_len=1)
    outs = bigram_out.sample(seed=7).outputs[:, t_col]
    assert shakespeare.vocab[int(outs.mode().values)] == "h"
    # The first trigger drawn is distributed as π_u.
    first = torch.bincount(batch.triggers[:, 0], minlength=65).double() / 2000
    assert float((first - shakespeare.unigram.double()).abs().sum()) / 2 < 0.06


def test_trigger_free_prefix_and_place_segment(shakespeare):
    task = TriggerBigramTask(shakespeare, trigger_mode="random", batch_size=16, seq_len=64)
    batch = task.sample(seed=9, trigger_free_prefix=40)
    in_prefix = batch.tokens[:, :40].unsqueeze(-1) == batch.triggers.unsqueeze(1)
    assert not bool(in_prefix.any())
    assert int(batch.labels[:, :39].max()) == 0
    assert int(batch.labels[:, 40:].max()) >= 1

    segment = task.sample(seed=10)
    late = task.place_segment(segment, 100, seed=11)
    assert late.seq_len == 164 and late.prefix_len == 100
    assert torch.equal(late.tokens[:, 100:], segment.tokens)
    assert torch.equal(late.targets[:, 100:], segment.targets)
    assert torch.equal(late.labels[:, 100:], segment.labels)
    assert torch.equal(late.triggers, segment.triggers)
    assert not bool((late.tokens[:, :100].unsqueeze(-1) == late.triggers.unsqueeze(1)).any())
    for b in range(late.batch_size):
        assert late.labels[b].tolist() == reference_labels(
            late.tokens[b].tolist(), late.triggers[b].tolist()
        )
    assert task.place_segment(segment, 0).tokens is not None


def test_batches_stream_and_batch_helpers(shakespeare):
    task = TriggerBigramTask(shakespeare, batch_size=3, seq_len=20)
    stream, again = task.batches(seed=1), task.batches(seed=1)
    first, second = next(stream), next(stream)
    assert not torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.tokens, next(again).tokens)
    moved = first.to("cpu")
    assert isinstance(moved, TriggerBatch) and torch.equal(moved.labels, first.labels)
    text = first.decode(0, shakespeare.tokenizer)
    assert len(text) == 21 and text == shakespeare.tokenizer.decode(first.sequences[0])
    marked = first.decode(0, shakespeare.tokenizer, mark=True)
    assert marked.count("[") == int((first.labels[0] >= 1).sum())
    with pytest.raises(ValueError, match="sequence index 3"):
        first.decode(3, shakespeare.tokenizer)
    overridden = task.sample(seed=0, batch_size=2, seq_len=7)
    assert overridden.tokens.shape == (2, 7)


def test_zero_triggers_is_the_plain_chain(shakespeare):
    batch = TriggerBigramTask(shakespeare, n_triggers=0, batch_size=4, seq_len=16).sample(seed=0)
    assert batch.triggers.shape == (4, 0) and int(batch.labels.abs().sum()) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_triggers": 70}, "n_triggers 70 > d_vocab 65"),
        ({"n_triggers": -1}, "n_triggers -1 is invalid"),
        ({"seq_len": 0}, "seq_len 0 is invalid"),
        ({"seq_len": -5}, "seq_len -5 is invalid"),
        ({"batch_size": 0}, "batch_size 0 is invalid"),
        ({"trigger_mode": "fix"}, "trigger_mode 'fix' is unknown"),
        ({"output_mode": "zipf"}, "output_mode 'zipf' is unknown"),
        ({"output_split": "val"}, "output_split 'val' is unknown"),
        ({"output_split": "test", "n_train_outputs": 65}, "n_train_outputs 65 is invalid"),
        ({"output_split": "train", "n_train_outputs": 0}, "n_train_outputs 0 is invalid"),
        (
            {"output_split": "train", "n_train_outputs": 1, "output_not_trigger": True},
            "allows 1 output token",
        ),
    ],
)
def test_bad_config(shakespeare, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TriggerBigramTask(shakespeare, **kwargs)


def test_bad_sample_arguments(shakespeare):
    task = TriggerBigramTask(shakespeare, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="trigger_free_prefix 9 is invalid"):
        task.sample(seed=0, trigger_free_prefix=9)
    with pytest.raises(ValueError, match="trigger_free_prefix -1 is invalid"):
        task.sample(seed=0, trigger_free_prefix=-1)
    with pytest.raises(ValueError, match="batch_size 0 is invalid"):
        task.sample(seed=0, batch_size=0)
    with pytest.raises(ValueError, match="prefix_len -2 is invalid"):
        task.place_segment(task.sample(seed=0), -2)
    with pytest.raises(ValueError, match="must be a BigramModel"):
        TriggerBigramTask("not a model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed 'x' is invalid"):
        task.sample(seed="x")  # type: ignore[arg-type]
    everything = BigramModel.from_text("abab")
    full = TriggerBigramTask(everything, n_triggers=2, batch_size=1, seq_len=4)
    with pytest.raises(ValueError, match="needs a non-trigger token"):
        full.sample(seed=0, trigger_free_prefix=2)
