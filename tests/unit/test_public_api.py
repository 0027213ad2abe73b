"""The everyday names are importable from the top level; analyses are reachable as attributes;
importing tlassoc (and asking the command for help) loads neither torch nor TransformerLens."""

import subprocess
import sys

import tlassoc


def test_top_level_names():
    for name in (
        "AssocConfig",
        "AssocTransformer",
        "TriggerBigramTask",
        "BigramModel",
        "AnalogyTask",
        "TrainConfig",
        "RunConfig",
        "TaskConfig",
        "HubUnavailableError",
        "one_step_train",
        "presets",
        "recipes",
        "CharTokenizer",
        "WordTokenizer",
    ):
        assert hasattr(tlassoc, name), name
    assert issubclass(tlassoc.HubUnavailableError, Exception)


def test_analysis_modules_are_attributes_without_explicit_import():
    for name in ("memory", "theory", "heads", "patching", "viz", "training", "experiments"):
        module = getattr(tlassoc, name)
        assert module.__name__ == f"tlassoc.{name}"
    assert callable(tlassoc.memory.memory_report) and callable(tlassoc.heads.induction_scores)


def test_train_is_the_training_function():
    from tlassoc.data import BigramModel

    assert tlassoc.train is tlassoc.training.train
    model = tlassoc.AssocTransformer(tlassoc.presets.rpe(d_model=16, n_ctx=32))
    task = tlassoc.TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=4)
    result = tlassoc.train(
        model, task, tlassoc.TrainConfig.simplified(steps=2, batch_size=4), progress=False
    )
    assert result.step == 2 and len(result.losses) == 2


def test_import_and_help_do_not_load_torch():
    code = (
        "import sys, tlassoc, tlassoc.recipes\n"
        "from tlassoc.cli import build_parser\n"
        "build_parser(['--help']).format_help()\n"
        "print(sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
