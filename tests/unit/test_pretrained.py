"""tlassoc.pretrained: offline error, local cache, GPT-2 architecture through TL's loader."""

from __future__ import annotations

import time

import pytest
import torch
from _heads_fixtures import gpt2_small_offline

from tlassoc import AssocTransformer, presets
from tlassoc import pretrained as PT


def test_offline_gpt2_fails_fast_with_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PT.HubUnavailableError, match="HF_HUB_OFFLINE") as err:
        PT.load_model("gpt2", cache_dir=tmp_path)
    assert time.perf_counter() - start < 2.0
    assert PT.official_name("gpt2") in str(err.value) and "HF_HOME" in str(err.value)


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.perf_counter()
    with pytest.raises(PT.HubUnavailableError, match="did not answer"):
        PT.load_model("gpt2", cache_dir=tmp_path)
    assert time.perf_counter() - start < 2.0


def test_official_name():
    assert PT.official_name("gpt2") in ("gpt2", "openai-community/gpt2")
    assert PT.official_name("GPT2-Medium").lower().endswith("gpt2-medium")
    assert PT.official_name("not-a-model") == "not-a-model"


def _fake_cache(root, repo):
    """A Hugging Face cache entry for ``repo`` holding a tiny GPT-2 (written offline)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tlassoc.tokenizer import CharTokenizer

    folder = root / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("a" * 40)
    tok = CharTokenizer.tiny_shakespeare().to_hf()
    cfg = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        n_positions=32,
        n_ctx=32,
        vocab_size=65,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg)
    hf.save_pretrained(snap)
    tok.save_pretrained(snap)
    return hf.eval()


def test_local_cache_is_used_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = _fake_cache(tmp_path, PT.official_name("gpt2"))
    model = PT.load_model("gpt2", cache_dir=tmp_path)
    tokens = torch.tensor([[1, 5, 9, 2]])
    ref = hf(tokens).logits
    got = model(tokens)
    centre = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731 - TL centres the unembedding
    assert torch.allclose(centre(got), centre(ref), atol=1e-4)


def test_gpt2_like_matches_its_hf_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    from tlassoc.tokenizer import CharTokenizer

    cfg = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        n_ctx=64,
        vocab_size=65,
        architectures=["GPT2LMHeadModel"],
    )
    torch.manual_seed(1)
    hf = GPT2LMHeadModel(cfg).eval()
    model = PT.gpt2_like(hf_model=hf, tokenizer=CharTokenizer.tiny_shakespeare().to_hf())
    tokens = torch.randint(0, 65, (2, 10))
    a, b = model(tokens), hf(tokens).logits
    assert torch.allclose(a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True), atol=1e-4)
    assert not model.training


def test_compare_induction_heads_table_and_figure():
    models = {
        "rpe": AssocTransformer(presets.rpe(d_model=16, n_ctx=128)).eval(),
        "gpt2-like": gpt2_small_offline(),
    }
    table, fig = PT.compare_induction_heads(models, repeat_len=20, n_samples=2)
    assert sorted(set(table["model"])) == ["gpt2-like", "rpe"]
    assert len(table) == 2 * 1 + 2 * 4
    assert {"induction", "previous_token", "head_name"} <= set(table.columns)
    assert len(fig.axes) >= 4
