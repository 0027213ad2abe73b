"""ood_outputs: the quick run writes a complete report with seen and unseen outputs kept apart;
bad settings fail in one line."""

from __future__ import annotations

import pytest
import torch
from _exp_helpers import check_written, reproduce_error, run_quick

from tlassoc.data import make_task
from tlassoc.experiments.ood_outputs import OODOutputsConfig


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_quick("ood_outputs", tmp_path_factory.mktemp("ood_outputs"))


def test_quick_run_writes_results_report_and_figures(quick):
    exp, cfg, result, out = quick
    data = check_written(exp, result, out, ["seen_unseen.png"])
    assert len(data["claims"]) == 6
    for rec in data["per_seed"]:
        for enc in cfg.encodings:
            r = rec[enc]
            assert r["seen"]["targets"] > 0 and r["unseen"]["targets"] > 0
            assert r["gap"] == pytest.approx(r["seen"]["acc_ge2"] - r["unseen"]["acc_ge2"])
            # Trained on the seen outputs, the model copies them far above chance (1/48).
            assert r["seen"]["acc_ge2"] > 0.1
            for key in ("wo2_recall_seen", "wo2_recall_unseen"):
                assert 0.0 <= r[key] <= 1.0


def test_the_two_splits_never_share_an_output():
    cfg = OODOutputsConfig()
    seen = make_task(cfg.task, batch_size=64).sample(seed=0)
    unseen = make_task(cfg.task.replace(output_split="test"), batch_size=64).sample(seed=0)
    n = cfg.task.n_train_outputs
    assert int(seen.outputs.max()) < n <= int(unseen.outputs.min())
    assert torch.equal(
        seen.targets[seen.labels >= 1] < n,
        torch.ones_like(seen.targets[seen.labels >= 1], dtype=torch.bool),
    )


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("task.output_split=all", "task.output_split='all'; expected 'train'"),
        ("eval_sequences=0", "eval_sequences=0; expected an integer >= 1"),
        ("encodings=sinusoidal", "encodings=('sinusoidal',); expected"),
    ],
)
def test_bad_settings_fail_in_one_line(tmp_path, capsys, setting, fragment):
    err = reproduce_error(capsys, tmp_path, "ood_outputs", setting)
    assert fragment in err and len(err.splitlines()) == 1
