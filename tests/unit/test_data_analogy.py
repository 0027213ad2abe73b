"""Analogy data: questions-words parser, shipped capital-world pairs, AnalogyTask."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tlassoc.data import AnalogyTask, TriggerBatch, capital_world_pairs, parse_questions_words
from tlassoc.data.analogy import pairs_from_section, read_pairs_csv
from tlassoc.tokenizer import WordTokenizer

SAMPLE = """: capital-common-countries
Athens Greece Baghdad Iraq
Athens Greece Bangkok Thailand

: family
boy girl brother sister
"""


def test_parse_sections():
    sections = parse_questions_words(SAMPLE)
    assert list(sections) == ["capital-common-countries", "family"]
    assert sections["capital-common-countries"][1] == ("Athens", "Greece", "Bangkok", "Thailand")
    assert sections["family"] == [("boy", "girl", "brother", "sister")]
    assert pairs_from_section(sections["capital-common-countries"]) == [
        ("Athens", "Greece"),
        ("Baghdad", "Iraq"),
        ("Bangkok", "Thailand"),
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Athens Greece Baghdad Iraq\n", "line 1: question .* before any"),
        (": s\nAthens Greece Baghdad\n", "line 2: question .* has 3 words; expected 4"),
        (": s\na b c d\n\na b c d e\n", "line 4: question .* has 5 words"),
        (":bad\n", "line 1: malformed section line"),
        (": \n", "line 1: malformed section line"),
        (": s\n: s\n", "line 2: section 's' appears a second time"),
    ],
)
def test_parse_rejects_malformed_lines(text, match):
    with pytest.raises(ValueError, match=match):
        parse_questions_words(text)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(*[st.text(alphabet="abcXYZ", min_size=1, max_size=4) for _ in range(4)]),
        max_size=8,
    )
)
def test_parse_roundtrip(questions):
    text = ": sec\n" + "".join(" ".join(q) + "\n" for q in questions)
    assert parse_questions_words(text) == {"sec": questions}


def test_capital_world_pairs():
    pairs = capital_world_pairs()
    assert len(pairs) == 116
    words = {w for pair in pairs for w in pair}
    assert len(words) == 232
    assert ("Paris", "France") in pairs and ("Canberra", "Australia") in pairs
    assert pairs == sorted(pairs)
    assert len({c for c, _ in pairs}) == 116 and len({c for _, c in pairs}) == 116
    with pytest.raises(ValueError, match="line 2"):
        read_pairs_csv("capital,country\nParis\n")


def test_task_vocabulary():
    task = AnalogyTask()
    assert task.d_vocab == 232 and task.n_pairs == 116
    assert isinstance(task.tokenizer, WordTokenizer)
    capital, country = task.pairs[5]
    assert task.vocab[5] == capital and task.vocab[116 + 5] == country
    assert task.true_country(torch.tensor([5])).item() == 121
    with pytest.raises(ValueError, match=r"\[0, 116\)"):
        task.true_country(torch.tensor([200]))


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(0, 6),
    p=st.sampled_from([0.0, 0.3, 1.0]),
    seq_len=st.integers(1, 40),
    prefix_frac=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_analogy_batch_properties(k, p, seq_len, prefix_frac, seed):
    task = AnalogyTask(n_triggers=k, p_trigger=p, seq_len=seq_len, batch_size=3)
    prefix = int(prefix_frac * seq_len)
    batch = task.sample(seed=seed, trigger_free_prefix=prefix)
    assert isinstance(batch, TriggerBatch)
    n = task.n_pairs
    assert batch.tokens.shape == (3, seq_len) and batch.triggers.shape == (3, k)
    for b in range(3):
        seq = batch.sequences[b].tolist()
        trig, out = batch.triggers[b].tolist(), batch.outputs[b].tolist()
        assert len(set(trig)) == k
        remap = dict(zip(trig, out, strict=True))
        for o, t in zip(out, trig, strict=True):
            assert n <= o < 2 * n and o != t + n  # another country
        # Capitals at even positions, countries at odd ones; every capital is followed by its
        # (possibly remapped) country.
        for pos, tok in enumerate(seq):
            assert (tok < n) == (pos % 2 == 0)
            if pos % 2 == 0 and pos + 1 < len(seq):
                assert seq[pos + 1] == remap.get(tok, tok + n)
        assert not set(seq[:prefix]) & set(trig)
        # Labels: -1 after a country, else the occurrence count of remapped capitals.
        seen: dict[int, int] = {}
        expected = []
        for pos, tok in enumerate(seq[:-1]):
            if pos % 2 == 1:
                expected.append(-1)
            elif tok in remap:
                seen[tok] = seen.get(tok, 0) + 1
                expected.append(seen[tok])
            else:
                expected.append(0)
        assert batch.labels[b].tolist() == expected
        if p == 0.0:
            assert not set(seq) & set(trig)


def test_analogy_seeds_and_frequency():
    task = AnalogyTask(n_triggers=3, p_trigger=0.25, batch_size=64, seq_len=128)
    a, b = task.sample(seed=1), task.sample(seed=1)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.outputs, b.outputs)
    assert not torch.equal(a.tokens, task.sample(seed=2).tokens)
    capitals = a.tokens[:, ::2]
    is_trigger = (capitals.unsqueeze(-1) == a.triggers.unsqueeze(1)).any(-1)
    assert abs(float(is_trigger.double().mean()) - 0.25) < 0.03
    assert int(a.labels.max()) >= 5  # remapped pairs repeat within a sequence
    text = a.decode(0, task.tokenizer, mark=True)
    assert len(text.split()) == 129 and "[" in text
    stream = task.batches(seed=1)
    assert torch.equal(next(stream).tokens, a.tokens)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_triggers": 117}, "n_triggers 117 > number of capitals 116"),
        ({"n_triggers": -2}, "n_triggers -2 is invalid"),
        ({"p_trigger": 1.5}, "p_trigger 1.5 is invalid"),
        ({"seq_len": 0}, "seq_len 0 is invalid"),
        ({"batch_size": -1}, "batch_size -1 is invalid"),
        ({"pairs": []}, "pairs is empty"),
        ({"pairs": [("A", "B"), ("C", "B")]}, r"\['B'\] occur in more than one"),
        ({"pairs": [("A", "B")], "n_triggers": 1, "p_trigger": 1.0}, "at least 2 pairs"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnalogyTask(**kwargs)


def test_bad_sample_arguments():
    task = AnalogyTask(batch_size=2, seq_len=10)
    with pytest.raises(ValueError, match="trigger_free_prefix 11 is invalid"):
        task.sample(seed=0, trigger_free_prefix=11)
    custom = AnalogyTask(pairs=[("A", "a"), ("B", "b")], n_triggers=2, p_trigger=1.0, seq_len=6)
    batch = custom.sample(seed=0, batch_size=2)
    assert set(batch.tokens[:, ::2].flatten().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="needs a non-trigger capital"):
        custom.sample(seed=0, trigger_free_prefix=2)
