"""The `tlassoc` command: bad input gets one line and exit status 2."""

from __future__ import annotations

import pytest

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
