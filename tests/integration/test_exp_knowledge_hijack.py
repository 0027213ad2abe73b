"""knowledge_hijack: the quick run writes a complete report; the measurement, applied to the
ideal associative-memory model, finds what the theory says; bad settings fail in one line."""

from __future__ import annotations

import pytest
from _exp_helpers import check_written, reproduce_error, run_quick

from tlassoc.data import BigramModel
from tlassoc.experiments.knowledge_hijack import KnowledgeHijackConfig, evaluate_model
from tlassoc.memory import ideal_model


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_quick("knowledge_hijack", tmp_path_factory.mktemp("knowledge_hijack"))


def test_quick_run_writes_results_report_and_figures(quick):
    exp, cfg, result, out = quick
    data = check_written(
        exp, result, out, ["context_wins.png", "families.png", "theory_vs_model.png"]
    )
    assert len(data["claims"]) == 13
    for rec in data["per_seed"]:
        assert rec["scored_queries"] and all(0 <= t < 65 for t in rec["scored_queries"])
        for enc in cfg.encodings:
            r = rec[enc]
            assert set(r["context_wins"]) == {"within", "near", "far", "beyond"}
            assert r["n_prompts"] <= cfg.n_prompts
            fams = {(f["placement"], f["relation"], f["n"], f["m"]) for f in r["families"]}
            assert {p for p, *_ in fams} == {"near", "far", "beyond"}
            assert sum(f["count"] for f in r["families"]) == r["n_prompts"]
            assert r["final"]["step"] == cfg.train.steps
    assert "| RPE | near | disagree | (1, 0) |" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("min_trigger_rate=2", "min_trigger_rate=2"),
        ("encodings=relative,sinusoidal", "encodings=('relative', 'sinusoidal'); expected"),
        ("train.loss_on=in_context", "train.loss_on='in_context'; expected 'all'"),
        ("model.ffn_type=none", "model.ffn_type=None; expected"),
        ("prompt_len=8", "prompt_len=8; expected an integer >= 16"),
    ],
)
def test_bad_settings_fail_in_one_line(tmp_path, capsys, setting, fragment):
    err = reproduce_error(capsys, tmp_path, "knowledge_hijack", setting)
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results.json").exists()


def test_ideal_memories_let_context_win_and_match_the_theory(one_thread):
    """On the ideal RPE model (α = β = 10, d_model 128) the in-context majority beats the global
    top bigram unless the theory says the bigram gap is larger, everywhere including beyond
    T_train, and the theory read off the weights tracks the logits (measured: wins 0.86
    inside / 0.83 beyond, share effect 0.71, r = 0.83)."""
    cfg = KnowledgeHijackConfig().override(
        {"task.seq_len": 32, "prompt_len": 24, "n_prompts": 400, "model.d_model": 32}
    )
    model = ideal_model("relative", d_model=128, n_ctx=56, bigram=BigramModel.tiny_shakespeare())
    numbers, frame = evaluate_model(model, "relative", cfg, list(range(65)), seed=5)
    assert numbers["context_wins"]["within"] >= 0.75
    assert numbers["context_wins"]["beyond"] >= 0.75
    assert numbers["share_effect"] >= 0.4
    assert numbers["theory"]["within"]["correlation"] >= 0.7
    assert bool(frame["scored"].all()) and len(frame) == 400
    assert bool((frame["x"] == frame["b1"]).all()) and bool((frame["x"] != frame["y"]).all())
