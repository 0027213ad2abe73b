"""tlassoc.heads: hand computations, agreement with TransformerLens, any model kind."""

from __future__ import annotations

import pytest
import torch
from _heads_fixtures import gpt2_small_offline, trained_rpe
from transformer_lens import head_detector

from tlassoc import AssocTransformer, presets
from tlassoc import heads as H
from tlassoc.viz.heads import plot_head_scores


@pytest.fixture(scope="module")
def small():
    cfg = presets.rpe(d_model=32, n_ctx=128, n_heads=2, d_head=16, identity_query=False)
    return AssocTransformer(cfg).eval()


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_small_offline()


def test_head_weights_adapter_all_kinds(small, gpt2):
    for model in (small, gpt2, AssocTransformer(presets.rpe(d_model=16))):
        w = H.head_weights(model)
        L, nh = model.cfg.n_layers, model.cfg.n_heads
        assert w.W_Q.shape[:2] == w.W_K.shape[:2] == w.W_V.shape[:2] == (L, nh)
        assert w.W_O.shape[:2] == (L, nh) and w.W_E.shape[0] == model.cfg.d_vocab
    eye = H.head_weights(AssocTransformer(presets.rpe(d_model=16))).W_Q[0, 0]
    assert torch.equal(eye, torch.eye(16))


def test_previous_token_and_stripe_by_hand():
    A = torch.rand(2, 1, 1, 6, 6).tril()
    A = A / A.sum(-1, keepdim=True)
    got = H.previous_token_scores(None, patterns=A)
    want = sum(A[:, 0, 0, t, t - 1].mean() for t in range(1, 6)) / 5
    assert torch.allclose(got[0, 0], want)
    arg = H.previous_token_scores(None, patterns=A, form="argmax")
    want_arg = sum((A[b, 0, 0, t].argmax() == t - 1).float() for b in range(2) for t in range(1, 6))
    assert torch.allclose(arg[0, 0], want_arg / 10)
    curve = H.previous_token_scores(None, patterns=A, per_position=True)
    assert curve.shape == (1, 1, 6) and curve[0, 0, 0].isnan()
    assert torch.allclose(curve[0, 0, 3], A[:, 0, 0, 3, 2].mean())
    stripe = H.induction_stripe(A, repeat_len=2, offset=1)  # queries 3, 4; keys 2, 3
    assert torch.allclose(stripe[0, 0], (A[:, 0, 0, 3, 2] + A[:, 0, 0, 4, 3]).mean() / 2)


def test_duplicate_and_prefix_by_hand(small):
    tokens, offset = H.random_block_tokens(small, 6, n_repeats=3, n_samples=2, seed=3)
    A = H.attention_patterns(small, tokens)
    dup = H.duplicate_token_scores(small, tokens)
    vals, vals_pm = [], []
    for b in range(2):
        for t in range(tokens.shape[1]):
            earlier = [s for s in range(t) if tokens[b, s] == tokens[b, t]]
            if earlier:
                vals.append(A[b, :, :, t, earlier].sum(-1))
                vals_pm.append(A[b, :, :, t, [s + 1 for s in earlier]].sum(-1))
    assert torch.allclose(dup, torch.stack(vals).mean(0), atol=1e-6)
    pm = H.prefix_matching_scores(small, block_len=6, n_repeats=3, n_samples=2, seed=3)
    assert torch.allclose(pm, torch.stack(vals_pm).mean(0), atol=1e-6)


@pytest.mark.parametrize("kind", ["previous_token_head", "duplicate_token_head", "induction_head"])
def test_agrees_with_transformer_lens_detect_head(small, gpt2, kind):
    text = "the cat sat on the mat; the cat sat on the mat"
    for model in (small, gpt2):
        tokens = model.to_tokens(text)
        ours = H.pattern_match_scores(model, tokens, kind)
        theirs = head_detector.detect_head(model, text, kind)
        assert torch.allclose(ours, theirs.to(ours.dtype), atol=1e-5), (type(model), kind)
    if kind == "previous_token_head":
        T = small.to_tokens(text).shape[1]
        prev = H.previous_token_scores(small, small.to_tokens(text))
        match = H.pattern_match_scores(small, small.to_tokens(text), kind)
        assert torch.allclose(prev * (T - 1) / T, match, atol=1e-6)


