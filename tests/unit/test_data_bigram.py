"""BigramModel: shipped Tiny Shakespeare statistics, exact counting, sampling, bad input."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tlassoc.data import BigramModel
from tlassoc.data.bigram import alias_table, run_chain
from tlassoc.data.build_tables import (
    TINY_SHAKESPEARE_SHA256,
    build_tables,
    capital_world_table,
    read_verified,
    sha256_hex,
    tiny_shakespeare_table,
)
from tlassoc.tokenizer import TINY_SHAKESPEARE_VOCAB, CharTokenizer, WordTokenizer


@pytest.fixture(scope="module")
def shakespeare() -> BigramModel:
    return BigramModel.tiny_shakespeare()


def test_shipped_statistics(shakespeare):
    assert shakespeare.d_vocab == 65
    assert "".join(shakespeare.vocab) == TINY_SHAKESPEARE_VOCAB
    assert shakespeare.n_bigrams == 1403
    assert round(shakespeare.conditional_entropy(), 3) == 2.453
    assert int(shakespeare.unigram_counts.sum()) == 1115394
    assert int(shakespeare.bigram_counts.sum()) == 1115394 - 1
    # Every row's bigram total is its unigram count, except the text's last character.
    diff = shakespeare.unigram_counts - shakespeare.bigram_counts.sum(1)
    assert int(diff.sum()) == 1 and int(diff.max()) == 1


def test_shipped_provenance(shakespeare):
    prov = shakespeare.provenance
    assert prov["sha256"] == TINY_SHAKESPEARE_SHA256
    assert prov["n_characters"] == 1115394
    assert prov["source_file"] == "tinyshakespeare.txt"
    assert "karpathy/char-rnn" in prov["origin"]


def test_distributions(shakespeare):
    uni, cond = shakespeare.unigram, shakespeare.conditional
    assert uni.dtype == torch.float32 and uni.shape == (65,)
    assert cond.shape == (65, 65)
    assert torch.allclose(uni.sum(), torch.tensor(1.0))
    assert torch.allclose(cond.sum(1), torch.ones(65), atol=1e-5)
    assert isinstance(shakespeare.tokenizer, CharTokenizer)
    assert shakespeare.tokenizer == CharTokenizer.tiny_shakespeare()
    assert shakespeare.vocab[shakespeare.top_successor("q")] == "u"
    assert shakespeare.top_successor(shakespeare.tokenizer.token_to_id("q")) == 59  # "u"


def test_from_text_exact_counts():
    text = "abracadabra"
    model = BigramModel.from_text(text)
    assert model.vocab == sorted(set(text))
    index = {c: i for i, c in enumerate(model.vocab)}
    uni = Counter(text)
    big = Counter(zip(text, text[1:], strict=False))
    for c, i in index.items():
        assert int(model.unigram_counts[i]) == uni[c]
        for c2, j in index.items():
            assert int(model.bigram_counts[i, j]) == big[(c, c2)]
    assert model.n_bigrams == len(big)
    # H(next | prev) by hand.
    n = len(text) - 1
    rows = Counter(text[:-1])
    expected = -sum(m / n * math.log(m / rows[a]) for (a, _), m in big.items())
    assert model.conditional_entropy() == pytest.approx(expected, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="ab c\n!é", min_size=1, max_size=60))
def test_from_text_matches_reference_count(text):
    model = BigramModel.from_text(text)
    assert model.vocab == sorted(set(text))
    big = Counter(zip(text, text[1:], strict=False))
    dense = {
        (model.vocab[i], model.vocab[j]): int(model.bigram_counts[i, j])
        for i, j in zip(*torch.nonzero(model.bigram_counts, as_tuple=True), strict=True)
    }
    assert dense == dict(big)
    assert int(model.unigram_counts.sum()) == len(text)


def test_row_without_successor_falls_back_to_unigram():
    model = BigramModel.from_text("aab")  # 'b' is never followed by anything
    assert torch.allclose(model.conditional[1], model.unigram)
    assert model.top_successor("b") == 0
    # The row carries no weight in the entropy: H = -(1/2 log 1/2 * 2) for 'a' -> {a, b}.
    assert model.conditional_entropy() == pytest.approx(math.log(2))


def test_from_counts_and_word_vocab():
    model = BigramModel(["Paris", "France"], [2, 1], [[0, 1], [1, 0]])
    assert isinstance(model.tokenizer, WordTokenizer)
    assert model.n_bigrams == 2
    again = BigramModel(model.vocab, model.unigram_counts, model.bigram_counts)
    assert torch.equal(again.conditional, model.conditional)


def test_json_roundtrip(tmp_path):
    model = BigramModel.from_text("to be or not to be")
    path = tmp_path / "t.json"
    model.to_json(path)
    back = BigramModel.from_json(path)
    assert back.vocab == model.vocab
    assert torch.equal(back.bigram_counts, model.bigram_counts)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        BigramModel.from_json(bad)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("ab", [1, 1], [[0, 1]]), r"bigram_counts has shape \(1, 2\); expected \(2, 2\)"),
        (("ab", [1], [[0, 1], [1, 0]]), r"unigram_counts has shape \(1,\); expected \(2,\)"),
        (("ab", [1, -3], [[0, 1], [1, 0]]), "negative entry -3"),
        (("ab", [1, 0.5], [[0, 1], [1, 0]]), "non-integer"),
        (("ab", [0, 0], [[0, 0], [0, 0]]), "all zero"),
        (("", [], []), "vocab is empty"),
        (("aa", [1, 1], [[0, 1], [1, 0]]), "twice"),
    ],
)
def test_bad_counts(args, match):
    with pytest.raises(ValueError, match=match):
        BigramModel(*args)


def test_bad_text_and_tokens(shakespeare):
    with pytest.raises(ValueError, match="text is empty"):
        BigramModel.from_text("")
    with pytest.raises(ValueError, match="must be a str"):
        BigramModel.from_text(b"abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'~'"):
        shakespeare.top_successor("~")
    with pytest.raises(ValueError, match="token id 65"):
        shakespeare.top_successor(65)
    with pytest.raises(ValueError, match="'~'"):
        shakespeare.tokenizer.encode("to be~")


@pytest.mark.parametrize(("n", "length"), [(0, 5), (2, 0), (-1, 3), (2, -4)])
def test_bad_sample_sizes(shakespeare, n, length):
    bad = n if n <= 0 else length
    with pytest.raises(ValueError, match=f"{bad} is invalid"):
        shakespeare.sample(n, length, seed=0)


def test_sample_seeded_and_valid(shakespeare):
    a = shakespeare.sample(8, 64, seed=3)
    b = shakespeare.sample(8, 64, generator=torch.Generator().manual_seed(3))
    c = shakespeare.sample(8, 64, seed=4)
    assert a.dtype == torch.int64 and a.shape == (8, 64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((shakespeare.bigram_counts[a[:, :-1], a[:, 1:]] > 0).all())
    with pytest.raises(ValueError, match="either generator or seed"):
        shakespeare.sample(2, 2, generator=torch.Generator(), seed=1)


def test_sample_statistics(shakespeare):
    seq = shakespeare.sample(256, 257, seed=11)
    prev, nxt = seq[:, :-1].reshape(-1), seq[:, 1:].reshape(-1)
    counts = torch.zeros(65, 65, dtype=torch.float64)
    counts.index_put_((prev, nxt), torch.ones_like(prev, dtype=torch.float64), accumulate=True)
    # Pooled total variation against π_b must stay below its sampling-noise bound
    # E[TV_i] <= 1/2 Σ_j sqrt(p_ij (1 - p_ij) / n_i) (the trigger tests also show a wrong
    # sampler fails this check).
    n_i = counts.sum(1)
    p = shakespeare.conditional.double()
    emp = counts / n_i.clamp(min=1).unsqueeze(1)
    tv = (0.5 * (emp - p).abs().sum(1) * n_i).sum() / n_i.sum()
    noise = 0.5 * (p * (1 - p) / n_i.clamp(min=1).unsqueeze(1)).sqrt().sum(1)
    assert float(tv) < float((noise * n_i).sum() / n_i.sum())
    # First tokens follow the unigram: the most frequent (' ') is the most common start.
    assert int(seq[:, 0].mode().values) == 1


def test_alias_table_exact_and_zero_safe():
    probs = torch.tensor([[0.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
    accept, alias = alias_table(probs)
    d = probs.shape[1]
    # The alias representation reproduces each row exactly.
    recon = torch.zeros_like(probs, dtype=torch.float64)
    for r in range(probs.shape[0]):
        for j in range(d):
            recon[r, j] += accept[r, j] / d
            recon[r, alias[r, j]] += (1 - accept[r, j]) / d
    assert torch.allclose(recon, probs.double() / probs.double().sum(1, keepdim=True))
    tables = BigramModel(["a", "b", "c", "d"], [1, 1, 1, 1], probs.long()[[0, 0, 2, 2]]).tables()
    u = torch.rand(50, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seq = run_chain(tables, torch.zeros(64, dtype=torch.long), u)
    assert set(seq[:, 1:].unique().tolist()) <= {1, 2, 3}
    with pytest.raises(ValueError, match="row 0"):
        alias_table(torch.zeros(1, 3))


# ---------------------------------------------------------------- shipped-table builder


def test_table_builders_on_small_text():
    table = json.loads(tiny_shakespeare_table("to be, or", "x.txt", "0" * 64))
    model = BigramModel.from_text("to be, or")
    assert table["bigram_counts"] == model.bigram_counts.tolist()
    assert table["provenance"]["n_characters"] == 9
    csv = capital_world_table(
        ": capital-world\nAthens Greece Oslo Norway\nOslo Norway Athens Greece\n", "1" * 64
    )
    rows = [line for line in csv.splitlines() if not line.startswith("#")]
    assert rows == ["capital,country", "Athens,Greece", "Oslo,Norway"]
    assert "1" * 64 in csv


def test_build_tables_rejects_wrong_files(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("not the right text")
    (tmp_path / "questions-words.txt").write_text(": capital-world\na b c d\n")
    with pytest.raises(ValueError, match=f"expected {TINY_SHAKESPEARE_SHA256}"):
        build_tables(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_verified(tmp_path / "missing.txt", "0" * 64)
    assert read_verified(tmp_path / "tinyshakespeare.txt", sha256_hex(b"not the right text"))
