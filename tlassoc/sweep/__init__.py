"""Sweeps: seeds, settings and experiments as Ray tasks, on this machine or on a cluster.

A sweep is the cartesian product of a grid of settings over an experiment's configuration,
each configuration (and each seed) one trial: one ``experiment.measure(config)`` run as a Ray
task, its result written under ``OUT/trials/<id>/`` as soon as it finishes. Rerunning the same
sweep skips the finished trials, so a sweep that was stopped, killed or had failing trials is
finished by running it again. See ``docs/sweeps.md``.

* :mod:`tlassoc.sweep.grid`: ``PATH=V1,V2`` grids, trial ids, seeds split into trials;
* :mod:`tlassoc.sweep.runner`: Ray (embedded or a cluster), trial folders, retries, the lock;
* :mod:`tlassoc.sweep.report`: the tidy table, the per-setting summary and the figures.

Ray is an optional dependency (``pip install "tlassoc[sweep]"``), imported only when trials
run.

Example:
    >>> from tlassoc.experiments import get
    >>> exp = get("length_generalization")
    >>> grid = parse_grid(exp.config_class, ["train.lr=0.05,0.1"])
    >>> trials = expand(exp.name, exp.quick_config().set("seeds", (0, 1, 2)), grid)
    >>> len(trials), sorted({t.params["train.lr"] for t in trials})
    (6, [0.05, 0.1])
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from tlassoc._io import atomic_write_json
from tlassoc.experiments.framework import Result, jsonable
from tlassoc.sweep.grid import Trial, expand, parse_grid, split_parts, split_seeds, trial_id
from tlassoc.sweep.report import build_report
from tlassoc.sweep.runner import (
    RAY_HINT,
    FolderLockedError,
    RayUnavailableError,
    TrialRecord,
    _check_options,
    _Options,
    _records,
    _run_locked,
    finished_results,
    import_ray,
    locked,
    merged_result,
    read_json,
    run_trials,
    start_ray,
)


def run_sweep(
    experiment: Any,
    base: Any,
    grid: dict[str, list[Any]],
    out_dir: Any,
    *,
    address: str | None = None,
    cpus_per_trial: int = 1,
    gpus_per_trial: float = 0,
    max_retries: int = 0,
    progress: bool = True,
    command: str | None = None,
) -> list[TrialRecord]:
    """Run the trials of ``grid`` over ``base`` (see :func:`~tlassoc.sweep.grid.expand`) with
    :func:`~tlassoc.sweep.runner.run_trials`, record the sweep in ``out_dir/sweep.json`` and
    write the report (:func:`~tlassoc.sweep.report.build_report`).

    Every combination is built before anything runs, so a bad grid writes nothing. A folder
    holds one experiment's sweeps: later grids add trials to it; the report covers them all.

    Raises:
        ValueError: a bad grid or a folder of another experiment's sweeps.
        FolderLockedError: another run writes ``out_dir``.
        KeyboardInterrupt: after Ctrl-C, once the running trials are cancelled.
    """
    _check_options(cpus_per_trial, gpus_per_trial, max_retries)
    import_ray()
    records = _records(experiment, expand(experiment.name, base, grid), gpus_per_trial)
    out = Path(out_dir)
    opts = _Options(cpus_per_trial, gpus_per_trial, max_retries, progress, False)
    with locked(out, command):
        _write_sweep(out, experiment, base, grid, records, command)
        _run_locked(experiment, records, out, address, opts)
        build_report(out)
    return records


def _write_sweep(
    out: Path,
    experiment: Any,
    base: Any,
    grid: dict[str, list[Any]],
    records: list[TrialRecord],
    command: str | None,
) -> None:
    old = read_json(out / "sweep.json") or {}
    if old and old.get("experiment") != experiment.name:
        raise ValueError(
            f"--out {str(out)!r} holds a sweep of {old.get('experiment')!r}; expected a folder of "
            f"{experiment.name!r} sweeps or a new folder"
        )
    ids = list(dict.fromkeys([*old.get("trials", []), *(r.id for r in records)]))
    data = {
        "experiment": experiment.name,
        "command": command,
        "grid": grid,
        "base_config": base.to_dict(),
        "trials": ids,
    }
    atomic_write_json(out / "sweep.json", jsonable(data))


def measure_seeds(experiment: Any, config: Any, out_dir: Any, **options: Any) -> Result:
    """``experiment.measure(config)`` with each seed a trial (:func:`run_trials`, artifacts
    kept), merged into one result with :meth:`Result.merge` — the per-seed numbers are those of
    measuring each seed alone in one process on ``cpus_per_trial`` torch threads.

    ``options`` are :func:`run_trials`'s keyword arguments.
    """
    options.setdefault("keep_artifacts", True)
    records = run_trials(experiment, split_seeds(config), out_dir, **options)
    return merged_result(records)


def measure_parts(experiment: Any, config: Any, out_dir: Any, **options: Any) -> Result:
    """``experiment.measure(config)`` split into its independent parts
    (:func:`~tlassoc.sweep.grid.split_parts`: every seed, and for some experiments every
    training length and encoding), each part a trial (:func:`run_trials`, artifacts kept),
    combined with :meth:`Result.combine` — the numbers are those of measuring the whole in
    one process on ``cpus_per_trial`` torch threads. Small parts keep both cores busy where
    whole seeds would leave one idle at the end.

    ``options`` are :func:`run_trials`'s keyword arguments.
    """
    options.setdefault("keep_artifacts", True)
    records = run_trials(experiment, split_parts(experiment, config), out_dir, **options)
    result = Result.combine(config.to_dict(), finished_results(records))
    result.environment = {**result.environment, "trials": len(records)}
    return result


def measure(
    experiment: Any,
    config: Any,
    out_dir: Any,
    *,
    parallel: bool = True,
    address: str | None = None,
    progress: bool = True,
) -> Result:
    """What ``tlassoc reproduce`` measures: the parts of ``config`` in parallel where it helps.

    With several seeds, ``parallel`` and Ray installed, each part (a seed, or a finer part
    for experiments with other ``parallel_fields``) is one trial on Ray
    (:func:`measure_parts`: one torch thread per trial, trials under ``out_dir/trials/``, so a
    stopped run resumes where it left off); the numbers are those of measuring the whole on
    one thread. Otherwise
    ``experiment.measure(config)`` runs in this process (without Ray, with a one-line warning
    saying how to install it). ``seconds`` of the returned result is the wall time of this
    call.

    Example:
        >>> from tlassoc.experiments import get
        >>> exp = get("length_generalization")
        >>> tiny = exp.quick_config().override({"train.steps": 2, "model.d_model": 16})
        >>> import tempfile
        >>> r = measure(exp, tiny, tempfile.mkdtemp(), parallel=False, progress=False)
        >>> r.seeds, sorted(r.per_seed[0]["T16"])
        ([0], ['relative', 'standard'])
    """
    t0 = time.perf_counter()
    seeds = getattr(config, "seeds", None) or ()
    use_ray = parallel and len(seeds) > 1  # one seed (the quick settings): not worth Ray's start
    if use_ray:
        try:
            import_ray()
        except RayUnavailableError:
            warnings.warn(
                f"{RAY_HINT} to run the {len(seeds)} seeds in parallel; running them one after "
                "another in this process",
                stacklevel=2,
            )
            use_ray = False
    if use_ray:
        result = measure_parts(experiment, config, out_dir, address=address, progress=progress)
    else:
        result = experiment.measure(config, progress=progress)
    result.seconds = time.perf_counter() - t0
    return result


__all__ = [
    "RAY_HINT",
    "FolderLockedError",
    "RayUnavailableError",
    "Trial",
    "TrialRecord",
    "build_report",
    "expand",
    "measure",
    "measure_parts",
    "measure_seeds",
    "merged_result",
    "parse_grid",
    "run_sweep",
    "run_trials",
    "split_parts",
    "split_seeds",
    "start_ray",
    "trial_id",
]
