"""Grids of settings: parsing ``PATH=V1,V2`` texts and expanding them into trials.

A grid maps dotted setting paths (the paths ``--set`` takes) to lists of values; its trials
are the cartesian product of the lists applied to a base configuration, in the order the paths
were given. The seeds are always split: a configuration with ``seeds=(0, 1, 2)`` becomes three
trials with ``seeds=(0,)``, ``(1,)`` and ``(2,)``, so that seeds run in parallel and the report
can average over them. A trial's id is a hash of the experiment's name and the full
configuration, so one configuration always lands in the same folder.

Example:
    >>> from tlassoc.experiments.length_generalization import LengthGenConfig
    >>> grid = parse_grid(LengthGenConfig, ["model.d_model=32,64", "seeds=0,1"])
    >>> grid
    {'model.d_model': [32, 64], 'seeds': [(0,), (1,)]}
    >>> trials = expand("length_generalization", LengthGenConfig(), grid)
    >>> [(t.params["model.d_model"], t.params["seeds"]) for t in trials]
    [(32, (0,)), (32, (1,)), (64, (0,)), (64, (1,))]
    >>> len({t.id for t in trials}), trials[0].config.model.d_model
    (4, 32)
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

from tlassoc.config import _fields

#: The experiment field that holds the seeds; it is split into one trial per seed.
SEEDS = "seeds"


@dataclass(frozen=True)
class Trial:
    """One configuration of a sweep.

    Attributes:
        id: 12 hex digits: a hash of the experiment's name and the full configuration.
        params: The swept settings of this trial (dotted path -> value), ``seeds`` included.
        config: The experiment's configuration the trial measures.
    """

    id: str
    params: dict[str, Any] = field(compare=False)
    config: Any = field(compare=False, repr=False)


def trial_id(experiment: str, config: Any) -> str:
    """A stable 12-character id of ``config`` measured by ``experiment``.

    Example:
        >>> from tlassoc.config import RunConfig
        >>> trial_id("x", RunConfig()) == trial_id("x", RunConfig())
        True
        >>> trial_id("x", RunConfig()) == trial_id("y", RunConfig())
        False
    """
    text = f"{experiment}:{config.digest()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_grid(config_class: type, texts: list[str]) -> dict[str, list[Any]]:
    """``PATH=V1,V2,...`` texts parsed into ``{path: [values]}`` of the field's type.

    Values are separated by commas, or by semicolons when the text holds one (so that a value
    of a tuple field can itself hold commas: ``encodings=relative,standard;relative``). A value
    of a tuple field written without commas is a one-item tuple.

    Raises:
        ValueError: one line naming the text and what was expected.

    Example:
        >>> from tlassoc.experiments.length_generalization import LengthGenConfig
        >>> parse_grid(LengthGenConfig, ["encodings=relative;relative,standard"])
        {'encodings': [('relative',), ('relative', 'standard')]}
        >>> parse_grid(LengthGenConfig, ["train.lr"])
        Traceback (most recent call last):
        ...
        ValueError: --grid 'train.lr'; expected PATH=V1,V2,... e.g. model.d_model=64,128
    """
    grid: dict[str, list[Any]] = {}
    for text in texts:
        path, eq, values = str(text).partition("=")
        path = path.strip()
        if not eq or not path or not values.strip():
            raise ValueError(f"--grid {text!r}; expected PATH=V1,V2,... e.g. model.d_model=64,128")
        if path in grid:
            raise ValueError(f"--grid {text!r}; expected each path once ({path} is repeated)")
        tp = _fields.resolve(config_class, path)
        sep = ";" if ";" in values else ","
        parts = [p.strip() for p in values.split(sep) if p.strip()]
        grid[path] = _unique([_fields.parse_text(p, tp, path) for p in parts])
    return grid


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def expand(experiment: str, base: Any, grid: dict[str, list[Any]]) -> list[Trial]:
    """The trials of ``grid`` over ``base``: the cartesian product in the grid's order, each
    configuration's seeds split into one trial per seed, duplicates dropped.

    Raises:
        ValueError: a combination the configuration refuses (every combination is built
            before anything runs, so a bad grid runs nothing).
    """
    paths = list(grid)
    trials: dict[str, Trial] = {}
    for values in itertools.product(*(grid[p] for p in paths)):
        params = dict(zip(paths, values, strict=True))
        try:
            config = base.override(params) if params else base
        except ValueError as err:
            where = ", ".join(f"{p}={_fields.describe(v)}" for p, v in params.items())
            raise ValueError(f"grid setting {where}: {err}") from None
        for one in split_seeds(config):
            seeded = {**params, SEEDS: one.seeds} if hasattr(one, SEEDS) else dict(params)
            tid = trial_id(experiment, one)
            trials.setdefault(tid, Trial(tid, seeded, one))
    return list(trials.values())


def split_seeds(config: Any) -> list[Any]:
    """One configuration per seed of ``config.seeds`` (the configuration itself without one).

    Example:
        >>> from tlassoc.experiments.length_generalization import LengthGenConfig
        >>> [c.seeds for c in split_seeds(LengthGenConfig().set("seeds", (3, 4)))]
        [(3,), (4,)]
    """
    seeds = getattr(config, SEEDS, None)
    if not seeds or len(seeds) == 1:
        return [config]
    return [config.set(SEEDS, (s,)) for s in seeds]


def split_parts(experiment: Any, config: Any) -> list[Any]:
    """One configuration per combination of the values of ``experiment.parallel_fields``
    (seeds outermost), each holding one value of every such field; ``Result.combine`` of their
    results is the result of ``config``.

    Example:
        >>> from tlassoc.experiments import get
        >>> exp = get("length_generalization")
        >>> parts = split_parts(exp, exp.default_config().set("seeds", (0, 1)))
        >>> len(parts), parts[1].seeds, parts[1].train_lens, parts[1].encodings
        (12, (0,), (16,), ('relative_bias',))
    """
    fields = [f for f in getattr(experiment, "parallel_fields", (SEEDS,)) if hasattr(config, f)]
    values = [tuple(getattr(config, f)) for f in fields]
    parts = []
    for combo in itertools.product(*values):
        part = config
        for name, value in zip(fields, combo, strict=True):
            part = part.set(name, (value,))
        parts.append(part)
    return parts


__all__ = ["SEEDS", "Trial", "expand", "parse_grid", "split_parts", "split_seeds", "trial_id"]
