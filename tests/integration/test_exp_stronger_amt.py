"""stronger_amt: the quick run writes a complete report; the fit recovers the strengths of the
ideal model; bad settings fail in one line."""

from __future__ import annotations

import pytest
import torch
from _exp_helpers import check_written, reproduce_error, run_quick

from tlassoc.data import BigramModel
from tlassoc.experiments.stronger_amt import FITS, amt_fits, fit_model
from tlassoc.memory import ideal_model


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_quick("stronger_amt", tmp_path_factory.mktemp("stronger_amt"))


def test_quick_run_writes_results_report_and_figures(quick):
    exp, cfg, result, out = quick
    data = check_written(exp, result, out, ["r2.png", "fit.png"])
    assert len(data["claims"]) == 4
    for rec in data["per_seed"]:
        r = rec["relative"]
        assert r["n_fit"] + r["n_test"] == r["n_prompts"] and r["n_test"] > 0
        for form in FITS:
            assert r[form]["r2_logits"] is None or r[form]["r2_logits"] <= 1.0
        assert r["gain_logits"] == pytest.approx(
            r["weighted"]["r2_logits"] - r["unweighted"]["r2_logits"]
        )


def test_least_squares_recover_planted_strengths():
    """Logits built as α·share + β_aj plus small noise: the weighted fit finds α and explains
    nearly all held-out variance; the unweighted form cannot."""
    gen = torch.Generator().manual_seed(0)
    P, V = 400, 12
    queries = torch.randint(0, 4, (P,), generator=gen)
    share = torch.zeros(P, V)
    share[torch.arange(P), torch.randint(0, V, (P,), generator=gen)] = 1.0
    beta = torch.randn(4, V, generator=gen)
    bigram = torch.softmax(torch.randn(4, V, generator=gen), -1)[queries]
    logits = 3.0 * share + beta[queries] + 0.01 * torch.randn(P, V, generator=gen)
    contrast = torch.stack([torch.zeros(P, dtype=torch.long), torch.ones(P, dtype=torch.long)], 1)
    test = torch.arange(P) % 2 == 0
    fits = amt_fits(logits, share, bigram, {"from_weights": logits}, queries, contrast, test)
    assert fits["weighted"]["alpha"] == pytest.approx(3.0, abs=0.02)
    assert fits["weighted"]["r2_logits"] > 0.99 and fits["unweighted"]["r2_logits"] < 0.5
    assert fits["from_weights"]["r2_logits"] == pytest.approx(1.0)


def test_fit_recovers_the_ideal_models_strengths(one_thread):
    """The ideal RPE model (α = β = 10, d_model 128): the fitted α lies near 10 (measured 9.3
    weighted, 9.0 scalar) and the fits explain most of the held-out contrasts (0.72-0.74)."""
    from tlassoc.experiments import get

    cfg = get("stronger_amt").quick_config()
    model = ideal_model("relative", d_model=128, n_ctx=64, bigram=BigramModel.tiny_shakespeare())
    fits, extras = fit_model(model, cfg, list(range(65)), seed=0)
    assert 6.0 <= fits["weighted"]["alpha"] <= 14.0
    assert 6.0 <= fits["scalar"]["alpha"] <= 14.0 and 5.0 <= fits["scalar"]["beta"] <= 15.0
    assert fits["weighted"]["r2_contrast"] >= 0.6
    assert len(extras["contrast_model"]) == fits["n_test"]


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("test_fraction=1", "test_fraction=1.0; expected 0 < x < 1"),
        ("min_trigger_rate=-0.5", "min_trigger_rate=-0.5; expected a number in [0, 1]"),
        ("encodings=sinusoidal", "encodings=('sinusoidal',); expected"),
        ("seeds=0,0", "seeds=(0, 0); expected distinct seeds"),
    ],
)
def test_bad_settings_fail_in_one_line(tmp_path, capsys, setting, fragment):
    err = reproduce_error(capsys, tmp_path, "stronger_amt", setting)
    assert fragment in err and len(err.splitlines()) == 1