def test_weight_scores_by_hand(small):
    w = H.head_weights(small)
    full = w.W_E @ w.W_V[1, 0] @ w.W_O[1, 0] @ w.W_U  # [V, V]
    eig = torch.linalg.eigvals(full.double())
    want = (eig.sum().real / eig.abs().sum()).item()
    assert H.copying_scores(small, form="eigen")[1, 0].item() == pytest.approx(want, abs=1e-4)
    centred = (full - full.mean(-1, keepdim=True)).relu()
    ratio = torch.where(centred.sum(-1) > 0, centred.diagonal() / centred.sum(-1), 0.0)
    assert H.copying_scores(small)[1, 0].item() == pytest.approx(ratio.mean().item(), abs=1e-5)
    top1 = (full.argmax(-1) == torch.arange(65)).float().mean()
    assert H.full_ov_topk(small, 1)[1, 0].item() == pytest.approx(top1.item())
    top5 = (full.topk(5, -1).indices == torch.arange(65)[:, None]).any(-1).float().mean()
    assert H.full_ov_topk(small, 5)[1, 0].item() == pytest.approx(top5.item())
    both = w.W_E @ (w.W_V[1, 0] @ w.W_O[1, 0] + w.W_V[1, 1] @ w.W_O[1, 1]) @ w.W_U
    comb = (both.argmax(-1) == torch.arange(65)).float().mean().item()
    assert H.full_ov_topk_combined(small, [(1, 0), (1, 1)]) == pytest.approx(comb)


def test_composition_scores_by_hand(small):
    w = H.head_weights(small)
    ov = w.W_V[0, 1] @ w.W_O[0, 1]
    qk = w.W_Q[1, 0] @ w.W_K[1, 0].T
    dense = {"Q": ov @ qk, "K": ov @ qk.T, "V": ov @ w.W_V[1, 0] @ w.W_O[1, 0]}
    for kind, prod in dense.items():
        second = {"Q": qk, "K": qk, "V": w.W_V[1, 0] @ w.W_O[1, 0]}[kind]
        other = prod.norm() / (ov.norm() * second.norm())
        got = H.composition_scores(small, kind)
        assert got[0, 1, 1, 0].item() == pytest.approx(other.item(), rel=1e-4)
        assert got[1, 0, 0, 0].isnan() and got[0, 0, 0, 1].isnan()
    mean, std = H.composition_baseline(small, "K", n_samples=50)
    assert 0 < mean < 1 and std > 0
    df = H.composition_frame(small, n_samples=20)
    assert len(df) == 3 * 2 * 2 and {"score", "baseline_mean", "ratio"} <= set(df.columns)


def test_k_composition_top1_by_hand(small):
    w = H.head_weights(small)
    q = w.W_E @ w.W_Q[1, 1]
    k = w.W_E @ w.W_V[0, 0] @ w.W_O[0, 0] @ w.W_K[1, 1]
    want = ((q @ k.T).argmax(-1) == torch.arange(65)).float().mean()
    assert H.k_composition_top1(small)[0, 1].item() == pytest.approx(want.item())


def test_every_score_runs_on_gpt2_architecture(gpt2):
    df = H.head_scores(gpt2, model_name="gpt2-like")
    assert len(df) == 2 * 4 and df.drop(columns=["model", "head_name"]).notna().all().all()
    assert H.composition_scores(gpt2, "Q").shape == (2, 4, 2, 4)
    assert H.k_composition_top1(gpt2).shape == (4, 4)
    bos = H.bos_token_id(gpt2)
    tokens, offset = H.random_block_tokens(gpt2, 5)
    assert offset == (bos is not None) and (bos is None or bool((tokens[:, 0] == bos).all()))
    with pytest.raises(ValueError, match="n_layers"):
        H.attention_patterns(gpt2, torch.tensor([[1, 2]]), layers=[5])


def test_trained_rpe_heads_and_heatmap():
    model = trained_rpe()
    prev = H.previous_token_scores(model)
    ind = H.induction_scores(model, repeat_len=30)
    assert prev[0, 0] > 0.5 and prev[0, 0] > prev[1, 0]
    assert ind[1, 0] > 0.1 and ind[1, 0] > 5 * ind[0, 0]
    fig = plot_head_scores(ind, title="induction")
    assert fig.axes[0].get_title() == "induction"


