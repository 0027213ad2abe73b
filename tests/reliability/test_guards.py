"""Guards: divergence, the folder lock, occupied folders, bad arguments, sizes, pickles."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tlassoc import AssocConfig, AssocTransformer, CheckpointError, presets
from tlassoc import pretrained as PT
from tlassoc._io import LOCK_INFO_FILE, FolderLockedError, folder_lock
from tlassoc.cli import main
from tlassoc.config import TaskConfig, TrainConfig
from tlassoc.data import make_task
from tlassoc.training import DivergenceError, latest_checkpoint, load_checkpoint, train
from tlassoc.training.checkpoint import write_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def task():
    return make_task(TaskConfig(seq_len=16), batch_size=4)


def _model(**kw) -> AssocTransformer:
    return AssocTransformer(presets.ape(d_model=16, n_ctx=16, **kw))


def _cli_args(out, *extra):
    args = ["train", "ape", "--out", str(out), "--train.steps", "40", "--no-progress"]
    args += ["--train.batch_size", "4", "--task.seq_len", "16", "--model.d_model", "16"]
    return [*args, "--train.checkpoint_every", "3", "--train.log_every", "5", *extra]


# --- divergence ------------------------------------------------------------------------------


def test_huge_lr_stops_with_one_line_naming_the_step(tmp_path, capsys, one_thread):
    assert main(_cli_args(tmp_path, "--train.lr", "1e6")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tlassoc: error: training diverged at step ")
    step = int(err.split("at step ")[1].split()[0])
    kept = latest_checkpoint(tmp_path)
    assert kept is not None and f"last checkpoint kept: {kept}" in err
    ckpt = load_checkpoint(kept)
    assert ckpt["step"] < step and all(torch.isfinite(p).all() for p in ckpt["model"].parameters())
    for folder in (tmp_path / "checkpoints").glob("step-*"):  # no checkpoint after the failure
        assert load_checkpoint(folder)["step"] < step
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(c)) for line in lines]
    assert records[-1] == {**records[-1], "step": step, "diverged": True, "train_loss": None}


def test_divergence_error_type_and_no_output_folder(task, one_thread):
    with pytest.raises(DivergenceError, match=r"training diverged at step \d+ of 40: "):
        train(_model(), task, TrainConfig(steps=40, batch_size=4, lr=1e6), progress=False)
    assert issubclass(DivergenceError, ValueError)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, task):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        model.blocks[0].attn.W_K[0, 0, 0] = float("inf")
    with pytest.raises(DivergenceError, match="blocks.0.attn.W_K holds NaN or inf"):
        write_checkpoint(tmp_path, model, opt, torch.Generator(), 3, TrainConfig(), keep=2)
    assert not any((tmp_path / "checkpoints").glob("step-*"))


def test_numbers_the_dtype_cannot_hold_are_refused(task):
    with pytest.raises(ValueError, match=r"init_std=100000.0; expected at most 65504"):
        AssocConfig(d_model=16, dtype="float16", init_std=1e5)
    with pytest.raises(ValueError, match=r"eps=1e\+39; expected at most 3.4028e\+38"):
        AssocConfig(d_model=16, eps=1e39)
    half = AssocTransformer(presets.ape(d_model=16, n_ctx=16, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"train.lr=100000.0; expected at most 65504"):
        train(half, task, TrainConfig(steps=1, lr=1e5), progress=False)
    seed_range = r"seed=.*expected an integer in \[-2\*\*63, 2\*\*64\)"
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match=seed_range):
            TrainConfig(seed=bad)
        with pytest.raises(ValueError, match="seed="):
            AssocConfig(d_model=16, seed=bad)


# --- the folder lock -------------------------------------------------------------------------

HOLD = """
import sys, time
from tlassoc._io import folder_lock
with folder_lock(sys.argv[1], command="holder-command"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_locked_folder_is_refused_naming_the_holder(tmp_path, task, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError) as err:
            train(_model(), task, TrainConfig(steps=1, batch_size=4), out_dir=tmp_path)
        text = str(err.value)
        assert "\n" not in text and f"pid {holder.pid} on " in text and "holder-command" in text
        assert main(_cli_args(tmp_path)) == 2
        cli_err = capsys.readouterr().err
        assert cli_err.count("\n") == 1 and f"pid {holder.pid}" in cli_err
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path):  # SIGKILL released it
        assert json.loads((tmp_path / LOCK_INFO_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_INFO_FILE).exists()


def test_lock_is_reentrant_in_its_thread_only(tmp_path):
    errors = []

    def other():
        try:
            with folder_lock(tmp_path):
                pass
        except FolderLockedError as err:
            errors.append(str(err))

    with folder_lock(tmp_path), folder_lock(tmp_path):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another thread of this process" in errors[0]
    with folder_lock(tmp_path):  # released after the outer block
        pass


# --- occupied and empty folders --------------------------------------------------------------


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path, task, capsys, one_thread):
    cfg = TrainConfig(steps=3, batch_size=4, log_every=1, lr=0.1)
    train(_model(), task, cfg, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds a run .*resume=True .*overwrite=True"):
        train(_model(), task, cfg, out_dir=tmp_path, progress=False)
    out = tmp_path / "cli"
    args = _cli_args(out, "--train.steps", "3")
    assert main(args) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err and "--overwrite" in err
    before = load_checkpoint(latest_checkpoint(out))["model"].state_dict()
    assert main([*args, "--overwrite", "--model.seed", "5"]) == 0
    after = load_checkpoint(latest_checkpoint(out))["model"].state_dict()
    assert not torch.equal(before["embed.W_E"], after["embed.W_E"])
    assert (out / "notes.txt").read_text() == "mine"  # only tlassoc's files are replaced
    assert json.loads((out / "run.json").read_text())["config"]["model"]["seed"] == 5
    assert main([*args, "--overwrite", "--resume"]) == 2


def test_resume_on_an_empty_folder_says_it_starts_fresh(tmp_path, task, capsys, one_thread):
    assert main(_cli_args(tmp_path / "new", "--train.steps", "2", "--resume")) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("tlassoc: warning: ")
    assert "holds no checkpoint; starting from step 0" in captured.err
    assert "trained ape for 2 steps" in captured.out
    with pytest.warns(UserWarning, match="starting from step 0"):
        train(_model(), task, TrainConfig(steps=1, batch_size=4), out_dir=tmp_path / "x",
              resume=True, progress=False)  # fmt: skip


# --- arguments, tokens, sizes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="rpe"), "model=str; expected an AssocTransformer"),
        (dict(task=123), "task=int; expected a task with sample()"),
        (dict(config={"lr": 1}), "config=dict; expected a TrainConfig"),
        (dict(out_dir=5), "out_dir=5; expected a folder path or None"),
        (dict(resume="yes", out_dir="x"), "resume='yes'; expected True or False"),
        (dict(evaluators=[1]), "evaluators=[1]; expected a sequence of callables"),
        (dict(callback="f"), "callback='f'; expected a callable or None"),
    ],
)
def test_train_arguments_are_type_checked(task, kwargs, message):
    args = dict(model=_model(), task=task, config=TrainConfig(steps=1, batch_size=4))
    args.update(kwargs)
    with pytest.raises(TypeError) as err:
        train(args.pop("model"), args.pop("task"), args.pop("config"), **args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_tokens_of_the_wrong_type_get_one_line():
    model = _model()
    with pytest.raises(TypeError, match=r"^input=123; expected a string or a list of strings$"):
        model.to_tokens(123)
    with pytest.raises(ValueError, match=r"^token tensor has dtype torch.complex128; expected"):
        model(torch.zeros(1, 4, dtype=torch.complex128))
    with pytest.raises(ValueError, match="complex64"):
        model(torch.zeros(1, 4, dtype=torch.complex64))


def test_absolute_positions_warn_when_a_string_is_cut():
    model = _model()
    with pytest.warns(UserWarning, match="20 tokens, more than n_ctx=16; .* first 16 are kept"):
        tokens = model.to_tokens("a" * 20)
    assert tokens.shape == (1, 16)


def test_sizes_are_checked_before_allocating(task):
    rpe = AssocTransformer(presets.rpe(d_model=16, n_ctx=16))
    long = torch.zeros(1, 10**6, dtype=torch.long)  # 10^12 attention scores per head
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        rpe(long)
    text = str(err.value)
    assert "\n" not in text and "input of batch 1 x 1000000 positions needs about" in text
    assert "expected at most" in text and time.perf_counter() - start < 30
    big = make_task(TaskConfig(seq_len=16384), batch_size=512)
    with pytest.raises(ValueError, match="training of batch 512 x 16384 positions needs about"):
        train(rpe, big, TrainConfig(steps=1, batch_size=512), progress=False)


# --- pickles in the Hugging Face cache -------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: proof that the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _poisoned_cache(root: Path, repo: str, marker: Path, config: dict, files: list[str]) -> None:
    folder = root / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("b" * 40)
    (snap / "config.json").write_text(json.dumps(config))
    for name in files:
        (snap / name).write_bytes(pickle.dumps(_Payload(marker)))


def test_the_payload_is_live(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()  # the same bytes below would have run, had they been unpickled


@pytest.mark.parametrize("name", ["attn-only-2l", "gpt2"])
def test_a_poisoned_cache_is_never_unpickled(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo, marker = PT.official_name(name), tmp_path / "ran"
    if name == "gpt2":  # a valid config with only pickled weights
        config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 1}
        files = ["pytorch_model.bin"]
    else:  # TransformerLens's own format: config + a pickled .pth
        config = {"d_model": 512, "n_layers": 2, "n_heads": 8, "d_head": 64, "n_ctx": 1024}
        files = ["model_final.pth", "pytorch_model.bin"]
    _poisoned_cache(tmp_path / "hub", repo, marker, config, files)
    with pytest.raises((CheckpointError, PT.HubUnavailableError)) as err:
        PT.load_model(name, cache_dir=tmp_path / "hub")
    assert "\n" not in str(err.value)
    assert isinstance(err.value, CheckpointError)
    assert "pickle" in str(err.value) and not marker.exists()
