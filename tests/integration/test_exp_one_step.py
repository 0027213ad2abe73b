"""The one_step experiment: three population-gradient steps, memories and accuracy."""

from __future__ import annotations

import pytest
import torch
from _exp_helpers import check_config_errors, check_one_seed_files, reproduce_error, run_quick

from tlassoc.config import TaskConfig
from tlassoc.data import TriggerBatch, make_task
from tlassoc.experiments.one_step import (
    OneStepConfig,
    context_blind_accuracy,
    frequency_rule_accuracy,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    exp, _, result, out = run_quick("one_step", tmp_path_factory.mktemp("one_step"))
    return exp, result, out


def test_result_structure_and_written_files(run):
    exp, result, out = run
    rec = result.per_seed[0]
    assert set(rec) == {"relative", "standard"}
    for enc in rec:
        assert set(rec[enc]["alignment"]) == {"wo2", "wk2", "wk1"}
        assert len(rec[enc]["losses"]) == 4
        for key in ("acc_ge2", "acc_ge2_before", "context_blind_acc", "frequency_rule_acc"):
            assert 0.0 <= rec[enc][key] <= 1.0
    first_table = "## Alignment with the ideal memories"
    check_one_seed_files(out, "one_step", 14, ["one_step.png"], first_table)


def test_one_step_stores_the_upper_memories_and_beats_chance(run):
    """Deterministic given the seed: the W_O² and W_K² steps align with the ideal memories far
    beyond random matrices (z > 5, cosine > 3x the random maximum), and the steps lift the
    in-context accuracy above chance (measured at this setting: 0.08 / 0.10 vs 1/65)."""
    exp, result, _ = run
    for enc, rec in result.per_seed[0].items():
        for key in ("wo2", "wk2"):
            a = rec["alignment"][key]
            assert a["z_score"] > 5 and a["cosine"] > 3 * a["random_max_abs"], (enc, key, a)
        assert rec["acc_ge2"] > 3 * rec["chance"]
        assert rec["acc_ge2"] > rec["acc_ge2_before"] + 0.03
        assert rec["losses"][1] < rec["losses"][0]  # the W_O² step lowers the loss
    outcomes = {o.claim.name: o for o in exp.evaluate_claims(result)}
    assert outcomes["relative_wo2_aligned"].holds and outcomes["standard_wk2_aligned"].holds


def test_baselines_on_a_designed_batch():
    # two sequences, trigger 5 -> output 7 in the first, 5 -> 9 in the second
    tokens = torch.tensor([[5, 7, 5, 7, 5], [5, 9, 5, 9, 5]])
    targets = torch.tensor([[7, 5, 7, 5, 7], [9, 5, 9, 5, 9]])
    labels = torch.tensor([[1, 0, 2, 0, 3], [1, 0, 2, 0, 3]])
    trig = torch.tensor([[5], [5]])
    batch = TriggerBatch(tokens, targets, labels, trig, torch.tensor([[7], [9]]))
    # the frequency rule reads the context: it is always right here
    assert frequency_rule_accuracy(batch) == 1.0
    # context-blind: one answer per current token, so at most one of the two sequences
    assert context_blind_accuracy(batch, batch) == 0.5
    task = make_task(TaskConfig(seq_len=64), batch_size=64)
    fit, test = task.sample(seed=0), task.sample(seed=1)
    assert 0.0 <= context_blind_accuracy(fit, test) <= 1.0


def test_bad_settings_give_one_line_errors(tmp_path, capsys):
    check_config_errors(
        OneStepConfig,
        (
            ("encodings", ("none",), r"^encodings=\('none',\); expected"),
            ("step_sizes", (1.0, 2.0), r"^step_sizes=\(1.0, 2.0\); expected"),
            ("n_batches", 0, r"^n_batches=0; expected"),
        ),
    )
    assert "n_batches=-1" in reproduce_error(capsys, tmp_path, "one_step", "n_batches=-1")
