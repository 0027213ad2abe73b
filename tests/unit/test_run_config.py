"""RunConfig: every recipe builds, round-trips exactly and trains one step; errors name the
dotted path of the bad field; derived values are derived again after a change."""

from __future__ import annotations

import json

import pytest

from tlassoc import AssocTransformer, recipes
from tlassoc.config import AssocConfig, RunConfig, TaskConfig, TrainConfig
from tlassoc.data import make_task
from tlassoc.experiments import get, names
from tlassoc.training import train


@pytest.mark.parametrize("name", recipes.names())
def test_each_recipe_round_trips_and_trains_one_step(name, one_thread):
    run = recipes.get(name)
    assert isinstance(run, RunConfig) and recipes.RECIPES[name].description
    data = run.to_dict()
    again = RunConfig.from_dict(json.loads(json.dumps(data)))
    assert again == run and again.to_dict() == data
    small = run.override(
        {"train.steps": 1, "train.batch_size": 2, "train.eval_batch_size": 2,
         "task.seq_len": 16, "train.log_every": 0}
    )  # fmt: skip
    model = AssocTransformer(small.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = train(model, make_task(small.task, batch_size=2), small.train, progress=False)
    assert result.step == 1
    changed = [n for n, p in model.named_parameters() if n in before and not p.equal(before[n])]
    assert changed, name


@pytest.mark.parametrize("name", names())
def test_each_experiment_config_round_trips(name):
    exp = get(name)
    for cfg in (exp.default_config(), exp.quick_config()):
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert exp.claims(cfg), name


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"lrr": 1}}, "unknown field 'train.lrr'"),
        ({"model": {"d_model": "64"}}, "model.d_model='64'; expected int"),
        ({"model": {"relative_layers": [0, "a"]}}, "model.relative_layers[1]='a'"),
        ({"task": {"seq_len": 1.5}}, "task.seq_len=1.5; expected int"),
        ({"train": {"betas": [0.9]}}, "train.betas=[0.9]; expected 2 items"),
        ({"train": []}, "train=[]; expected"),
        ({"modle": {}}, "unknown RunConfig field 'modle'"),
        ({"train": {"lr": -1.0}}, "train.lr=-1.0"),
    ],
)
def test_errors_name_the_dotted_path(data, message):
    with pytest.raises(ValueError) as err:
        RunConfig.from_dict(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_set_rederives_and_checks():
    run = recipes.get("rpe")
    assert run.model.d_head == 128
    small = run.set("model.d_model", 64)
    assert (small.model.d_head, small.model.init_std) == (64, 64**-0.5)
    assert run.model.d_model == 128  # the original is unchanged
    with pytest.raises(ValueError, match="unknown field 'model.d_modle'"):
        run.set("model.d_modle", 3)
    with pytest.raises(ValueError, match="exceeds model.n_ctx"):
        recipes.get("ape").set("task.seq_len", 1024)
    assert run.digest() == recipes.get("rpe").digest() != small.digest()


def test_every_setting_is_defined_once():
    """No field name is repeated across the sections (the sequence length lives on the task)."""
    from tlassoc.config import _fields

    sections = [AssocConfig, TrainConfig, TaskConfig]
    fields = [{f.name for f in _fields.config_fields(c)} for c in sections]
    assert "seq_len" in fields[2] and "seq_len" not in fields[0] | fields[1]
    shared = (fields[0] & fields[1]) | (fields[0] & fields[2]) | (fields[1] & fields[2])
    assert shared == {"seed"}, shared  # model.seed (weights) and train.seed (data) differ
