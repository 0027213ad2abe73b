"""An experiment measured in independent parts (``Experiment.parallel_fields``) and combined
(``Result.combine``) gives the numbers of measuring it whole: what lets ``tlassoc reproduce``
run the parts in parallel."""

from __future__ import annotations

import json

import pytest

from tlassoc.experiments import get, names
from tlassoc.experiments.framework import Result, jsonable, without_times
from tlassoc.sweep.grid import split_parts

TINY = {"train.steps": 3, "model.d_model": 16, "train.batch_size": 8, "eval_sequences": 4}


def test_length_generalization_parts_combine_to_the_whole(one_thread):
    exp = get("length_generalization")
    config = exp.quick_config().override(
        {**TINY, "width_rule": None, "seeds": (0, 1), "train_lens": (8, 16)}
    )
    parts = split_parts(exp, config)
    assert [(p.seeds, p.train_lens, p.encodings) for p in parts[:3]] == [
        ((0,), (8,), ("relative",)),
        ((0,), (8,), ("standard",)),
        ((0,), (16,), ("relative",)),
    ]
    assert len(parts) == 2 * 2 * 2
    whole = exp.measure(config, progress=False)
    combined = Result.combine(config.to_dict(), [exp.measure(p, progress=False) for p in parts])
    assert combined.seeds == whole.seeds == [0, 1]
    assert json.dumps(without_times(jsonable(combined.per_seed))) == json.dumps(
        without_times(jsonable(whole.per_seed))
    )  # same values and the same key order
    assert sorted(combined.artifacts["models"]) == sorted(whole.artifacts["models"])
    got = [o.values for o in exp.evaluate_claims(combined)]
    assert got == [o.values for o in exp.evaluate_claims(whole)]


def test_experiments_without_other_parallel_fields_split_by_seed_only():
    exp = get("knowledge_hijack")
    config = exp.quick_config()
    parts = split_parts(exp, config.set("seeds", (3, 4, 5)))
    assert [p.seeds for p in parts] == [(3,), (4,), (5,)]


@pytest.mark.parametrize("name", names())
def test_repeated_seeds_are_refused_by_every_experiment(name):
    """A repeated seed would train the same models twice and overwrite their saved files (and
    two parts would measure one value): every configuration refuses it in one line."""
    exp = get(name)
    seeds = tuple(exp.default_config().seeds)
    with pytest.raises(ValueError, match=r"^seeds=\(\d+, \d+\); expected ") as err:
        exp.default_config().set("seeds", (seeds[0], seeds[0]))
    assert "\n" not in str(err.value)


def test_a_value_measured_by_two_parts_is_refused():
    a = Result("x", {"seeds": [0]}, [0], [{"T16": {"v": 1.0}}])
    b = Result("x", {"seeds": [0]}, [0], [{"T16": {"v": 2.0}}])
    with pytest.raises(ValueError, match=r"seed 0: T16: 'v' was measured by two parts"):
        Result.combine({"seeds": [0]}, [a, b])
    with pytest.raises(ValueError, match=r"part of seed 7; expected seeds \[0\]"):
        Result.combine({"seeds": [0]}, [Result("x", {}, [7], [{}])])
