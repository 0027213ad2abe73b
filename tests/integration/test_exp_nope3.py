"""The nope3 experiment: three layers without positions, trained and ideal."""

from __future__ import annotations

import pytest
from _exp_helpers import check_config_errors, check_one_seed_files, reproduce_error, run_quick

from tlassoc.experiments.nope3 import (
    TASK_VOCAB,
    NopeConfig,
    StartTokenTask,
    crossing,
    repeated_blocks,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    exp, _, result, out = run_quick("nope3", tmp_path_factory.mktemp("nope3"))
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
    first_table = "## Trained model and ideal construction"
    check_one_seed_files(out, "nope3", 5, ["probes.png"], first_table)
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
    check_config_errors(
        NopeConfig,
        (
            ("threshold", 1.5, r"^threshold=1.5; expected"),
            ("seeds", (), r"^seeds=\(\); expected"),
            ("repeat_len", 80, r"^repeat_len=80; expected"),
            ("task.trigger_mode", "random", r"^task.trigger_mode='random'; expected"),
        ),
    )
    assert "threshold=2" in reproduce_error(capsys, tmp_path, "nope3", "threshold=2")
    assert not (tmp_path / "results.json").exists()
