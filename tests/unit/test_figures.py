"""Every plotting function of tlassoc.viz renders, with labelled axes and readable annotations."""

from __future__ import annotations

import importlib
import inspect
import io
import pkgutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tlassoc.viz  # noqa: E402
from tlassoc.heads import scores_frame  # noqa: E402
from tlassoc.patching import PatchingResult  # noqa: E402
from tlassoc.viz import training as viz_training  # noqa: E402


def _plot_functions() -> set[str]:
    names = set()
    for info in pkgutil.iter_modules(tlassoc.viz.__path__):
        module = importlib.import_module(f"tlassoc.viz.{info.name}")
        for name, obj in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("plot_") and obj.__module__ == module.__name__:
                names.add(f"{info.name}.{name}")
    return names


@pytest.fixture
def captured(monkeypatch):
    """Figures that tlassoc.viz.training writes to files (it closes them after saving)."""
    figures = []
    save = viz_training._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(viz_training, "_save", keep)
    return figures


@pytest.fixture(scope="module")
def memory_table():
    from tlassoc.memory import ideal_model, memory_report

    return memory_report(ideal_model("relative", d_model=128, n_ctx=64))["W_U W_O1"]


def _patching(values, axis_names):
    return PatchingResult(torch.as_tensor(values), 1.0, 0.0, "denoise", "z", axis_names)


def _histories():
    rec = [
        {"step": s, "probe_wo2": 1.0, "probe_wk2": 1.0, "probe_wk1": s / 100, "acc_ge2": 1.0}
        for s in (0, 50, 100)
    ]
    return {"RPE": rec, "APE": rec}


def _draw(name, tmp_path, captured, memory_table):
    """Call plot function ``module.name`` on small inputs; return its figure."""
    from tlassoc.data import BigramModel
    from tlassoc.viz import attention, data, heads, memory

    table = scores_frame({"induction": torch.rand(2, 3), "previous_token": torch.rand(2, 3)}, "m")
    frame = pd.DataFrame(
        {"pred_diff": [1.0, -1.0, 0.5], "model_diff": [0.8, -0.7, 0.1], "agree": [1, 1, 1]}
    )
    frame["relation"] = ["agree", "disagree", "agree"]
    calls = {
        "attention.plot_attention": lambda: attention.plot_attention(
            torch.eye(4), ["a", "b", "c", "d"]
        ),
        "data.plot_bigram_heatmap": lambda: data.plot_bigram_heatmap(
            BigramModel.tiny_shakespeare(), top=20
        ),
        "heads.plot_head_scores": lambda: heads.plot_head_scores(torch.rand(2, 2), title="x"),
        "heads.plot_patching": lambda: heads.plot_patching(
            _patching(torch.rand(2, 6, 1), ["layer", "pos", "head"])
        ),
        "heads.plot_model_comparison": lambda: heads.plot_model_comparison(
            table, ["induction", "previous_token"]
        ),
        "memory.plot_memory_heatmap": lambda: memory.plot_memory_heatmap(memory_table),
        "memory.plot_ranked_pairs": lambda: memory.plot_ranked_pairs(memory_table, top=5),
        "memory.plot_theory_vs_model": lambda: memory.plot_theory_vs_model(frame),
        "training.plot_per_position": lambda: viz_training.plot_per_position(
            {"RPE": [None, 1.0, 1.0, 1.0], "APE": [None, 1.0, 0.2, 0.1]},
            tmp_path / "pp.png",
            train_len=2,
        ),
        "training.plot_probes_over_training": lambda: viz_training.plot_probes_over_training(
            _histories(), tmp_path / "probes.png"
        ),
    }
    assert set(calls) == _plot_functions(), "add every new plot function to this test"
    out = calls[name]()
    if name.startswith("training."):
        assert out.is_file() and out.stat().st_size > 1000
        return captured[-1]
    return out if hasattr(out, "savefig") else out.figure


def _is_colorbar(ax) -> bool:
    return any(getattr(other, "_colorbar", None) is not None for other in [ax])


