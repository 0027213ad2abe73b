import math

import pytest
import torch

from tlassoc import AssocConfig, AssocTransformer, presets
from tlassoc.model import relative_distance_index


def small(**kw):
    base = dict(d_model=32, n_ctx=64, seed=1)
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def rpe():
    return AssocTransformer(presets.rpe(**small())).eval()


def tokens(batch=2, pos=20, seed=0):
    return torch.randint(0, 65, (batch, pos), generator=torch.Generator().manual_seed(seed))


def test_weight_shapes_follow_transformer_lens():
    cfg = AssocConfig(
        d_model=32, n_heads=4, n_ctx=16, ffn_type="relu", positional_embedding_type="standard"
    )
    m = AssocTransformer(cfg)
    assert m.W_E.shape == (65, 32) and m.W_pos.shape == (16, 32) and m.W_U.shape == (32, 65)
    assert m.W_Q.shape == m.W_K.shape == m.W_V.shape == (2, 4, 32, 8)
    assert m.W_O.shape == (2, 4, 8, 32)
    assert m.QK.AB.shape == (2, 4, 32, 32) and m.OV.AB.shape == (2, 4, 32, 32)
    assert m.blocks[1].mlp.W_in.shape == (32, 128)


def test_relative_model_has_w_rel_and_no_w_pos(rpe):
    assert rpe.W_rel.shape == (64, 32)
    with pytest.raises(AttributeError, match="W_pos"):
        _ = rpe.W_pos
    assert torch.equal(rpe.W_Q[0, 0], torch.eye(32))


def test_same_seed_same_bits_and_frozen_parts():
    a = AssocTransformer(presets.rpe(**small()))
    torch.manual_seed(123)  # global RNG must not matter
    b = AssocTransformer(presets.rpe(**small()))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    c = AssocTransformer(presets.rpe(**small(seed=2)))
    assert not torch.equal(a.W_E, c.W_E)
    assert a.trainable_parameter_names() == [
        "blocks.0.attn.W_K",
        "blocks.1.attn.W_K",
        "blocks.1.attn.W_O",
    ]
    z = AssocTransformer(presets.rpe(**small(zero_init=("blocks.*.attn.W_K",))))
    assert z.W_K.abs().sum() == 0 and z.W_E.abs().sum() > 0


def test_unknown_frozen_pattern_is_refused():
    with pytest.raises(ValueError, match="frozen pattern 'blocks.0.attn.W_X' matches no parameter"):
        AssocTransformer(AssocConfig(d_model=16, frozen=("blocks.0.attn.W_X",)))


def naive_scores(model, toks, layer=0):
    """Reference: materialise x_s + r_{t-s} for every (t, s) pair and project it."""
    cfg = model.cfg
    x = model.W_E[toks]  # no positions are added to the residual stream in RPE
    attn = model.blocks[layer].attn
    W_Q, W_K = attn.query_weight()[0], attn.W_K[0]
    n = toks.shape[1]
    idx = relative_distance_index(n, n, cfg.max_relative_distance)
    key_in = x[:, None, :, :] + model.W_rel[idx][None]  # [batch, t, s, d]
    q = x @ W_Q
    k = key_in @ W_K
    scores = torch.einsum("btd,btsd->bts", q, k) / math.sqrt(cfg.d_head)
    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))


def test_efficient_relative_term_equals_naive_reference(rpe):
    toks = tokens(pos=30)
    _, cache = rpe.run_with_cache(toks)
    torch.testing.assert_close(
        cache["blocks.0.attn.hook_attn_scores"][:, 0], naive_scores(rpe, toks), rtol=1e-5, atol=1e-5
    )


