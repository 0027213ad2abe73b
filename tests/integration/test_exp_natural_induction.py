"""The natural_induction experiment: a small model trained on real text, its heads next to the
simplified models."""

from __future__ import annotations

import math

import pytest
import torch
from _exp_helpers import check_config_errors, check_one_seed_files, reproduce_error, run_quick

from tlassoc.data.natural import (
    TEXT_VOCAB,
    TextTask,
    encode_text,
    load_text,
    python_docs_text,
    text_tokenizer,
)
from tlassoc.experiments.natural_induction import (
    IDEAL_MODEL,
    TEXT_MODEL,
    NaturalInductionConfig,
    bigram_loss,
    icl_score,
    load_pretrained,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    exp, _, result, out = run_quick(
        "natural_induction", tmp_path_factory.mktemp("natural_induction")
    )
    return exp, result, out


def test_result_structure_and_written_files(run):
    exp, result, out = run
    rec = result.per_seed[0]
    assert set(rec) == {TEXT_MODEL, IDEAL_MODEL}
    text = rec[TEXT_MODEL]
    assert len(text["loss_by_position"]) == 48 and len(text["scores"]) == 8
    assert len(text["patching"]["effect"]) == 2 and len(text["patching"]["effect"][0]) == 4
    assert text["top_patched_is_induction_head"] in (0.0, 1.0)
    assert result.environment["text"]["source"] == "python-docs"
    figures = ["head_scores.png", "patching.png", "loss_by_position.png"]
    check_one_seed_files(out, "natural_induction", 3, figures, "## Best heads per model")
    assert (out / "models" / f"{TEXT_MODEL}-seed0").is_dir()


def test_numbers_that_hold_whatever_the_training(run):
    """The text model learns the text (held-out loss well below a uniform guess over the 96
    characters, ln 96 = 4.56); the bigram reference is below uniform too; the ideal simplified
    construction, scored by the same code, has its induction and previous-token heads."""
    _, result, _ = run
    text = result.per_seed[0][TEXT_MODEL]
    assert text["held_out_loss"] < math.log(96) - 0.5
    assert text["bigram_loss"] < math.log(96) - 1.0
    ideal = result.per_seed[0][IDEAL_MODEL]
    assert ideal["best_induction"] > 0.9 and ideal["best_previous_token_layer0"] > 0.9


def test_text_source_is_real_text():
    text, digest = load_text()
    assert len(text) > 300_000 and len(digest) == 64
    words = text.split()
    # real English prose: the commonest words are function words, not random strings
    common = {w for w in ("the", "of", "a", "is", "to", "and") if words.count(w) > 1000}
    assert len(common) >= 4
    ids = encode_text(text)
    assert int(ids.max()) < len(TEXT_VOCAB) and text_tokenizer().decode(ids[:40].tolist())
    assert python_docs_text() == text
    task = TextTask(ids, seq_len=32, batch_size=4)
    b1, b2 = task.sample(seed=7), task.sample(seed=7)
    assert torch.equal(b1.tokens, b2.tokens) and bool(
        (b1.targets[:, :-1] == b1.tokens[:, 1:]).all()
    )


def test_text_from_a_file(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200)
    cfg = NaturalInductionConfig().set("text", str(path))
    text, _ = load_text(cfg.text)
    assert text.startswith("First Citizen")
    ids = encode_text(text)
    assert bigram_loss(ids, ids, len(TEXT_VOCAB)) < math.log(96) / 2
    assert icl_score([3.0] * 10 + [1.0] * 54) == -2.0


def test_bad_settings_give_one_line_errors(tmp_path, capsys, monkeypatch):
    check_config_errors(
        NaturalInductionConfig,
        (
            ("text", " ", r"^text=' '; expected"),
            ("simplified", ("nope-nope",), r"^simplified='nope-nope'; expected"),
            ("held_out", 0.9, r"^held_out=0.9; expected"),
            ("repeat_fraction", 1.5, r"^repeat_fraction=1.5; expected"),
            ("model.d_vocab", 65, r"^model.d_vocab=65; expected 96"),
        ),
    )
    missing = str(tmp_path / "missing.txt")
    err = reproduce_error(capsys, tmp_path, "natural_induction", f"text={missing}")
    assert "missing.txt" in err
    # a pretrained model that is not cached, offline: one ValueError before any training
    import tlassoc.pretrained as pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "_cached_snapshot", lambda *a, **k: None)
    with pytest.raises(ValueError, match=r"^pretrained='gpt2'; expected a model whose") as err:
        load_pretrained(("gpt2",))
    assert "\n" not in str(err.value)