def _ylabel(ax) -> str:
    """The y label of ``ax``, or that of an axes it shares its y axis with."""
    siblings = ax.get_shared_y_axes().get_siblings(ax)
    return next((a.get_ylabel() for a in siblings if a.get_ylabel()), "")


@pytest.mark.parametrize("name", sorted(_plot_functions()))
def test_every_figure_renders_with_labelled_axes(name, tmp_path, captured, memory_table):
    fig = _draw(name, tmp_path, captured, memory_table)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    assert buf.tell() > 1000
    for ax in fig.axes:
        if _is_colorbar(ax):
            assert ax.get_ylabel() or ax.get_xlabel(), f"{name}: unlabelled colour bar"
            continue
        assert ax.get_xlabel().strip(), f"{name}: axes {ax.get_title()!r} has no x label"
        assert _ylabel(ax).strip(), f"{name}: axes {ax.get_title()!r} has no y label"
    plt.close(fig)


def test_the_list_of_plot_functions_is_complete():
    assert len(_plot_functions()) >= 10


def test_heatmap_text_reads_on_dark_and_light_cells():
    from tlassoc.viz.heads import plot_patching

    fig = plot_patching(_patching([[1.0, 0.0], [-1.0, 0.05]], ["layer", "head"]))
    colors = {t.get_text(): t.get_color() for t in fig.axes[0].texts}
    assert colors["1.00"] == "white" and colors["-1.00"] == "white"  # dark red, dark blue
    assert colors["0.00"] == "black" and colors["0.05"] == "black"  # near-white middle
    plt.close(fig)


def test_probe_figure_uses_paper_notation_a_fixed_scale_and_an_outside_legend(tmp_path, captured):
    viz_training.plot_probes_over_training(_histories(), tmp_path / "p.png")
    fig = captured[-1]
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else []
    axes = [ax for ax in fig.axes if ax.get_legend() is not None]
    labels = labels or [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == ["W_O² recall", "W_K² recall", "W_K¹ recall", "in-context acc"]
    for ax in fig.axes:
        assert ax.get_ylim() == (0.0, 1.0)  # flat curves at 1 do not zoom to 0.95-1.05
    legend = axes[0].get_legend().get_window_extent()
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent()), "the legend covers a panel"
    plt.close(fig)


def test_per_position_figure_keeps_accuracy_scale_on_a_flat_curve(tmp_path, captured):
    viz_training.plot_per_position({"RPE": [1.0] * 10}, tmp_path / "flat.png", train_len=5)
    ax = captured[-1].axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    captured[-1].canvas.draw()
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())


def test_bigram_heatmap_is_labelled_with_characters():
    from tlassoc.data import BigramModel
    from tlassoc.viz.data import plot_bigram_heatmap

    ax = plot_bigram_heatmap(BigramModel.tiny_shakespeare())
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == 65 and "␣" in ticks and "e" in ticks and "\\n" in ticks
    assert ax.images[0].colorbar.ax.get_ylabel() == "log(1 + bigram count)"
    with pytest.raises(ValueError, match="top=0"):
        plot_bigram_heatmap(BigramModel.tiny_shakespeare(), top=0)
    plt.close(ax.figure)


def test_file_figures_leave_pyplot_alone(tmp_path, monkeypatch):
    """Figures written to files do not switch pyplot's backend (a notebook's inline plots) and
    leave no open pyplot figure behind."""
    import matplotlib

    monkeypatch.delenv("DISPLAY", raising=False)
    matplotlib.use("svg")  # stands for a notebook's inline backend
    try:
        before = plt.get_fignums()
        viz_training.plot_probes_over_training(_histories(), tmp_path / "p.png")
        viz_training.plot_per_position({"RPE": [1.0, 0.5]}, tmp_path / "q.png")
        assert matplotlib.get_backend().lower() == "svg"
        assert plt.get_fignums() == before
    finally:
        matplotlib.use("Agg")
