"""Memory recall probes: ~1 on hand-built memories, ~chance on random weights."""

from __future__ import annotations

import math

import pytest
import torch

from tlassoc import AssocTransformer, presets
from tlassoc.data import BigramModel
from tlassoc.memory.probes import (
    induction_attention_accuracy,
    previous_token_accuracy,
    recall_probes,
    wf_probe,
    wk1_probe,
    wk2_probe,
    wo2_probe,
)

TRIGGERS = torch.arange(0, 40, 2)  # 20 tokens: chance of the W_K² argmax is 1/20


def _ov(model, layer):
    a = model.blocks[layer].attn
    return a.W_V[0] @ a.W_O[0]


@torch.no_grad()
def _hand_built(model):
    """Store the ideal induction-circuit pairs (docs/method.md, Recall probes) with exact
    pseudo-inverses."""
    W_E, W_U = model.W_E, model.W_U
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    a1.W_O[0] = torch.linalg.pinv(W_E @ a1.W_V[0]) @ torch.linalg.pinv(W_U) * 5
    A = W_E @ _ov(model, 0)
    a1.W_K[0] = torch.linalg.pinv(A) @ torch.linalg.pinv(W_E.T) * 5
    if model.cfg.positional_embedding_type == "standard":
        P = model.W_pos
        a0.W_K[0] = sum(torch.outer(P[t - 1], P[t]) for t in range(1, P.shape[0]))
    else:
        M = torch.zeros(W_E.shape[0], model.W_rel.shape[0])
        M[:, 1] = 1.0  # every token scores distance 1 highest
        a0.W_K[0] = (torch.linalg.pinv(W_E) @ M @ torch.linalg.pinv(model.W_rel.T)).T
    return model


@pytest.mark.parametrize("make", [presets.ape, presets.rpe], ids=["ape", "rpe"])
def test_probes_score_one_on_hand_built_memories(make):
    model = _hand_built(AssocTransformer(make(d_model=128, n_ctx=48)))
    assert wo2_probe(model) == 1.0
    assert wk2_probe(model, TRIGGERS) == 1.0
    assert wk1_probe(model) >= 0.97
    probes = recall_probes(model, triggers=TRIGGERS)
    assert probes["probe_wo2"] == 1.0 and probes["probe_wk1"] >= 0.97


@pytest.mark.parametrize("make", [presets.ape, presets.rpe], ids=["ape", "rpe"])
def test_probes_near_chance_on_random_weights(make):
    scores = {"wo2": [], "wk2": [], "wk1": []}
    for seed in range(3):
        model = AssocTransformer(make(d_model=64, n_ctx=48, seed=seed))
        scores["wo2"].append(wo2_probe(model))
        scores["wk2"].append(wk2_probe(model, TRIGGERS))
        scores["wk1"].append(wk1_probe(model))
    mean = {k: sum(v) / len(v) for k, v in scores.items()}
    assert mean["wo2"] < 0.15  # chance 1/65
    assert mean["wk2"] < 0.25  # chance 1/20
    assert mean["wk1"] < 0.25  # APE: chance ~ H_48/48; RPE: 1/48 distances


def test_wk1_first_positions_and_errors():
    model = _hand_built(AssocTransformer(presets.ape(d_model=128, n_ctx=96)))
    probes = recall_probes(model, triggers=TRIGGERS, n_positions=32)
    assert probes["probe_wk1_first64"] >= 0.97 and probes["probe_wk1_all"] >= 0.97
    rpe = AssocTransformer(presets.rpe(d_model=16, n_ctx=16))
    with pytest.raises(ValueError, match="layer 5"):
        wo2_probe(rpe, layer=5)
    with pytest.raises(ValueError, match="d_vocab"):
        wk2_probe(rpe, torch.tensor([70]))
    with pytest.raises(ValueError, match="feed-forward"):
        wf_probe(rpe, BigramModel.tiny_shakespeare())


def test_wf_probe_small_for_stored_bigrams_large_for_random():
    bigram = BigramModel.tiny_shakespeare()
    model = AssocTransformer(presets.ape(d_model=96, n_ctx=16, ffn_type="linear"))
    random_kl = wf_probe(model, bigram, TRIGGERS[:5])
    with torch.no_grad():
        mlp = model.blocks[1].mlp
        mlp.W_in.copy_(torch.eye(96))
        target = (bigram.conditional + 1e-6).log()
        mlp.W_out.copy_(torch.linalg.pinv(model.W_E) @ target @ torch.linalg.pinv(model.W_U))
    stored_kl = wf_probe(model, bigram, TRIGGERS[:5])
    assert stored_kl < 0.01
    assert random_kl > 1.0
    assert "probe_wf" in recall_probes(model, TRIGGERS[:5], bigram=bigram)


def test_attention_probes_on_built_patterns():
    n = 6
    prev = torch.zeros(2, n, n)
    for t in range(n):
        prev[:, t, max(t - 1, 0)] = 1.0
    acc = previous_token_accuracy(prev)
    assert math.isnan(acc[0]) and torch.all(acc[1:] == 1.0)
    assert torch.all(previous_token_accuracy(torch.eye(n))[1:] == 0.0)
    tokens = torch.tensor([[5, 1, 2, 5, 3, 2]])
    A = torch.eye(n)[None].clone()
    A[0, 3] = torch.nn.functional.one_hot(torch.tensor(1), n).float()  # after earlier '5'
    A[0, 5] = torch.nn.functional.one_hot(torch.tensor(3), n).float()  # after earlier '2'
    assert induction_attention_accuracy(A, tokens) == 1.0
    assert induction_attention_accuracy(torch.eye(n)[None], tokens) == 0.0
    with pytest.raises(ValueError, match="pattern shape"):
        induction_attention_accuracy(A, tokens[:, :3])
