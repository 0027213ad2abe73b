"""Theory of prompts (tlassoc.theory): predictions, designed prompts, theory vs ideal and
trained models."""

from __future__ import annotations

import pytest
import torch

from tlassoc import AssocTransformer, presets
from tlassoc.data import BigramModel, TriggerBigramTask
from tlassoc.memory import ideal_model
from tlassoc.theory import (
    DesignedPrompt,
    TheoryParams,
    compare,
    designed_prompts,
    predict_logits,
)

TRAIN_LEN = 64


@pytest.fixture(scope="module")
def bigram() -> BigramModel:
    return BigramModel.tiny_shakespeare()


@pytest.fixture(scope="module")
def prompts(bigram):
    return designed_prompts(bigram, n_prompts=240, seq_len=40, train_len=TRAIN_LEN, seed=0)


@pytest.fixture(scope="module")
def trained(bigram):
    """A short run of the simplified RPE model with a linear FFN, loss on all positions."""
    from tlassoc.config import TrainConfig
    from tlassoc.training import train

    model = AssocTransformer(presets.rpe(d_model=64, n_ctx=128, ffn_type="linear"))
    task = TriggerBigramTask(bigram, seq_len=64, batch_size=64)
    cfg = TrainConfig.simplified(steps=300, batch_size=64, loss_on="all", log_every=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest on a shared CPU
    try:
        train(model, task, cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_prediction_formula():
    params = TheoryParams(2.0 * torch.eye(5), torch.zeros(5, 5), first_token=False)
    # last token 1; S_1 = positions after 1: tokens 2, 2, 3 -> shares 2/3, 1/3
    xi = predict_logits(torch.tensor([0, 1, 2, 1, 2, 4, 1, 3, 1]), params)[0]
    assert torch.allclose(xi, torch.tensor([0, 0, 4 / 3, 2 / 3, 0]))
    late = TheoryParams(2.0 * torch.eye(5), torch.eye(5), train_len=4, first_token=False)
    xi = predict_logits(torch.tensor([0, 1, 2, 1, 2, 4, 1, 3, 1]), late)[0]
    assert torch.allclose(xi, torch.tensor([0.0, 1, 2, 0, 0]))  # only s = 2 < 4 kept, + bigram
    empty = TheoryParams(torch.eye(5), torch.zeros(5, 5), first_token=False)
    xi = predict_logits(torch.tensor([0, 2, 2, 1]), empty)[0]
    assert torch.allclose(xi, torch.tensor([0.25, 0.25, 0.5, 0, 0]))  # uniform fallback


def test_designed_prompts_are_as_described(prompts, bigram):
    assert len(prompts) == 240
    fams = {(p.n, p.m, p.relation, p.placement) for p in prompts}
    assert len(fams) >= 40
    for p in prompts:
        toks = p.tokens
        assert int(toks[-1]) == p.a and int(toks[0]) != p.a
        after = toks[1:][toks[:-1] == p.a].tolist()
        assert sorted(after) == sorted([p.b1] * p.n + [p.b2] * p.m)
        assert (p.b1 == p.top) == (p.relation == "agree")
        if p.placement == "beyond":
            first = int(torch.nonzero(toks == p.a)[0])
            assert first >= TRAIN_LEN and p.beyond
    again = designed_prompts(bigram, n_prompts=240, seq_len=40, train_len=TRAIN_LEN, seed=0)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(prompts, again, strict=True))


def test_theory_matches_ideal_model(prompts, bigram):
    model = ideal_model("relative", d_model=256, n_ctx=128, bigram=bigram)
    frame = compare(model, prompts, TheoryParams.ideal(bigram))
    s = frame.attrs["summary"]
    assert s["n"] >= 200 and s["agreement"] >= 0.95 and s["correlation"] >= 0.95
    # the designed prompts really pit the two memories against each other
    assert 0.2 < (frame["pred_argmax"] == frame["b1"]).mean() < 0.95
    assert set(frame["placement"]) == {"near", "far", "beyond"}


def test_theory_on_trained_model_with_ffn(trained, prompts):
    """Honest numbers (see the tutorial): 300 SGD steps learn the bigram memory first; the theory
    read off the model's memories (TheoryParams.from_model) tracks it."""
    frame = compare(trained, [p for p in prompts if p.placement != "beyond"])
    s = frame.attrs["summary"]
    assert s["agreement"] >= 0.65  # measured 0.80
    assert s["correlation"] >= 0.9  # measured 0.99


def test_bad_inputs_raise_clear_errors(bigram, prompts):
    params = TheoryParams.ideal(bigram)
    with pytest.raises(ValueError, match="prompt token id 70 is outside the vocabulary"):
        predict_logits(torch.tensor([1, 70, 1]), params)
    bad = DesignedPrompt(torch.tensor([1, 2, 99]), 1, 2, 3, 2, 1, 0, "agree", "near", False)
    model = ideal_model("relative", d_model=128, n_ctx=64)
    with pytest.raises(ValueError, match="prompt 1: prompt token id 99"):
        compare(model, [prompts[0], bad], params)
    with pytest.raises(ValueError, match="seq_len=8 is too short"):
        designed_prompts(bigram, seq_len=8)
    with pytest.raises(ValueError, match="BigramModel"):
        designed_prompts(torch.ones(65, 65))
    with pytest.raises(ValueError, match="shape"):
        TheoryParams(torch.eye(3), torch.eye(4))
    with pytest.raises(ValueError, match="no prompts"):
        compare(model, [], params)


def test_theory_reads_transformer_lens_models_through_the_adapter():
    """TheoryParams.from_model on TransformerLens's copy of a model (HookedTransformer or
    TransformerBridge; the linear feed-forward layer becomes a ReLU pair) gives the same
    memories as on the AssocTransformer."""
    model = AssocTransformer(presets.ape(d_model=32, n_ctx=16, ffn_type="linear", seed=2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    ours = TheoryParams.from_model(model)
    theirs = TheoryParams.from_model(model.to_transformer_lens())
    torch.testing.assert_close(theirs.copy, ours.copy, rtol=0, atol=1e-5)
    torch.testing.assert_close(theirs.bigram, ours.bigram, rtol=0, atol=1e-5)
