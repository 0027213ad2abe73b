"""Every load path refuses a damaged or foreign file with a CheckpointError naming the file and
what was expected; resume refuses changed settings unless told to accept them."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch

from tlassoc import AssocConfig, AssocTransformer, CheckpointError, presets
from tlassoc.cli import main
from tlassoc.config import TaskConfig, TrainConfig
from tlassoc.data import make_task
from tlassoc.model import CONFIG_FILE, WEIGHTS_FILE
from tlassoc.training import latest_checkpoint, load_checkpoint, read_metrics, train
from tlassoc.training.checkpoint import TRAIN_META_FILE, TRAIN_STATE_FILE, resume_differences

CFG = TrainConfig(steps=6, batch_size=4, log_every=2, checkpoint_every=3, lr=0.1)


def _model() -> AssocTransformer:
    return AssocTransformer(presets.ape(d_model=16, n_ctx=16))


@pytest.fixture(scope="module")
def task():
    return make_task(TaskConfig(seq_len=16), batch_size=4)


@pytest.fixture
def run(tmp_path, task, one_thread):
    """A finished 6-step run with checkpoints at steps 3 and 6."""
    train(_model(), task, CFG, out_dir=tmp_path, progress=False)
    return tmp_path


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_model_config_without_config_names_the_file(run):
    folder = latest_checkpoint(run)
    _edit_json(folder / CONFIG_FILE, lambda d: d.pop("config"))
    with pytest.raises(CheckpointError) as err:
        AssocTransformer.load(folder)
    assert f"{folder / CONFIG_FILE} has no 'config' object; expected" in _one_line(err.value)
    with pytest.raises(CheckpointError, match=f"{CONFIG_FILE} does not match the sha256"):
        load_checkpoint(folder)  # the training state's hashes see the edit first


def test_tokenizer_without_vocab(tmp_path):
    folder = AssocTransformer(AssocConfig(d_model=16)).save(tmp_path / "m")
    _edit_json(folder / CONFIG_FILE, lambda d: d["tokenizer"].pop("vocab"))
    with pytest.raises(CheckpointError) as err:
        AssocTransformer.load(folder)
    assert "'tokenizer' is unreadable" in _one_line(err.value) and "'vocab'" in str(err.value)


def test_same_named_weights_of_another_shape(tmp_path):
    from safetensors.torch import load_file, save_file

    small = AssocTransformer(AssocConfig(d_model=16)).save(tmp_path / "small")
    big = AssocTransformer(AssocConfig(d_model=32)).save(tmp_path / "big")
    save_file(load_file(big / WEIGHTS_FILE), small / WEIGHTS_FILE)  # same names, d_model 32
    digest = hashlib.sha256((small / WEIGHTS_FILE).read_bytes()).hexdigest()
    _edit_json(small / CONFIG_FILE, lambda d: d.update(weights_sha256=digest))
    with pytest.raises(CheckpointError) as err:
        AssocTransformer.load(small)
    text = _one_line(err.value)
    assert text.startswith(f"{small / WEIGHTS_FILE}: embed.W_E is torch.float32 (65, 32); ")
    assert text.endswith("expected torch.float32 (65, 16) from config.json")


def test_train_state_without_train_config(run):
    folder = latest_checkpoint(run)
    _edit_json(folder / TRAIN_META_FILE, lambda d: d.pop("train_config"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert f"{folder / TRAIN_META_FILE} has no 'train_config'" in _one_line(err.value)


@pytest.mark.parametrize("name", [TRAIN_META_FILE, CONFIG_FILE])
def test_json_errors_name_the_file(run, name):
    folder = latest_checkpoint(run)
    (folder / name).write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        (AssocTransformer.load if name == CONFIG_FILE else load_checkpoint)(folder)
    assert f"{folder / name} is not valid JSON" in _one_line(err.value)


@pytest.mark.parametrize("name", [TRAIN_STATE_FILE, WEIGHTS_FILE, TRAIN_META_FILE])
def test_the_state_hash_covers_every_file_a_resume_reads(run, task, name):
    folder = latest_checkpoint(run)
    if name == TRAIN_META_FILE:
        _edit_json(folder / name, lambda d: d.update(step=5))  # a plausible edit
        expected = "does not match its own sha256"
    else:
        raw = bytearray((folder / name).read_bytes())
        raw[-1] ^= 0x01  # one bit of one tensor
        (folder / name).write_bytes(bytes(raw))
        expected = f"{folder / name} does not match the sha256"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match=expected):
        train(_model(), task, CFG.replace(steps=8), out_dir=run, resume=True, progress=False)


def test_metrics_line_that_is_a_list(run, task):
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "[1, 2]", *lines[1:]]) + "\n")
    with pytest.raises(CheckpointError) as err:
        read_metrics(run)
    assert f"{path} line 2 is a list; expected an object" == _one_line(err.value)
    with pytest.raises(CheckpointError, match="line 2 is a list"):
        train(_model(), task, CFG, out_dir=run, resume=True, progress=False)
    path.write_text("{broken\n")
    with pytest.raises(CheckpointError, match=f"{path} line 1 is not JSON"):
        read_metrics(path)


def test_edited_metrics_are_refused_unless_accepted(run, task):
    path = run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1]["loss"] = 0.0  # step 2, before the checkpoint at step 6
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(CheckpointError, match="does not hold the 4 records up to step 6"):
        train(_model(), task, CFG.replace(steps=8), out_dir=run, resume=True, progress=False)
    result = train(
        _model(), task, CFG.replace(steps=8), out_dir=run, resume=True, accept_changes=True,
        progress=False,
    )  # fmt: skip
    assert result.step == 8 and read_metrics(run)[1]["loss"] == 0.0


def test_bad_pointer_falls_back_with_a_warning(run):
    pointer = run / "checkpoints" / "latest.json"
    for text in ("{", '{"checkpoint": "../../../etc"}', '{"checkpoint": "step-00000099"}', "[]"):
        pointer.write_text(text)
        with pytest.warns(UserWarning, match="latest.json .*using step-00000006 instead"):
            assert latest_checkpoint(run).name == "step-00000006"


def test_resume_with_other_settings_lists_them(run, task):
    other = CFG.replace(lr=0.05, steps=8, log_every=4)  # log_every and steps may change
    with pytest.raises(CheckpointError) as err:
        train(_model(), task, other, out_dir=run, resume=True, progress=False)
    text = _one_line(err.value)
    assert "train.lr=0.1 (now 0.05)" in text and "--set train.lr=0.1" in text
    assert "log_every" not in text and "steps" not in text and "--accept-changes" in text
    moved = AssocTransformer(presets.ape(d_model=16, n_ctx=16, seed=1))
    with pytest.raises(CheckpointError, match=r"model.seed=0 \(now 1\); train.lr"):
        train(moved, task, other, out_dir=run, resume=True, progress=False)
    result = train(
        _model(), task, other, out_dir=run, resume=True, accept_changes=True, progress=False
    )
    assert result.step == 8


def test_resume_into_a_model_of_another_shape(run, task):
    wide = AssocTransformer(presets.ape(d_model=32, n_ctx=16))
    with pytest.raises(CheckpointError) as err:
        train(wide, task, CFG, out_dir=run, resume=True, accept_changes=True, progress=False)
    assert "has shape (65, 16), the model to resume has (65, 32)" in _one_line(err.value)


def test_schedule_makes_steps_a_setting():
    const = {"train": {"steps": 5, "schedule": "constant"}}
    cosine = {"train": {"steps": 5, "schedule": "cosine"}}
    assert resume_differences(const, {"train": {"steps": 9, "schedule": "constant"}}) == []
    assert resume_differences(cosine, {"train": {"steps": 9, "schedule": "cosine"}}) == [
        "train.steps=5 (now 9)"
    ]


def _cli(tmp_path, *extra):
    args = ["train", "ape", "--out", str(tmp_path), "--train.steps", "4", "--no-progress"]
    args += ["--set", "train.batch_size=4", "--task.seq_len", "16", "--model.d_model", "16"]
    return main([*args, *extra])


def test_cli_resume_with_changed_settings(tmp_path, capsys, one_thread):
    assert _cli(tmp_path) == 0
    capsys.readouterr()
    assert _cli(tmp_path, "--resume", "--task.n_triggers", "3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "task.n_triggers=5 (now 3)" in err
    assert "--set task.n_triggers=5" in err and "--accept-changes" in err
    assert _cli(tmp_path, "--resume", "--task.n_triggers", "3", "--accept-changes") == 0
    assert json.loads((tmp_path / "run.json").read_text())["config"]["task"]["n_triggers"] == 3
    (tmp_path / "run.json").write_text("{oops")
    assert _cli(tmp_path, "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'run.json'} is not valid JSON" in err


def test_checkpoint_folders_hold_only_finite_complete_state(run):
    """What a finished run leaves: two verified checkpoints, finite weights, strict JSON."""
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest.json", "step-00000003", "step-00000006"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = load_checkpoint(latest_checkpoint(run))
    assert all(torch.isfinite(p).all() for p in ckpt["model"].parameters())
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_resume_with_fewer_steps_than_done_leaves_the_model_alone(run, task):
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"train.steps=4, but the checkpoint step-00000006 is at"):
        train(model, task, CFG.replace(steps=4), out_dir=run, resume=True, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