def test_efficient_relative_term_with_clipping_and_trained_query():
    cfg = presets.rpe(**small(identity_query=False, max_relative_distance=5, n_heads=1, frozen=()))
    model = AssocTransformer(cfg)
    toks = tokens(pos=25)
    _, cache = model.run_with_cache(toks)
    torch.testing.assert_close(
        cache["blocks.0.attn.hook_attn_scores"][:, 0],
        naive_scores(model, toks),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bias_form_adds_one_scalar_per_distance():
    model = AssocTransformer(presets.rpe(**small(relative_form="bias", max_relative_distance=4)))
    with torch.no_grad():
        model.blocks[0].attn.b_rel.copy_(torch.tensor([[0.0, 5.0, -1.0, 2.0]]))
    _, cache = model.run_with_cache(tokens(pos=8))
    rel = cache["blocks.0.attn.hook_rel_scores"][0, 0]
    assert rel[5, 4] == 5.0 and rel[5, 3] == -1.0 and rel[7, 0] == 2.0 and rel[3, 3] == 0.0


def test_relative_scores_are_shift_invariant(rpe):
    toks = tokens(batch=1, pos=20)
    prefix = tokens(batch=1, pos=7, seed=5)
    _, short = rpe.run_with_cache(toks)
    _, long = rpe.run_with_cache(torch.cat([prefix, toks], dim=1))
    a = short["blocks.0.attn.hook_attn_scores"][0, 0]
    b = long["blocks.0.attn.hook_attn_scores"][0, 0, 7:, 7:]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # ... whereas absolute positions make them depend on where the sequence starts
    ape = AssocTransformer(presets.ape(**small())).eval()
    _, s2 = ape.run_with_cache(toks)
    _, l2 = ape.run_with_cache(torch.cat([prefix, toks], dim=1))
    assert not torch.allclose(
        s2["blocks.0.attn.hook_attn_scores"][0, 0],
        l2["blocks.0.attn.hook_attn_scores"][0, 0, 7:, 7:],
        atol=1e-3,
    )


def test_relative_model_runs_beyond_n_ctx(rpe):
    assert rpe(tokens(batch=1, pos=100)).shape == (1, 100, 65)


def test_hook_attn_scores_is_the_true_pre_softmax_score(rpe):
    toks = tokens(batch=1, pos=12)
    logits, cache = rpe.run_with_cache(toks)
    scores = cache["blocks.0.attn.hook_attn_scores"]
    torch.testing.assert_close(scores.softmax(-1), cache["blocks.0.attn.hook_pattern"])

    def force_first_token(value, hook):
        out = torch.full_like(value, float("-inf"))
        out[..., 0] = 0.0
        return out

    patched = rpe.run_with_hooks(
        toks, fwd_hooks=[("blocks.0.attn.hook_attn_scores", force_first_token)]
    )
    assert (patched - logits).abs().max() > 1e-3


def test_hook_result_sums_to_attention_output():
    model = AssocTransformer(AssocConfig(d_model=32, n_heads=4, n_ctx=16, use_attn_result=True))
    _, cache = model.run_with_cache(tokens(pos=10))
    torch.testing.assert_close(
        cache["blocks.1.attn.hook_result"].sum(2), cache["blocks.1.hook_attn_out"]
    )


def test_loss_and_return_types(rpe):
    toks = tokens(pos=16)
    logits, loss = rpe(toks, return_type="both")
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 65), toks[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(loss, manual)
    assert rpe(toks, return_type="loss", loss_per_token=True).shape == (2, 15)
    assert rpe(toks, return_type=None) is None
    assert rpe(toks, stop_at_layer=1).shape == (2, 16, 32)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.tensor([[1, 2, 70]]), "token id 70 >= d_vocab 65"),
        (torch.tensor([[1, -2, 3]]), "token id -2 < 0"),
        (torch.tensor([[1.0, 2.0]]), "dtype torch.float32"),
        (torch.zeros(1, 2, 3, dtype=torch.long), r"shape \(1, 2, 3\)"),
        (torch.zeros(1, 0, dtype=torch.long), "no positions"),
        ([1, 2, 3], "expected a tensor of token ids or a string"),
    ],
)
def test_bad_tokens_get_a_clear_error_and_change_nothing(rpe, bad, message):
    before = {k: v.clone() for k, v in rpe.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        rpe(bad)
    after = rpe.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_absolute_positions_beyond_n_ctx_are_refused():
    model = AssocTransformer(presets.ape(**small(n_ctx=16)))
    with pytest.raises(ValueError, match="sequence length 17 > n_ctx 16"):
        model(tokens(pos=17))


def test_tokenizer_helpers(rpe):
    toks = rpe.to_tokens("To be")
    assert toks.shape == (1, 5) and rpe.to_string(toks[0]) == "To be"
    assert rpe.to_str_tokens(toks) == ["T", "o", " ", "b", "e"]
    assert rpe.to_tokens(["ab", "cd"]).shape == (2, 2)
    with pytest.raises(ValueError, match="different token lengths"):
        rpe.to_tokens(["ab", "cde"])
    with pytest.raises(ValueError, match="unknown token"):
        rpe.to_tokens("caf\u00e9")
    with pytest.raises(ValueError, match="no BOS token"):
        rpe.to_tokens("ab", prepend_bos=True)
    torch.testing.assert_close(rpe("To be"), rpe(toks))


def test_generate_greedy_and_seeded_sampling(rpe):
    greedy = rpe.generate("To be", max_new_tokens=6)
    assert greedy.startswith("To be") and len(greedy) == 11
    assert rpe.generate("To be", max_new_tokens=6) == greedy
    a = rpe.generate("To be", max_new_tokens=20, do_sample=True, seed=3)
    b = rpe.generate("To be", max_new_tokens=20, do_sample=True, seed=3)
    c = rpe.generate("To be", max_new_tokens=20, do_sample=True, seed=4)
    assert a == b and a != c
    out = rpe.generate(tokens(batch=3, pos=4), max_new_tokens=2, do_sample=True, top_k=1, seed=0)
    torch.testing.assert_close(out, rpe.generate(tokens(batch=3, pos=4), max_new_tokens=2))
    with pytest.raises(ValueError, match="max_new_tokens=-1"):
        rpe.generate("a", max_new_tokens=-1)


def test_layer_norm_and_ffn_model_trains_all_parts():
    model = AssocTransformer(
        AssocConfig(d_model=32, n_heads=2, n_ctx=16, ffn_type="relu", normalization_type="LN")
    )
    loss = model(tokens(pos=16), return_type="loss")
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_identity_query_hook_edits_stay_in_their_head():
    model = AssocTransformer(AssocConfig(d_model=16, n_heads=1, n_ctx=8, identity_query=True))
    toks = tokens(pos=6)
    _, clean = model.run_with_cache(toks)

    def zero_query(q, hook):
        q[:] = 0.0  # in place, as TransformerLens's patch setters do
        return q

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_q", zero_query)]):
        _, edited = model.run_with_cache(toks)
    torch.testing.assert_close(edited["blocks.0.hook_resid_pre"], clean["blocks.0.hook_resid_pre"])
    assert edited["blocks.0.attn.hook_q"].abs().sum() == 0


def test_start_at_layer_resumes_the_forward_pass(rpe):
    toks = tokens()
    for layer in (0, 1, 2):
        resid = rpe(toks, stop_at_layer=layer)
        torch.testing.assert_close(rpe(resid, start_at_layer=layer), rpe(toks), rtol=0, atol=0)
    with pytest.raises(ValueError, match="start_at_layer=3"):
        rpe(resid, start_at_layer=3)
    with pytest.raises(ValueError, match="return_type='loss' with start_at_layer"):
        rpe(resid, start_at_layer=1, return_type="loss")
    with pytest.raises(ValueError, match="expected a residual stream"):
        rpe(toks, start_at_layer=1)


def test_incremental_block_update_equals_the_full_block():
    """Changing one input row of a block: TransformerBlock.forward_incremental (used by
    batched patching) gives the block's full forward output, for sharp and soft attention."""
    from tlassoc.model import INCREMENTAL_HOOKS

    cfg = AssocConfig(
        d_model=32, n_heads=2, n_ctx=64, ffn_type="relu", normalization_type="LN", seed=4
    )
    model = AssocTransformer(cfg).eval()
    with torch.no_grad():
        model.blocks[1].attn.W_K.mul_(6.0)  # some rows attend almost only to one key
    toks = tokens(batch=2, pos=12)
    names = {f"blocks.1.{h}" for h in INCREMENTAL_HOOKS}
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
    cached = {h: cache[f"blocks.1.{h}"] for h in INCREMENTAL_HOOKS}
    resid = cached["hook_resid_pre"]
    pos = torch.tensor([0, 5, 11])
    new = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(0))
    block = model.blocks[1]
    assert (
        block.supports_incremental
        and not AssocTransformer(presets.rpe(d_model=16)).blocks[0].supports_incremental
    )
    got = block.forward_incremental(cached, new, pos)
    for c in range(3):
        changed = resid.clone()
        changed[:, pos[c]] = new[c]
        torch.testing.assert_close(got[2 * c : 2 * c + 2], block(changed), rtol=1e-5, atol=1e-5)
