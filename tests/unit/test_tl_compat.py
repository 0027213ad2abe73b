"""TransformerLens's own tools on tlassoc models, on the installed TransformerLens major."""

import circuitsvis
import pytest
import torch
from transformer_lens import FactoredMatrix, head_detector, patching

from tlassoc import AssocConfig, AssocTransformer, presets

CONFIGS = {
    "rpe": presets.rpe(d_model=32, n_ctx=64),
    "ape-2heads": AssocConfig(
        d_model=32, n_heads=2, n_ctx=64, positional_embedding_type="standard"
    ),
}


def build(name):
    model = AssocTransformer(CONFIGS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # sharper attention, so patches have visible effects
    return model


def prompts(seq=12):
    gen = torch.Generator().manual_seed(0)
    half = torch.randint(0, 65, (2, seq // 2), generator=gen)
    clean = torch.cat([half, half], dim=1)
    corrupted = clean.clone()
    corrupted[:, seq // 2 :] = torch.randint(0, 65, (2, seq // 2), generator=gen)
    return clean, corrupted


def metric_of(clean):
    def metric(logits):
        logprobs = logits[:, :-1].log_softmax(-1)
        return logprobs.gather(-1, clean[:, 1:, None]).mean()

    return metric


def run_patched(model, corrupted, hook_name, edit):
    return model.run_with_hooks(corrupted, fwd_hooks=[(hook_name, edit)])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_head_output_patching_by_position_matches_hand_hooks(name):
    model = build(name)
    clean, corrupted = prompts()
    _, cache = model.run_with_cache(clean)
    metric = metric_of(clean)
    result = patching.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)
    n_layers, n_heads, n_pos = model.cfg.n_layers, model.cfg.n_heads, clean.shape[1]
    assert result.shape == (n_layers, n_pos, n_heads)
    by_hand = torch.zeros(n_layers, n_pos, n_heads)
    for layer in range(n_layers):
        hook = f"blocks.{layer}.attn.hook_z"
        for pos in range(n_pos):
            for head in range(n_heads):

                def edit(z, hook, pos=pos, head=head, hook_name=hook):
                    z[:, pos, head] = cache[hook_name][:, pos, head]
                    return z

                by_hand[layer, pos, head] = metric(run_patched(model, corrupted, hook, edit))
    torch.testing.assert_close(result, by_hand, rtol=0, atol=1e-6)
    assert by_hand.std() > 1e-4  # the patches matter


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pattern_patching_per_head_matches_hand_hooks(name):
    model = build(name)
    clean, corrupted = prompts()
    _, cache = model.run_with_cache(clean)
    metric = metric_of(clean)
    result = patching.get_act_patch_attn_head_pattern_all_pos(model, corrupted, cache, metric)
    assert result.shape == (model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        hook = f"blocks.{layer}.attn.hook_pattern"
        for head in range(model.cfg.n_heads):

            def edit(p, hook, head=head, hook_name=hook):
                p[:, head] = cache[hook_name][:, head]
                return p

            with torch.no_grad():
                expected = metric(run_patched(model, corrupted, hook, edit))
            # float32 agreement (the unhooked layer may run the fused attention kernel, whose
            # rounding differs from the step-by-step path by ~1e-7 relative)
            torch.testing.assert_close(result[layer, head], expected, rtol=1e-6, atol=1e-6)
    by_pos = patching.get_act_patch_attn_head_pattern_by_pos(model, corrupted, cache, metric)
    assert by_pos.shape == (model.cfg.n_layers, model.cfg.n_heads, clean.shape[1])


def test_detect_head_runs_on_strings():
    model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64, relative_form="bias")).eval()
    with torch.no_grad():  # a large bias for distance 1 makes layer 0 a previous-token head
        model.blocks[0].attn.b_rel[0, 1] = 30.0
    text = "To be, or not to be: that is the question."
    scores = head_detector.detect_head(model, text, "previous_token_head")
    assert scores.shape == (2, 1)
    assert scores[0, 0] > 0.9 and scores[1, 0] < scores[0, 0]
    dup = head_detector.detect_head(model, text, "duplicate_token_head")
    assert dup.shape == (2, 1)


def test_factored_matrix_circuits_and_eigenvalues():
    model = AssocTransformer(AssocConfig(d_model=32, n_heads=2, n_ctx=16))
    ov, qk = model.OV, model.QK
    assert isinstance(ov, FactoredMatrix) and isinstance(qk, FactoredMatrix)
    torch.testing.assert_close(ov.AB, model.W_V @ model.W_O)
    full_ov = model.W_E @ ov @ model.W_U
    assert full_ov.shape == (2, 2, 65, 65)
    eig = ov.eigenvalues
    assert eig.shape == (2, 2, 16)  # the non-zero spectrum, from the d_head x d_head product
    torch.testing.assert_close(
        eig.sum(-1).real, ov.AB.diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-4, atol=1e-4
    )


def test_circuitsvis_renders_the_cached_pattern():
    model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64))
    text = "To be, or not to be"
    _, cache = model.run_with_cache(text, remove_batch_dim=True)
    html = circuitsvis.attention.attention_patterns(
        tokens=model.to_str_tokens(text), attention=cache["pattern", 0]
    )
    assert "<div" in str(html) and len(str(html)) > 200


def test_activation_cache_helpers():
    model = AssocTransformer(AssocConfig(d_model=32, n_heads=2, n_ctx=16, use_attn_result=True))
    _, cache = model.run_with_cache(torch.randint(0, 65, (2, 10)))
    stacked = cache.stack_head_results(layer=-1)
    assert stacked.shape == (4, 2, 10, 32)
    decomposed = cache.decompose_resid(layer=None)
    torch.testing.assert_close(
        decomposed.sum(0), cache["blocks.1.hook_resid_post"], rtol=1e-5, atol=1e-5
    )
