"""The nope3 experiment: three layers without positions, trained and ideal."""

from __future__ import annotations

import json

import pytest
import torch

from tlassoc.cli import main
from tlassoc.experiments import get
from tlassoc.experiments.nope3 import (
    TASK_VOCAB,
    NopeConfig,
    StartTokenTask,
    crossing,
    repeated_blocks,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exp = get("nope3")
        out = tmp_path_factory.mktemp("nope3")
        result = exp.run(exp.quick_config(), out_dir=out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return exp, result, out


def test_result_structure_and_written_files(run):
    exp, result, out = run
    rec = result.per_seed[0]
    assert result.seeds == [0] and set(rec) >= {"trained", "ideal", "crossing", "history"}
    for which in ("trained", "ideal"):
        for key in ("acc_ge2", "repeat_acc", "prev_argmax_1", "induction_2", "prev_mean_1"):
            assert 0.0 <= rec[which][key] <= 1.0
    assert rec["history"][0]["step"] == 0 and rec["history"][-1]["step"] == 40
    assert "probe_wo2" in rec["history"][-1] and "prev_argmax_1" in rec["history"][-1]
    assert set(rec["crossing"]) == {"previous_token_layer1", "induction_layer2"}
    data = json.loads((out / "results.json").read_text())
    assert data["experiment"] == "nope3" and len(data["claims"]) == 5
    for c in data["claims"]:
        assert len(c["values"]) == 1 and isinstance(c["holds"], bool)
    assert (out / "probes.png").read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Trained model and ideal construction")
    assert (out / "models" / "nope-seed0").is_dir()


def test_ideal_construction_numbers_hold(run):
    """Whatever training does, the construction solves repeated blocks and its layer 1 is a
    previous-token head (these claims check the construction itself)."""
    exp, result, _ = run
    outcomes = {o.claim.name: o for o in exp.evaluate_claims(result)}
    assert outcomes["ideal_repeated_blocks"].holds
    assert outcomes["ideal_previous_token_layer1"].holds
    assert result.per_seed[0]["ideal"]["acc_ge2"] > 0.9


def test_start_token_data():
    from tlassoc.config import TaskConfig
    from tlassoc.data import make_task

    task = StartTokenTask(make_task(TaskConfig(seq_len=16), batch_size=4))
    b = task.sample(seed=3)
    assert b.tokens.shape == (4, 17) and bool((b.tokens[:, 0] == TASK_VOCAB).all())
    assert int((b.tokens[:, 1:] == TASK_VOCAB).sum()) == 0
    assert bool((b.targets[:, :-1] == b.tokens[:, 1:]).all()) and bool((b.labels[:, 0] == -1).all())
    blocks = repeated_blocks(3, 10, False, seed=0)
    assert blocks.shape == (3, 20) and all(len(set(r[:10].tolist())) == 10 for r in blocks)
    assert crossing([{"step": 0, "x": 0.5}, {"step": 9, "x": 0.91}], "x", 0.9) == 9
    assert crossing([{"step": 0, "x": None}], "x", 0.9) is None


def test_config_derives_vocab_and_rejects_bad_settings(tmp_path, capsys):
    cfg = NopeConfig().set("start_token", False)
    assert cfg.model.d_vocab == 65 and NopeConfig().model.d_vocab == 66
    assert NopeConfig().set("task.seq_len", 100).model.n_ctx == 101
    for path, value, match in (
        ("threshold", 1.5, r"^threshold=1.5; expected"),
        ("seeds", (), r"^seeds=\(\); expected"),
        ("repeat_len", 80, r"^repeat_len=80; expected"),
        ("task.trigger_mode", "random", r"^task.trigger_mode='random'; expected"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            NopeConfig().set(path, value)
        assert "\n" not in str(err.value)
    code = main(["reproduce", "nope3", "--out", str(tmp_path), "--set", "threshold=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "threshold=2" in err
    assert not (tmp_path / "results.json").exists()
