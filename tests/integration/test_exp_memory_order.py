"""The memory_order experiment: when each recall probe crosses its threshold."""

from __future__ import annotations

import pytest
from _exp_helpers import check_config_errors, check_one_seed_files, reproduce_error, run_quick

from tlassoc.experiments.memory_order import MemoryOrderConfig, crossing_step, summarize


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    exp, _, result, out = run_quick("memory_order", tmp_path_factory.mktemp("memory_order"))
    return exp, result, out


def test_result_structure_and_written_files(run):
    exp, result, out = run
    rec = result.per_seed[0]
    assert set(rec) == {"joint", "staged"}
    for v in ("joint", "staged"):
        assert set(rec[v]["crossing"]) == {"wo2", "wk2", "wk1"}
        assert set(rec[v]["gaps"]) == {"wk2_minus_wo2", "wk1_minus_wk2"}
        steps = [h["step"] for h in rec[v]["history"]]
        assert steps == list(range(0, 61, 10))
    check_one_seed_files(out, "memory_order", 4, ["probes.png"], "## Crossing steps")
    assert (out / "models" / "staged-seed0").is_dir()


def test_staged_run_keeps_unreleased_memories_fixed(run):
    """Whatever the optimizer does, a matrix held frozen does not move: in the staged run the
    W_K² probe is constant until steps // 3 and the W_K¹ probe until 2 * steps // 3; both runs
    start from the same weights."""
    _, result, _ = run
    staged = result.per_seed[0]["staged"]["history"]
    joint = result.per_seed[0]["joint"]["history"]
    assert staged[0] == joint[0]
    wk2 = [h["probe_wk2"] for h in staged if h["step"] <= 20]
    wk1 = [h["probe_wk1"] for h in staged if h["step"] <= 40]
    assert len(set(wk2)) == 1 and len(set(wk1)) == 1


def test_crossings_and_gaps():
    hist = [
        {"step": 0, "probe_wo2": 0.1, "probe_wk2": 0.2, "probe_wk1": 0.0, "probe_wf": 3.0},
        {"step": 5, "probe_wo2": 0.95, "probe_wk2": 0.5, "probe_wk1": 0.1, "probe_wf": 0.4},
        {"step": 10, "probe_wo2": 1.0, "probe_wk2": 0.9, "probe_wk1": None, "probe_wf": 0.3},
    ]
    s = summarize(hist, MemoryOrderConfig())
    assert s["crossing"] == {"wo2": 5, "wk2": 10, "wk1": None, "wf": 5}
    assert s["gaps"] == {"wk2_minus_wo2": 5, "wk1_minus_wk2": None}
    assert crossing_step(hist, "probe_wf", 0.35, below=True) == 10


def test_bad_settings_give_one_line_errors(tmp_path, capsys):
    check_config_errors(
        MemoryOrderConfig,
        (
            ("variants", ("joint", "bottom-up"), r"^variants=\('joint', 'bottom-up'\); expected"),
            ("threshold", 0.0, r"^threshold=0.0; expected"),
            ("train.log_every", 0, r"^train.log_every=0; expected"),
            ("task.trigger_mode", "random", r"^task.trigger_mode='random'; expected"),
        ),
    )
    assert "variants=" in reproduce_error(capsys, tmp_path, "memory_order", "variants=x")
