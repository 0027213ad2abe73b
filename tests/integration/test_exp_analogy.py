"""analogy: the quick run writes a complete report; the measures mean what they say (checked
on an oracle of global knowledge); bad settings fail in one line."""

from __future__ import annotations

import pytest
import torch
from _exp_helpers import check_written, reproduce_error, run_quick

from tlassoc.experiments.analogy import AnalogyConfig, evaluate_analogy


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_quick("analogy", tmp_path_factory.mktemp("analogy"))


def test_quick_run_writes_results_report_and_figures(quick):
    exp, cfg, result, out = quick
    data = check_written(exp, result, out, ["accuracy.png", "by_position.png"])
    assert len(data["claims"]) == 8
    n = cfg.eval_multiple * cfg.task.seq_len
    for rec in data["per_seed"]:
        for enc in cfg.encodings:
            r = rec[enc]
            assert len(r["per_position"]["global"]) == n
            assert r["beyond"]["override_targets"] > 0 and r["inside"]["override_targets"] > 0
            assert r["override_drop"] == pytest.approx(
                r["inside"]["override"] - r["beyond"]["override"]
            )
            # The feed-forward memory learns the global pairs far above chance (1/232).
            assert r["inside"]["global_recall"] > 0.05
        assert rec["rpe_minus_ape_beyond"] == pytest.approx(
            rec["relative"]["beyond"]["override"] - rec["standard"]["beyond"]["override"]
        )


class _GlobalOracle(torch.nn.Module):
    """Answers every capital with its true country: perfect global knowledge, no context."""

    def __init__(self, n_pairs: int) -> None:
        super().__init__()
        self.n = n_pairs

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, 2 * self.n)
        target = torch.where(tokens < self.n, tokens + self.n, 0)
        return logits.scatter(-1, target.unsqueeze(-1), 1.0)


def test_measures_on_a_global_oracle():
    cfg = AnalogyConfig().override({"task.seq_len": 32, "eval_sequences": 16})
    task = cfg.make_task()
    out = evaluate_analogy(_GlobalOracle(task.n_pairs), task, cfg, seed=3)
    for where in ("inside", "beyond", "ordinary_beyond"):
        s = out[where]
        assert s["global_recall"] == 1.0 and s["override"] == 0.0
        assert s["override_says_true_country"] == 1.0 and s["first_says_true_country"] == 1.0
    assert out["override_drop"] == 0.0 and out["global_drop"] == 0.0


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("model.d_vocab=65", "model.d_vocab=65; expected 232"),
        ("p_trigger=0", "p_trigger=0.0; expected a probability in (0, 1]"),
        ("eval_multiple=1", "eval_multiple=1; expected an integer >= 2"),
        ("task.n_triggers=200", "task.n_triggers=200; expected at most 115"),
    ],
)
def test_bad_settings_fail_in_one_line(tmp_path, capsys, setting, fragment):
    err = reproduce_error(capsys, tmp_path, "analogy", setting)
    assert fragment in err and len(err.splitlines()) == 1
