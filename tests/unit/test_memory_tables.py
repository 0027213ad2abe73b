"""Memory tables (tlassoc.memory.tables): bases, circuits, ranked pairs, probes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from tlassoc import AssocTransformer, presets
from tlassoc.data import BigramModel
from tlassoc.memory import (
    basis,
    circuit,
    ideal_model,
    memory_report,
    memory_table,
    wf_probe,
    wo2_probe,
)


@pytest.fixture(scope="module")
def bigram() -> BigramModel:
    return BigramModel.tiny_shakespeare()


@pytest.fixture(scope="module")
def ideal_rpe(bigram):
    return ideal_model("relative", d_model=128, n_ctx=64, bigram=bigram)


@pytest.fixture(scope="module")
def ideal_ape():
    return ideal_model("standard", d_model=128, n_ctx=64, train_len=48)


def test_circuit_w_k_matches_the_model_scores():
    """The papers' score matrix W_K = W_Q W_K^T gives the model's own pre-softmax scores."""
    model = AssocTransformer(presets.ape(d_model=32, n_ctx=16, identity_query=False, seed=3))
    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    _, cache = model.run_with_cache(tokens)
    x = cache["blocks.1.hook_resid_pre"][0]
    scores = x @ circuit(model, "W_K1") @ x.T / math.sqrt(model.cfg.d_head)
    got = cache["attn_scores", 1][0, 0]
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.allclose(scores[mask], got[mask], atol=1e-5)
    # and W_U W_O1 W_V1 W_E is the full OV circuit (row convention W_E W_V W_O W_U, transposed)
    full = circuit(model, "W_U W_O1 W_V1 W_E")
    ref = model.W_E @ model.W_V[1, 0] @ model.W_O[1, 0] @ model.W_U
    assert torch.allclose(full, ref.T.detach(), atol=1e-5)


def test_report_on_ideal_model_recalls_every_memory(ideal_rpe, bigram):
    report = memory_report(ideal_rpe, triggers=[1, 2, 3], bigram=bigram)
    assert set(report) == {"W_K0", "W_K1 W_O0 W_V0", "W_U W_O1", "W_U W_F1"}
    for name, table in report.items():
        assert table.recall == 1.0, name
        assert table.signal_to_crosstalk > 5, name
    assert report["W_K0"].probes["probe_wk1"] == 1.0
    assert report["W_K1 W_O0 W_V0"].probes["probe_wk2"] == 1.0
    assert report["W_U W_O1"].probes["probe_wo2"] == wo2_probe(ideal_rpe) == 1.0
    random = AssocTransformer(presets.rpe(d_model=128, n_ctx=64, ffn_type="linear"))
    assert report["W_U W_F1"].probes["probe_wf"] < wf_probe(random, bigram)
    pairs = report["W_U W_O1"].pairs
    assert list(pairs.columns) == ["rank", "input", "output", "strength", "z", "expected"]
    assert pairs["expected"].all() and pairs["strength"].is_monotonic_decreasing
    row = report["W_U W_F1"].summary()
    assert row["n_out"] == 65 and row["input"] == "tokens"


def test_ape_table_and_random_model_contrast(ideal_ape):
    table = memory_report(ideal_ape, n_positions=48)["W_K0"]
    assert table.recall == 1.0 and table.pairs["expected"].iloc[0]
    assert table.pairs["input"].iloc[0].startswith("p")
    random = AssocTransformer(presets.ape(d_model=128, n_ctx=64))
    rand_table = memory_report(random, n_positions=48)["W_K0"]
    assert rand_table.recall < 0.3
    assert rand_table.signal_to_crosstalk < table.signal_to_crosstalk / 3
    frame = table.to_frame()
    assert frame.shape == (48, 48) and frame.index[0] == "p0"


def test_memory_table_with_explicit_pairs_and_matrix():
    eye = torch.eye(4)
    b = basis(AssocTransformer(presets.rpe(d_model=4, n_ctx=8, d_vocab=4)), "tokens")
    b = type(b)("unit", eye, ["a", "b", "c", "d"])
    mat = torch.zeros(4, 4)
    mat[1, 0], mat[2, 1] = 3.0, 2.0
    mat[0, 3] = 1.0
    table = memory_table(None, mat, b, b, expected=[(1, 0), (2, 1)], per="input", top=3)
    assert table.recall == 1.0
    assert table.pairs["input"].tolist() == ["a", "b", "d"]
    assert table.pairs["expected"].tolist() == [True, True, False]


def test_bad_inputs_raise_clear_errors(ideal_rpe):
    tok = basis(ideal_rpe, "tokens")
    pos_model = AssocTransformer(presets.ape(d_model=32, n_ctx=16))
    with pytest.raises(ValueError, match="basis 'positions' has vectors of size 32"):
        memory_table(ideal_rpe, "W_O1", basis(pos_model, "positions"), tok)
    with pytest.raises(ValueError, match="layer 3 >= n_layers 2"):
        circuit(ideal_rpe, "W_K3")
    with pytest.raises(ValueError, match="layer 5 >= n_layers 2"):
        basis(ideal_rpe, "ov", layer=5)
    with pytest.raises(ValueError, match="unknown matrix 'W_X1'"):
        circuit(ideal_rpe, "W_X1 W_O0")
    with pytest.raises(ValueError, match="W_F0: layer 0 has no feed-forward"):
        circuit(ideal_rpe, "W_F0")
    with pytest.raises(ValueError, match="basis kind 'words'"):
        basis(ideal_rpe, "words")
    with pytest.raises(ValueError, match="basis 'positions' needs positional_embedding_type"):
        basis(ideal_rpe, "positions")
    with pytest.raises(ValueError, match="input size"):
        circuit(ideal_rpe, "W_U W_U")
    with pytest.raises(ValueError, match="triggers"):
        memory_report(ideal_rpe, triggers=[70])
    with pytest.raises(ValueError, match="expected mask has shape"):
        memory_table(ideal_rpe, "W_K1", tok, tok, expected=torch.ones(2, 2, dtype=torch.bool))


def test_tables_read_transformer_lens_models():
    """basis and circuit work on a GPT-2-architecture TransformerLens model (the adapter)."""
    from _heads_fixtures import gpt2_small_offline

    from tlassoc.heads import head_weights

    gpt2 = gpt2_small_offline()
    w = head_weights(gpt2)
    full = circuit(gpt2, "W_U W_O1 W_V1 W_E", head=2)
    assert torch.allclose(full, w.full_ov(1, 2).T.float(), atol=1e-5)
    ov = basis(gpt2, "ov", layer=0, head=1)
    assert len(ov) == gpt2.cfg.d_vocab and ov.labels[0].startswith("OV0(")
    assert basis(gpt2, "positions", n=8).labels[-1] == "p7"
