"""The memory_order experiment: when each recall probe crosses its threshold."""

from __future__ import annotations

import json

import pytest
import torch

from tlassoc.cli import main
from tlassoc.experiments import get
from tlassoc.experiments.memory_order import MemoryOrderConfig, crossing_step, summarize

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exp = get("memory_order")
        out = tmp_path_factory.mktemp("memory_order")
        result = exp.run(exp.quick_config(), out_dir=out, progress=False)
    finally:
        torch.set_num_threads(threads)
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
    data = json.loads((out / "results.json").read_text())
    assert data["experiment"] == "memory_order" and len(data["claims"]) == 4
    for c in data["claims"]:
        assert len(c["values"]) == 1 and isinstance(c["holds"], bool)
    assert (out / "probes.png").read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Crossing steps")
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
    for path, value, match in (
        ("variants", ("joint", "bottom-up"), r"^variants=\('joint', 'bottom-up'\); expected"),
        ("threshold", 0.0, r"^threshold=0.0; expected"),
        ("train.log_every", 0, r"^train.log_every=0; expected"),
        ("task.trigger_mode", "random", r"^task.trigger_mode='random'; expected"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            MemoryOrderConfig().set(path, value)
        assert "\n" not in str(err.value)
    code = main(["reproduce", "memory_order", "--out", str(tmp_path), "--set", "variants=x"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "variants=" in err