def test_errors_name_the_bad_value(small):
    with pytest.raises(ValueError, match="d_vocab"):
        H.attention_patterns(small, torch.tensor([[70]]))
    with pytest.raises(ValueError, match="form"):
        H.previous_token_scores(small, torch.tensor([[1, 2]]), form="max")
    with pytest.raises(ValueError, match="block_len"):
        H.random_block_tokens(small, 100)


def test_adapter_carries_positions_and_feed_forward(gpt2):
    rpe = AssocTransformer(presets.rpe(d_model=16, ffn_type="linear"))
    w = H.head_weights(rpe)
    assert w.kind == "assoc" and w.W_pos is None and w.relative[1] is None
    assert w.relative[0].form == "vector" and torch.equal(w.relative[0].W_rel, rpe.W_rel)
    assert w.ffn_layers == (1,) and w.ffn[1].act == "linear"
    x = torch.randn(3, 16)
    assert torch.allclose(w.ffn[1](x), rpe.blocks[1].mlp(x))
    bias = AssocTransformer(presets.rpe(d_model=16, relative_form="bias"))
    rel = H.head_weights(bias).relative[0]
    assert rel.form == "bias" and torch.equal(rel.b_rel, bias.blocks[0].attn.b_rel)
    ape = AssocTransformer(presets.ape(d_model=16, n_ctx=32))
    assert torch.equal(H.head_weights(ape).W_pos, ape.W_pos)
    # the full OV circuit, one definition for every reader
    full = w.W_E @ w.W_V[1, 0] @ w.W_O[1, 0] @ w.W_U
    assert torch.allclose(w.full_ov(1, 0), full) and torch.allclose(w.full_ov(1), full)
    # TransformerLens models: their MLPs, read from the stacked weights, act as the model does
    g = H.head_weights(gpt2)
    assert g.kind == H.model_kind(gpt2) in ("hooked_transformer", "bridge")
    assert len(g.ffn) == 2 and g.W_pos is not None and g.relative == (None, None)
    _, cache = gpt2.run_with_cache(torch.tensor([[1, 2, 3, 4]]))
    mlp_out = cache["blocks.0.hook_mlp_out"]
    assert mlp_out.abs().max() > 0
    assert torch.allclose(g.ffn[0](cache["blocks.0.ln2.hook_normalized"]), mlp_out, atol=1e-5)


def test_non_models_get_one_line_type_error():
    from tlassoc import patching as P
    from tlassoc.memory import basis, build_ideal, circuit, memory_report, recall_probes
    from tlassoc.theory import TheoryParams

    calls = {
        "head_weights": lambda m: H.head_weights(m),
        "model_kind": lambda m: H.model_kind(m),
        "induction_scores": lambda m: H.induction_scores(m),
        "previous_token_scores": lambda m: H.previous_token_scores(m),
        "attention_patterns": lambda m: H.attention_patterns(m, torch.tensor([[1, 2]])),
        "copying_scores": lambda m: H.copying_scores(m),
        "head_scores": lambda m: H.head_scores(m),
        "induction_prompts": lambda m: P.induction_prompts(m),
        "patch_heads": lambda m: P.patch_heads(m, (torch.ones(1, 3), torch.ones(1, 3))),
        "ablate_heads": lambda m: P.ablate_heads(m, torch.tensor([[1]]), [(0, 0)]),
        "basis": lambda m: basis(m, "tokens"),
        "circuit": lambda m: circuit(m, "W_E"),
        "memory_report": lambda m: memory_report(m),
        "recall_probes": lambda m: recall_probes(m),
        "from_model": lambda m: TheoryParams.from_model(m),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=r"^model='abc'; expected an AssocTransformer, "):
            call("abc")
        try:
            call("abc")
        except ValueError as err:  # also a ValueError, and one line
            assert "\n" not in str(err), name
    with pytest.raises(
        TypeError, match=r"^model=<\w+>; ideal_memories expected an AssocTransformer$"
    ):
        build_ideal(gpt2_small_offline())
