"""Positional encodings: ALiBi and rotary match a direct computation, hooks fire, the fused
training path equals the hooked path, length-scaled attention is neutral at T_train, and
TransformerLens exports what it can express with equal logits."""

from __future__ import annotations

import math

import pytest
import torch

from tlassoc import AssocTransformer, presets
from tlassoc._tl import TL_MAJOR
from tlassoc.model import alibi_slopes, apply_rotary, length_scale

ENCODINGS = ["standard", "relative", "alibi", "rotary", "none"]


def _model(pos: str, **kw) -> AssocTransformer:
    base = dict(d_model=32, n_ctx=64, positional_embedding_type=pos, seed=3)
    return AssocTransformer(presets.rpe(**{**base, **kw})).eval()


def _tokens(n: int = 24, batch: int = 3) -> torch.Tensor:
    return torch.randint(65, (batch, n), generator=torch.Generator().manual_seed(0))


def test_alibi_scores_are_the_linear_penalty():
    model = _model("alibi", n_heads=2, d_head=32, identity_query=False)
    tokens = _tokens()
    _, cache = model.run_with_cache(tokens)
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    n = tokens.shape[1]
    t = torch.arange(n)
    dist = (t[:, None] - t[None, :]).clamp(min=0).float()
    slopes = torch.tensor([2.0**-4, 2.0**-8])
    want = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(32) - slopes[:, None, None] * dist
    want = want.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    got = cache["blocks.0.attn.hook_attn_scores"]
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(alibi_slopes(2).float(), slopes)
    assert torch.allclose(cache["blocks.0.attn.hook_rel_scores"][1, 3, 0], -slopes[1] * 3)


def test_rotary_is_a_rotation_of_each_half_pair():
    x = torch.randn(2, 7, 1, 8, generator=torch.Generator().manual_seed(1))
    got = apply_rotary(x, 10000.0)
    z = torch.complex(x[..., :4], x[..., 4:])  # pair (i, i + d/2) as a complex number
    theta = 10000.0 ** (-torch.arange(4) / 4)
    angle = torch.arange(7)[None, :, None, None] * theta
    rotated = z * torch.exp(1j * angle)
    want = torch.cat([rotated.real, rotated.imag], dim=-1)
    assert torch.allclose(got, want.float(), atol=1e-5)
    # relative: the score depends on t - s only
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    Q = apply_rotary(q.expand(1, 10, 1, 8), 100.0)
    K = apply_rotary(k.expand(1, 10, 1, 8), 100.0)
    s = torch.einsum("bqhd,bkhd->qk", Q, K)
    assert torch.allclose(s[5, 3], s[7, 5], atol=1e-5) and torch.allclose(s[9, 9], s[0, 0])


def test_rotary_hooks_fire_and_rotate_q_and_k():
    model = _model("rotary")
    _, cache = model.run_with_cache(_tokens())
    q, rq = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_rot_q"]
    assert torch.allclose(rq, apply_rotary(q, model.cfg.rotary_base))
    assert "blocks.1.attn.hook_rot_q" not in cache  # only the position layers rotate
    assert torch.allclose(rq[:, 0], q[:, 0])  # position 0 is not rotated


@pytest.mark.parametrize("pos", ENCODINGS)
@pytest.mark.parametrize("scaled", [False, True])
def test_fused_path_equals_hooked_path_and_hooks_fire(pos, scaled):
    model = _model(pos, length_scale_len=16 if scaled else None)
    tokens = _tokens(40)
    fused = model(tokens)
    hooked, cache = model.run_with_cache(tokens)
    assert torch.allclose(fused, hooked, atol=1e-5)
    assert "blocks.0.attn.hook_pattern" in cache and "blocks.1.attn.hook_z" in cache
    fired = []
    model.add_hook("blocks.0.attn.hook_pattern", lambda a, hook: fired.append(hook.name))
    try:
        assert torch.allclose(model(tokens), fused, atol=1e-5)
    finally:
        model.reset_hooks()
    assert fired == ["blocks.0.attn.hook_pattern"]


@pytest.mark.parametrize(
    ("pos", "extra"),
    [("standard", {}), ("relative", {}), ("relative", {"relative_form": "bias"}),
     ("alibi", {"n_heads": 2, "d_head": 16, "identity_query": False}), ("rotary", {})],
)  # fmt: skip
def test_fused_path_has_the_gradients_of_the_hooked_path(pos, extra):
    tokens = _tokens(40)
    grads = []
    for fast in (True, False):
        model = _model(pos, fast_attention=fast, length_scale_len=16, **extra).train()
        loss = model(tokens, return_type="loss")
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-4, atol=1e-6), name


def test_a_hook_that_edits_changes_the_output_on_the_training_path():
    model = _model("relative")
    model.train()
    tokens = _tokens()
    base = model(tokens)
    model.add_hook("blocks.1.attn.hook_pattern", lambda a, hook: torch.zeros_like(a))
    try:
        assert not torch.allclose(model(tokens), base)
    finally:
        model.reset_hooks()


def test_length_scaled_attention_is_neutral_at_the_training_length():
    T = 20
    plain, scaled = _model("relative"), _model("relative", length_scale_len=T)
    x = torch.randn(3, T, 32, generator=torch.Generator().manual_seed(2))
    W_rel = plain.rel_embed.W_rel
    for layer in (0, 1):
        a, b = plain.blocks[layer].attn(x, W_rel), scaled.blocks[layer].attn(x, W_rel)
        assert torch.allclose(a[:, T - 1], b[:, T - 1], atol=1e-6)  # T keys: unchanged
        assert not torch.allclose(a[:, T // 2], b[:, T // 2], atol=1e-4)  # fewer keys: softer
    assert length_scale(T, T)[T - 1].item() == pytest.approx(1.0)
    assert length_scale(4 * T, T)[4 * T - 1].item() == pytest.approx(math.log(80) / math.log(20))


@pytest.mark.parametrize("pos", ["standard", "rotary", "alibi", "none"])
def test_transformer_lens_export_has_equal_logits(pos):
    model = _model(pos, n_heads=2, d_head=32, identity_query=False, relative_layers=(0, 1))
    tokens = _tokens(30, 2)
    if pos == "alibi" and TL_MAJOR >= 4:
        with pytest.raises(ValueError, match="alibi"):
            model.to_transformer_lens()
        return
    tl = model.to_transformer_lens()
    assert torch.allclose(tl(tokens), model(tokens), atol=1e-4)


def test_export_refuses_what_transformer_lens_cannot_express():
    with pytest.raises(ValueError, match="every layer"):
        _model("rotary").to_transformer_lens()  # positions only in layer 0
    with pytest.raises(ValueError, match="length_scale_len"):
        _model("standard", length_scale_len=16).to_transformer_lens()


def test_position_settings_are_validated():
    with pytest.raises(ValueError, match="even d_head"):
        presets.rpe(d_model=33, positional_embedding_type="rotary")
    with pytest.raises(ValueError, match="length_scale_len=1"):
        presets.rpe(length_scale_len=1)
    with pytest.raises(ValueError, match="rotary_base"):
        presets.rpe(rotary_base=float("inf"))
    with pytest.raises(ValueError, match="needs at least one relative layer"):
        presets.rpe(positional_embedding_type="alibi", relative_layers=())
