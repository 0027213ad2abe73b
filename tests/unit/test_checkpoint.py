import json
import pickle

import pytest
import torch

from tlassoc import AssocConfig, AssocTransformer, CheckpointError, presets
from tlassoc.model import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture
def model():
    m = AssocTransformer(presets.rpe(d_model=32, n_ctx=64, seed=7, dtype=torch.float64))
    with torch.no_grad():
        m.blocks[0].attn.W_K.add_(1.0)  # not the init: the checkpoint must carry real weights
    return m


def test_round_trip_is_bit_exact(model, tmp_path):
    model.save(tmp_path / "ckpt")
    loaded = AssocTransformer.load(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg and loaded.tokenizer == model.tokenizer
    for (n1, p1), (n2, p2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert n1 == n2 and p1.dtype == p2.dtype and torch.equal(p1, p2)
    assert loaded.trainable_parameter_names() == model.trainable_parameter_names()
    toks = torch.randint(0, 65, (2, 40))
    assert torch.equal(model(toks), loaded(toks))


def test_round_trip_keeps_ffn_ln_and_word_tokenizer(tmp_path):
    from tlassoc import WordTokenizer

    tok = WordTokenizer(["Paris", "France", "Rome", "Italy"])
    cfg = AssocConfig(d_model=16, n_heads=2, d_vocab=4, ffn_type="relu", normalization_type="LN")
    m = AssocTransformer(cfg, tokenizer=tok)
    loaded = AssocTransformer.load(m.save(tmp_path / "c"))
    assert loaded.tokenizer == tok and loaded.to_str_tokens("Rome Italy") == ["Rome", "Italy"]


def test_pickle_is_refused(model, tmp_path):
    folder = model.save(tmp_path / "ckpt")
    with open(folder / WEIGHTS_FILE, "wb") as fh:
        pickle.dump({"embed.W_E": model.W_E.detach()}, fh)
    with pytest.raises(CheckpointError, match="pickle"):
        AssocTransformer.load(folder)
    torch.save(model.state_dict(), folder / WEIGHTS_FILE)  # torch.save's zip+pickle format
    with pytest.raises(CheckpointError, match="pickle"):
        AssocTransformer.load(folder)


def test_tampered_weights_are_refused(model, tmp_path):
    folder = model.save(tmp_path / "ckpt")
    raw = bytearray((folder / WEIGHTS_FILE).read_bytes())
    raw[-1] ^= 0xFF  # flip bits inside a tensor
    (folder / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        AssocTransformer.load(folder)


def test_broken_config_is_refused(model, tmp_path):
    folder = model.save(tmp_path / "ckpt")
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        AssocTransformer.load(folder)
    with pytest.raises(CheckpointError, match="missing"):
        AssocTransformer.load(tmp_path / "nowhere")


def test_half_written_file_never_replaces_a_good_one(model, tmp_path, monkeypatch):
    folder = model.save(tmp_path / "ckpt")
    good = {name: (folder / name).read_bytes() for name in (WEIGHTS_FILE, CONFIG_FILE)}
    with torch.no_grad():
        model.blocks[1].attn.W_O.mul_(2)

    import tlassoc._io as io_module

    real_fdopen = io_module.os.fdopen

    class FailingFile:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError("disk full")

    monkeypatch.setattr(io_module.os, "fdopen", lambda fd, mode: FailingFile(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="disk full"):
        model.save(folder)
    monkeypatch.undo()
    assert {n: (folder / n).read_bytes() for n in good} == good
    assert sorted(p.name for p in folder.iterdir()) == sorted(good)  # no temp files left
    AssocTransformer.load(folder)


def test_weights_of_another_model_are_refused(tmp_path):
    a = AssocTransformer(AssocConfig(d_model=16)).save(tmp_path / "a")
    b = AssocTransformer(AssocConfig(d_model=16, n_layers=3)).save(tmp_path / "b")
    (a / WEIGHTS_FILE).write_bytes((b / WEIGHTS_FILE).read_bytes())
    meta = json.loads((a / CONFIG_FILE).read_text())
    meta["weights_sha256"] = json.loads((b / CONFIG_FILE).read_text())["weights_sha256"]
    (a / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match the config"):
        AssocTransformer.load(a)
