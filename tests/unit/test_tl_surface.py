"""TransformerLens's own analysis functions run on tlassoc models (both TransformerLens majors)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

from tlassoc import AssocTransformer, presets

PROMPT = "First Citizen: Before we proceed"


@pytest.fixture(scope="module")
def rpe():
    """The attention-only preset (no feed-forward layer in any block)."""
    return AssocTransformer(presets.rpe(d_model=32, n_ctx=64, seed=1)).eval()


@pytest.fixture(scope="module")
def ffn():
    """Feed-forward layer in the last block only, with a non-zero output bias."""
    model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64, ffn_type="relu", seed=2)).eval()
    with torch.no_grad():
        model.blocks[-1].mlp.b_out.normal_(generator=torch.Generator().manual_seed(0))
    return model


def test_to_single_token(rpe):
    assert rpe.to_single_token("e") == rpe.tokenizer.encode("e")[0]
    with pytest.raises(ValueError, match="is 2 tokens"):
        rpe.to_single_token("ab")
    with pytest.raises(TypeError):
        rpe.to_single_token(3)


def test_tokens_to_residual_directions(rpe):
    toks = rpe.to_tokens(PROMPT)
    assert torch.equal(rpe.tokens_to_residual_directions(toks), rpe.W_U.T[toks])
    assert torch.equal(rpe.tokens_to_residual_directions("e"), rpe.W_U[:, 43])
    assert torch.equal(rpe.tokens_to_residual_directions(torch.tensor(5)), rpe.W_U[:, 5])
    with pytest.raises(ValueError, match="token=65"):
        rpe.tokens_to_residual_directions(65)


@pytest.mark.parametrize("which", ["rpe", "ffn"])
def test_logit_attrs_sum_to_the_logits(which, request):
    """No LayerNorm and no unembedding bias: the components' attributions add up to the logit
    (and, with ``incorrect_tokens``, to the logit difference)."""
    model = request.getfixturevalue(which)
    toks = model.to_tokens([PROMPT, PROMPT[::-1]])
    logits, cache = model.run_with_cache(toks)
    stack = cache.decompose_resid(layer=-1)[:, :, -1]  # [component, batch, d_model]
    answer, wrong = toks[:, 0], toks[:, 1]
    attrs = cache.logit_attrs(stack, tokens=answer)
    expected = logits[torch.arange(2), -1, answer]
    assert torch.allclose(attrs.sum(0), expected, atol=1e-4)
    diff = cache.logit_attrs(stack, tokens=answer, incorrect_tokens=wrong)
    expected_diff = expected - logits[torch.arange(2), -1, wrong]
    assert torch.allclose(diff.sum(0), expected_diff, atol=1e-4)
    one = cache.logit_attrs(stack[:, :1], tokens="e")  # a string goes through to_single_token
    assert torch.allclose(one.sum(0), logits[:1, -1, 43], atol=1e-4)


def test_full_resid_decomposition_includes_the_accumulated_bias(ffn):
    _, cache = ffn.run_with_cache(ffn.to_tokens(PROMPT))
    final = cache[f"blocks.{ffn.cfg.n_layers - 1}.hook_resid_post"]
    # MLP outputs whole (TransformerLens's per-neuron split needs an MLP in every block)
    parts = cache.get_full_resid_decomposition(expand_neurons=False)
    assert torch.allclose(parts.sum(0), final, atol=1e-4)
    every = AssocTransformer(
        presets.rpe(d_model=32, n_ctx=64, ffn_type="relu", ffn_layers=(0, 1), seed=3)
    ).eval()
    with torch.no_grad():
        for block in every.blocks:
            block.mlp.b_out.uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
    _, cache = every.run_with_cache(every.to_tokens(PROMPT))
    parts, labels = cache.get_full_resid_decomposition(return_labels=True)  # one row per neuron
    assert labels[-1] == "bias" and len(labels) == 2 + 2 * every.cfg.d_mlp + 1 + 1
    assert torch.allclose(parts.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-4)
    bias = ffn.accumulated_bias(ffn.cfg.n_layers)
    assert torch.equal(bias, ffn.blocks[-1].mlp.b_out) and bias.abs().sum() > 0
    assert ffn.accumulated_bias(ffn.cfg.n_layers, include_mlp_biases=False).abs().sum() == 0
    with pytest.raises(ValueError, match="layer=3"):
        ffn.accumulated_bias(3)


def test_biases_are_zeros_of_transformer_lens_shapes():
    model = AssocTransformer(presets.ape(d_model=32, n_ctx=64))
    tl_model = model.to_transformer_lens()  # TransformerLens's own object, same weights
    for name in ("b_Q", "b_K", "b_V", "b_O", "b_U"):
        ours, theirs = getattr(model, name), getattr(tl_model, name)
        assert ours.shape == theirs.shape, name
        assert ours.abs().sum() == 0 and theirs.abs().sum() == 0, name


def test_set_use_attn_result(rpe):
    model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64, seed=1)).eval()
    toks = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(toks)
    assert "blocks.0.attn.hook_result" not in cache.keys()
    model.set_use_attn_result(True)
    logits, cache = model.run_with_cache(toks)
    result = cache["blocks.0.attn.hook_result"]  # [batch, pos, head, d_model]
    assert result.shape == (1, toks.shape[1], 1, 32)
    assert torch.allclose(result.sum(2), cache["blocks.0.hook_attn_out"], atol=1e-5)
    assert torch.allclose(logits, rpe(toks), atol=1e-5)
    with pytest.raises(TypeError):
        model.set_use_attn_result("yes")


def test_attention_only_blocks_have_a_zero_mlp_output(rpe):
    toks = rpe.to_tokens(PROMPT)
    logits, cache = rpe.run_with_cache(toks)
    for layer in range(rpe.cfg.n_layers):
        assert cache[f"blocks.{layer}.hook_mlp_out"].abs().sum() == 0
        mid = cache[f"blocks.{layer}.hook_resid_pre"] + cache[f"blocks.{layer}.hook_attn_out"]
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_mid"], mid)
    # the zero write changes no bit (reference: the same step-by-step attention, MLP unhooked)
    same_path = [(f"blocks.{i}.attn.hook_pattern", lambda x, hook: x) for i in range(2)]
    assert torch.equal(logits, rpe.run_with_hooks(toks, fwd_hooks=same_path))
    # the hook is a real write to the residual stream: a value patched in changes the output
    push = rpe.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: x + 1)])
    assert not torch.allclose(push, logits)


def test_get_act_patch_block_every_on_the_attention_only_preset(rpe):
    clean = rpe.to_tokens(PROMPT)
    corrupted = clean.roll(1, dims=1)
    answer = int(clean[0, -1])

    def metric(logits):
        return logits[0, -1].log_softmax(-1)[answer]

    _, clean_cache = rpe.run_with_cache(clean)
    out = patching.get_act_patch_block_every(rpe, corrupted, clean_cache, metric)
    out = out if isinstance(out, torch.Tensor) else out.values
    assert out.shape == (3, rpe.cfg.n_layers, clean.shape[1])
    corrupted_value = metric(rpe(corrupted))
    # no feed-forward layer: patching its (zero) output changes nothing
    assert torch.allclose(out[2], corrupted_value.expand_as(out[2]), atol=1e-5)
    # the residual stream and the attention outputs do carry the clean prompt
    assert not torch.allclose(out[0], corrupted_value.expand_as(out[0]))
    assert not torch.allclose(out[1], corrupted_value.expand_as(out[1]))
