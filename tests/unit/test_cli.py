"""The `tlassoc` command: bad input gets one line and exit status 2."""

from __future__ import annotations

import json

import pytest

from tlassoc import AssocTransformer
from tlassoc.cli import main
from tlassoc.train import read_metrics


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "no-such-recipe", "--out", "{tmp}"], "unknown recipe"),
        (["train", "rpe", "--out", "{tmp}", "--steps", "-3"], "positive integer"),
        (["train", "rpe", "--out", "{tmp}", "--lr", "abc"], "not a number"),
        (["reproduce", "--out", "{tmp}", "--train-len", "zero"], "not an integer"),
        (["reproduce", "--out", "{tmp}", "--lr", "nan"], "positive finite"),
        (["reproduce"], "--out"),
        (["reproduce", "--out", "{tmp}", "--relative-form", "cosine"], "invalid choice"),
        (["reproduce", "--out", "{tmp}", "--max-relative-distance", "0"], "positive integer"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, argv, fragment):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tlassoc: error:")
    assert fragment in err and "Traceback" not in err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["reproduce", "--out", str(blocker / "sub"), "--quick", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err and err.count("\n") == 1


def test_train_and_resume_through_the_cli(tmp_path, capsys):
    args = [
        "train",
        "ape",
        "--out",
        str(tmp_path),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--d-model",
        "16",
        "--log-every",
        "2",
        "--checkpoint-every",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "trained ape for 4 steps" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 2, 4]
    assert main([*args[:5], "6", *args[6:], "--resume"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 2, 4, 6]


def test_reproduce_relative_options_reach_the_rpe_model(tmp_path, capsys):
    args = ["reproduce", "--out", str(tmp_path), "--quick", "--steps", "2", "--train-len", "16"]
    args += ["--batch-size", "4", "--d-model", "16", "--no-progress"]
    args += ["--relative-form", "bias", "--max-relative-distance", "8"]
    assert main(args) == 0
    assert "claims hold" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["relative_form"] == "bias"
    assert results["config"]["max_relative_distance"] == 8
    saved = {}
    for enc in ("rpe", "ape"):
        (path,) = (tmp_path / enc).glob("checkpoints/step-*/config.json")
        saved[enc] = AssocTransformer.load(path.parent)
    rpe, ape = saved["rpe"], saved["ape"]
    assert rpe.cfg.positional_embedding_type == "relative"
    assert (rpe.cfg.relative_form, rpe.cfg.max_relative_distance) == ("bias", 8)
    assert tuple(rpe.blocks[0].attn.b_rel.shape) == (1, 8)
    assert "rel_embed.W_rel" not in dict(rpe.named_parameters())
    assert ape.cfg.positional_embedding_type == "standard"
    assert "RPE: relative bias form, distances clipped at 7" in (tmp_path / "report.md").read_text()
