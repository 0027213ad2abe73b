"""The `tlassoc` command: flags come from the configuration; bad input gets one line and exit
status 2."""

from __future__ import annotations

import json

import pytest

from tlassoc import AssocTransformer, recipes
from tlassoc.cli import build_parser, main
from tlassoc.config import RunConfig, _fields
from tlassoc.training import read_metrics


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "no-such-recipe", "--out", "{tmp}"], "unknown recipe"),
        (["train", "rpe", "--out", "{tmp}", "--train.steps", "-3"], "integer >= 0"),
        (["train", "rpe", "--out", "{tmp}", "--train.lr", "abc"], "train.lr='abc'"),
        (["train", "rpe", "--out", "{tmp}", "--set", "train.lrr=1"], "unknown field 'train.lrr'"),
        (["train", "rpe", "--out", "{tmp}", "--set", "lr"], "expected PATH=VALUE"),
        (["reproduce", "--out", "{tmp}", "--task.seq_len", "zero"], "task.seq_len='zero'"),
        (["reproduce", "--out", "{tmp}", "--train.lr", "nan"], "lr=nan"),
        (["reproduce"], "--out"),
        (["reproduce", "--out", "{tmp}", "--model.relative_form", "cosine"], "relative_form"),
        (["reproduce", "--out", "{tmp}", "--model.max_relative_distance", "0"], "positive"),
        (["reproduce", "nosuch", "--out", "{tmp}"], "unknown experiment 'nosuch'"),
        (["reproduce", "--out", "{tmp}", "--set", "seeds=a"], "seeds='a'"),
        (["train", "rpe", "--out", ""], "expected a folder name"),
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


def test_every_flag_is_a_config_field_and_back():
    """Every generated flag names a field of the run configuration and every field has a flag."""
    parser = build_parser(["train", "rpe"])
    train = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    flags = {
        a.dest
        for a in train._actions  # noqa: SLF001
        if a.option_strings and "." in a.dest
    }
    fields = {path for path, *_ in _fields.walk_fields(RunConfig)}
    assert flags == fields
    run = recipes.get("rpe")
    for path in fields:
        tp = _fields.resolve(RunConfig, path)
        value = run
        for part in path.split("."):
            value = getattr(value, part)
        text = _fields.describe(value) if not isinstance(value, tuple) or value else ""
        if path == "train.unfreeze":
            continue  # nested tuples go through JSON; covered by the round-trip test
        if path == "model.dtype":
            text = "float32"
        parsed = _fields.parse_text(text, tp, path) if text != "required" else None
        assert run.set(path, parsed).to_dict() == run.to_dict(), path


def test_help_lists_settings_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "lengthgen", "--help"])
    out = capsys.readouterr().out
    assert "--train.lr VALUE" in out and "Peak learning rate. (default: 0.05)" in out
    assert "--task.seq_len VALUE" in out and "(default: 128)" in out


def test_recipes_and_experiments_are_listed(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in recipes.names():
        assert name in out
    assert main(["experiments"]) == 0
    out = capsys.readouterr().out
    assert "length_generalization" in out


def test_listings_print_the_stored_measured_times(capsys):
    """Every recipe and experiment has a measured time on record, and the listings print it."""
    from tlassoc import experiments

    rtimes, etimes = recipes.measured_times(), experiments.measured_times()
    assert set(rtimes["recipes"]) == set(recipes.names())
    assert set(etimes["experiments"]) == set(experiments.names())
    assert main(["recipes"]) == 0
    assert "not measured" not in capsys.readouterr().out
    assert main(["experiments"]) == 0
    out = capsys.readouterr().out
    assert "not measured" not in out and etimes["machine"] in out
    row = next(line for line in out.splitlines() if line.startswith("one_step"))
    seconds = etimes["experiments"]["one_step"]["seconds"]
    assert row.split()[1:3] in (
        [f"{seconds:.0f}", "s"],
        [f"{seconds / 60:.0f}", "min"],
    )


def test_train_and_resume_through_the_cli(tmp_path, capsys):
    args = ["train", "ape", "--out", str(tmp_path), "--train.steps", "4"]
    args += ["--set", "train.batch_size=4", "--task.seq_len", "16", "--model.d_model", "16"]
    args += ["--train.log_every", "2", "--train.checkpoint_every", "2", "--no-progress"]
    assert main(args) == 0
    assert "trained ape for 4 steps" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 2, 4]
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["recipe"] == "ape" and saved["config"]["model"]["d_model"] == 16
    assert main([*args[:5], "6", *args[6:], "--resume"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 2, 4, 6]


def test_reproduce_settings_reach_the_models(tmp_path, capsys):
    args = ["reproduce", "--out", str(tmp_path), "--quick", "--train.steps", "2"]
    args += ["--set", "train_lens=16", "--train.batch_size", "4", "--set", "width_rule=none"]
    args += ["--model.d_model", "16", "--no-progress", "--model.relative_form", "bias"]
    args += ["--set", "clip_rule=none", "--set", "model.max_relative_distance=8"]
    assert main(args) == 0
    assert "claims hold" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["model"]["relative_form"] == "bias"
    assert results["config"]["model"]["max_relative_distance"] == 8
    assert results["config"]["model"]["n_ctx"] == 64  # derived: 4 x T_train
    saved = {enc: AssocTransformer.load(tmp_path / "models" / f"{enc}-T16-seed0")
             for enc in ("relative", "standard")}  # fmt: skip
    rpe, ape = saved["relative"], saved["standard"]
    assert rpe.cfg.positional_embedding_type == "relative" and rpe.cfg.d_model == 16
    assert (rpe.cfg.relative_form, rpe.cfg.max_relative_distance) == ("bias", 8)
    assert tuple(rpe.blocks[0].attn.b_rel.shape) == (1, 8)
    assert "rel_embed.W_rel" not in dict(rpe.named_parameters())
    assert ape.cfg.positional_embedding_type == "standard"
    assert "T_train = 16 for 2 steps" in (tmp_path / "report.md").read_text()


def test_an_interrupted_reproduce_says_how_to_finish_it(tmp_path, capsys, monkeypatch):
    import tlassoc.sweep

    def stopped(experiment, config, out_dir, **kwargs):
        (out_dir / "trials" / "abc").mkdir(parents=True)  # a finished part, as the runner keeps it
        raise KeyboardInterrupt

    monkeypatch.setattr(tlassoc.sweep, "measure", stopped)
    assert main(["reproduce", "--quick", "--out", str(tmp_path), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"tlassoc: reproduce interrupted; finished parts are kept in {tmp_path / 'trials'}; run "
        "the same command again to finish it"
    )
    assert not (tmp_path / "results.json").exists()
