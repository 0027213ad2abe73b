"""Loading what one trained or downloaded: run folders, experiment output folders, local
Hugging Face folders, and the offline message."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import tlassoc.pretrained as PT
from tlassoc import AssocTransformer, presets
from tlassoc.config import TrainConfig
from tlassoc.data import BigramModel, TriggerBigramTask
from tlassoc.model import CheckpointError
from tlassoc.training import train


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A training run with two checkpoints (steps 4 and 8)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    model = AssocTransformer(presets.rpe(d_model=16, n_ctx=32, seed=0))
    task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=32, batch_size=4)
    cfg = TrainConfig(steps=8, batch_size=4, log_every=0, checkpoint_every=4, keep_checkpoints=3)
    train(model, task, cfg, out_dir=out, progress=False)
    return out, model


def test_load_a_run_folder_gives_its_latest_checkpoint(run_folder):
    out, trained = run_folder
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 8
    loaded = AssocTransformer.load(out)
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(loaded(tokens), trained(tokens))  # the weights after the last step
    earlier = AssocTransformer.load(out / "checkpoints" / "step-00000004")
    assert not torch.equal(earlier(tokens), loaded(tokens))


def test_a_broken_pointer_falls_back_to_the_newest_checkpoint(run_folder, tmp_path):
    out, trained = run_folder
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "checkpoints" / "latest.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        loaded = AssocTransformer.load(copy)
    tokens = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(tokens), trained(tokens))
    for step in (copy / "checkpoints").glob("step-*"):
        shutil.rmtree(step)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        AssocTransformer.load(copy)


def test_load_an_experiment_output_folder(tmp_path):
    one = AssocTransformer(presets.rpe(d_model=16, n_ctx=32, seed=1))
    one.save(tmp_path / "models" / "rpe_seed1")
    (tmp_path / "results.json").write_text("{}")
    tokens = torch.tensor([[1, 2, 3]])
    assert torch.equal(AssocTransformer.load(tmp_path)(tokens), one(tokens))
    AssocTransformer(presets.ape(d_model=16, n_ctx=32)).save(tmp_path / "models" / "ape_seed1")
    with pytest.raises(CheckpointError, match=r"2 models under models/ \(ape_seed1, rpe_seed1\)"):
        AssocTransformer.load(tmp_path)


def test_a_folder_that_is_nothing_still_says_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        AssocTransformer.load(tmp_path)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A small GPT-2-architecture model saved as downloaded Hugging Face files would be."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tlassoc.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.tiny_shakespeare().to_hf()
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, n_ctx=64, vocab_size=len(tokenizer),
        bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"],
    )  # fmt: skip
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(config).eval()
    folder = tmp_path_factory.mktemp("weights") / "gpt2"  # named like the hub model
    hf_model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder, hf_model


def test_load_model_reads_a_local_folder_offline(hf_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, hf_model = hf_folder
    model = PT.load_model(str(folder))
    tokens = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = hf_model(tokens).logits
        got = model(tokens)
    # TransformerLens centres the logits (3.x) / keeps them (4.x compatibility mode): compare
    # log-probabilities, which both keep
    assert torch.allclose(got.log_softmax(-1), expected.log_softmax(-1), atol=1e-4)
    assert model.cfg.n_layers == 2 and model.cfg.n_heads == 2


def test_load_model_refuses_a_folder_of_pickles(hf_folder, tmp_path):
    folder, _ = hf_folder
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: pickles, never loaded"):
        PT.load_model(str(pickled))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        PT.load_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is not a folder"):
        PT.load_model(str(tmp_path / "absent"))


def test_compare_induction_heads_accepts_a_folder_name(hf_folder, monkeypatch):
    from tlassoc.experiments.induction_heads import compare_induction_heads

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, _ = hf_folder
    rpe = AssocTransformer(presets.rpe(d_model=16, n_ctx=64))
    table, _ = compare_induction_heads(
        {"rpe": rpe, "local gpt2": str(folder)}, repeat_len=8, n_samples=2
    )
    assert sorted(set(table["model"])) == ["local gpt2", "rpe"]
    assert len(table[table["model"] == "local gpt2"]) == 4  # 2 layers x 2 heads
    same, _ = PT.compare_induction_heads(
        {"rpe": rpe, "local gpt2": folder}, repeat_len=8, n_samples=2
    )
    assert same.equals(table)


def test_offline_message_names_the_folder_route_and_only_set_switches(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(PT.HubUnavailableError) as err:
        PT.load_model("gpt2", cache_dir=tmp_path)
    text = str(err.value)
    assert "HF_HUB_OFFLINE set" in text and "unset HF_HUB_OFFLINE where" in text
    assert "load_model('/path/to/gpt2')" in text and "TRANSFORMERS_OFFLINE" not in text
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: unreachable
    with pytest.raises(PT.HubUnavailableError) as err:
        PT.load_model("gpt2", cache_dir=tmp_path, probe_timeout=0.5)
    assert "unset" not in str(err.value) and "load_model('/path/to/gpt2')" in str(err.value)
