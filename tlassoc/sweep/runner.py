"""Running trials on Ray: one ``experiment.measure(config)`` per trial, resumable, retried.

Ray runs embedded by default (a local instance on this machine's cores, started and stopped
here); ``address`` joins a running cluster instead (``"auto"`` or ``"ray://host:10001"``). When
Ray is already initialised in this process, that instance is used and left running.

Every trial has a folder ``OUT/trials/<id>/``. The driver (this process) writes it, atomically:
``results.json`` (the result with its evaluated claims, the same content as
:func:`~tlassoc.experiments.framework.write` gives) and then ``trial.json`` (id, experiment,
swept settings, configuration, status, attempts, error). A folder whose ``trial.json`` says
``done`` is never run again; any other status (``pending``, ``running``, ``interrupted``,
``failed``) runs again when the same trials are asked for. The output folder's lock
(:func:`tlassoc._io.folder_lock`) keeps two sweeps from writing one folder.

Example:
    >>> print(RAY_HINT)
    Ray is not installed; install it with: pip install "tlassoc[sweep]"
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlassoc._io import FolderLockedError, atomic_write_json, folder_lock
from tlassoc.experiments.framework import Result, jsonable
from tlassoc.sweep.grid import SEEDS, Trial, trial_id

#: The one line printed when Ray is missing.
RAY_HINT = 'Ray is not installed; install it with: pip install "tlassoc[sweep]"'
#: File names inside a trial folder and the sweep folder.
TRIAL_FILE, RESULTS_FILE = "trial.json", "results.json"


class RayUnavailableError(ImportError):
    """Ray is not installed (the message says how to install it)."""


@dataclass
class TrialRecord:
    """A trial and what became of it.

    Attributes:
        id: The trial's id (its folder name under ``trials/``).
        params: Its swept settings.
        config: Its configuration.
        status: ``"done"``, ``"failed"``, ``"pending"``, ``"running"`` or ``"interrupted"``.
        attempts: How many times it was started in the run that last touched it.
        error: ``"Type: message"`` of the last failure (``None`` when done).
        result: The measured result (``None`` unless done); read back from ``results.json``
            for trials finished earlier.
    """

    id: str
    params: dict[str, Any]
    config: Any
    status: str = "pending"
    attempts: int = 0
    error: str | None = None
    result: Result | None = field(default=None, repr=False)
    traceback: str | None = field(default=None, repr=False)


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailableError` with the install line."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(RAY_HINT) from None
    return ray


#: Attempts at starting an embedded Ray (see :func:`start_ray`).
START_ATTEMPTS = 3


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start an embedded Ray instance, or join the cluster at ``address``.

    On a heavily loaded machine Ray's node can miss its own start-up deadline (its helper
    processes import too slowly); an embedded start is then tried again, up to
    :data:`START_ATTEMPTS` times in all (the second try finds the imports cached).

    Returns ``False`` (and does nothing) when Ray is already initialised in this process;
    ``True`` when this call started or joined one (the caller then calls ``ray.shutdown()``).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
        return True
    # an embedded Ray is private to this process: its notices (token authentication is on,
    # ...) are not the user's business; errors still show
    quiet["logging_level"] = logging.ERROR
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            # "local": a new instance even where a cluster runs here or RAY_ADDRESS is set
            ray.init("local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **quiet)
            return True
        except Exception:  # Ray raises a bare Exception when its node misses its deadline
            ray.shutdown()
            if attempt == START_ATTEMPTS:
                raise
    return True


def locked(out_dir: Path, command: str | None = None) -> Any:
    """The output folder's lock (:func:`tlassoc._io.folder_lock`): a second sweep, or any other
    tlassoc run, writing the same folder gets ``FolderLockedError`` naming the holder."""
    return folder_lock(out_dir, command=command)


# ------------------------------------------------------------------------------------------------
# Trial folders
# ------------------------------------------------------------------------------------------------


def _write_trial(folder: Path, experiment: Any, rec: TrialRecord) -> None:
    data = {
        "id": rec.id,
        "experiment": experiment.name,
        "status": rec.status,
        "attempts": rec.attempts,
        "error": rec.error,
        "traceback": rec.traceback,
        "params": rec.params,
        "config": rec.config.to_dict(),
    }
    atomic_write_json(folder / TRIAL_FILE, jsonable(data))


def _write_result(folder: Path, experiment: Any, rec: TrialRecord) -> None:
    result = rec.result
    data = result.to_dict()
    data["claims"] = [o.to_dict() for o in experiment.evaluate_claims(result)]
    data["all_claims_hold"] = all(c["holds"] for c in data["claims"])
    atomic_write_json(folder / RESULTS_FILE, jsonable(data))
    for name, model in result.artifacts.get("models", {}).items():
        model.save(folder / "models" / name)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _load_done(folder: Path, with_models: bool) -> Result | None:
    trial, data = read_json(folder / TRIAL_FILE), read_json(folder / RESULTS_FILE)
    if not trial or trial.get("status") != "done" or data is None:
        return None
    result = Result.from_dict(data)
    if with_models and (folder / "models").is_dir():
        from tlassoc.model import AssocTransformer

        result.artifacts["models"] = {
            p.name: AssocTransformer.load(p) for p in sorted((folder / "models").iterdir())
        }
    return result


# ------------------------------------------------------------------------------------------------
# The worker
# ------------------------------------------------------------------------------------------------


def measure_trial(
    experiment: Any, config: dict[str, Any], threads: int, keep_artifacts: bool = False
) -> Result:
    """What a Ray worker runs: ``experiment.measure`` on ``threads`` torch threads.

    ``config`` travels as the plain dict of :meth:`to_dict` and is rebuilt here; the result's
    artifacts (trained models, ...) are dropped unless ``keep_artifacts``.
    """
    import torch

    torch.set_num_threads(threads)
    result = experiment.measure(experiment.config_class.from_dict(config), progress=False)
    if not keep_artifacts:
        result.artifacts = {}
    return result


def _error(err: BaseException) -> tuple[str, str]:
    cause = getattr(err, "cause", None) or err
    text = " ".join(f"{type(cause).__name__}: {cause}".split())
    return text[:500], "".join(traceback.format_exception_only(type(err), err))[-20000:]


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------


@dataclass
class _Options:
    cpus_per_trial: int
    gpus_per_trial: float
    max_retries: int
    progress: bool
    keep_artifacts: bool


def _records(experiment: Any, configs: list[Any], gpus: float) -> list[TrialRecord]:
    out: dict[str, TrialRecord] = {}
    for item in configs:
        config, params = (item.config, dict(item.params)) if isinstance(item, Trial) else (item, {})
        if gpus > 0 and str(config.model.device) == "cpu":
            config = config.set("model.device", "cuda")
        if SEEDS not in params and hasattr(config, SEEDS):
            params[SEEDS] = tuple(config.seeds)
        tid = trial_id(experiment.name, config)
        out.setdefault(tid, TrialRecord(tid, params, config))
    return list(out.values())


def _check_options(cpus_per_trial: Any, gpus_per_trial: Any, max_retries: Any) -> None:
    for name, value, kinds, minimum in (
        ("cpus_per_trial", cpus_per_trial, (int,), 1),
        ("gpus_per_trial", gpus_per_trial, (int, float), 0),
        ("max_retries", max_retries, (int,), 0),
    ):
        if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
            kind = "an integer" if kinds == (int,) else "a number"
            raise ValueError(f"{name}={value!r}; expected {kind} >= {minimum}")


def run_trials(
    experiment: Any,
    configs: list[Any],
    out_dir: Any,
    *,
    address: str | None = None,
    cpus_per_trial: int = 1,
    gpus_per_trial: float = 0,
    max_retries: int = 0,
    progress: bool = True,
    keep_artifacts: bool = False,
) -> list[TrialRecord]:
    """Measure each configuration as one Ray task; write and return every trial's outcome.

    Trials whose folder says ``done`` are read back instead of run (Ray is not even started
    when all are). A trial that raises is started again up to ``max_retries`` times, then
    recorded as ``failed`` with its error while the others go on. Ctrl-C cancels the running
    trials, keeps the finished ones and raises ``KeyboardInterrupt``.

    Args:
        experiment: An :class:`~tlassoc.experiments.framework.Experiment`.
        configs: Its configurations, or :class:`~tlassoc.sweep.grid.Trial` s (which carry the
            swept settings for the tables); duplicates run once.
        out_dir: The sweep folder; trials go to ``out_dir/trials/<id>/``.
        address: ``None`` for embedded Ray, else the cluster to join.
        cpus_per_trial: CPUs Ray reserves per trial, and the torch threads a trial uses.
        gpus_per_trial: GPUs per trial; above 0, ``model.device`` becomes ``"cuda"``.
        max_retries: How often a failing trial is started again.
        progress: Show a progress bar over the trials.
        keep_artifacts: Bring the results' artifacts back (trained models are also saved
            under the trial folder, and read back for trials finished earlier) — what a report
            needs; off for sweeps.

    Returns:
        One :class:`TrialRecord` per distinct configuration, in the given order.
    """
    _check_options(cpus_per_trial, gpus_per_trial, max_retries)
    out = Path(out_dir)
    opts = _Options(cpus_per_trial, gpus_per_trial, max_retries, progress, keep_artifacts)
    with locked(out):
        return _run_locked(
            experiment, _records(experiment, configs, gpus_per_trial), out, address, opts
        )


def _run_locked(
    experiment: Any, records: list[TrialRecord], out: Path, address: str | None, opts: _Options
) -> list[TrialRecord]:
    pending = []
    for rec in records:
        rec.result = _load_done(out / "trials" / rec.id, opts.keep_artifacts)
        if rec.result is not None:
            rec.status = "done"
        else:
            pending.append(rec)
    if pending:
        import_ray()  # before anything is written
        for rec in pending:
            rec.status, rec.attempts, rec.error = "pending", 0, None
            _write_trial(out / "trials" / rec.id, experiment, rec)
        started = start_ray(address)
        try:
            _execute(experiment, pending, out, opts)
        finally:
            if started:
                import_ray().shutdown()
    return records


def _execute(experiment: Any, pending: list[TrialRecord], out: Path, opts: _Options) -> None:
    from tqdm.auto import tqdm

    ray = import_ray()
    remote = ray.remote(num_cpus=opts.cpus_per_trial, num_gpus=opts.gpus_per_trial, max_retries=0)(
        measure_trial
    )
    shared = ray.put(experiment)
    inflight: dict[Any, TrialRecord] = {}

    def submit(rec: TrialRecord) -> None:
        rec.attempts += 1
        rec.status = "running"
        _write_trial(out / "trials" / rec.id, experiment, rec)
        config = rec.config.to_dict()
        ref = remote.remote(shared, config, opts.cpus_per_trial, opts.keep_artifacts)
        inflight[ref] = rec

    bar = tqdm(total=len(pending), desc="trials", unit="trial", disable=not opts.progress)
    try:
        for rec in pending:
            submit(rec)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                rec = inflight.pop(ref)
                if _collect(ray, ref, rec, experiment, out, opts):
                    bar.update(1)
                else:
                    submit(rec)
    except KeyboardInterrupt:
        _interrupt(ray, inflight, experiment, out)
        raise
    finally:
        bar.close()


def _collect(ray: Any, ref: Any, rec: TrialRecord, experiment: Any, out: Path, opts: _Options):
    """Record the outcome of one finished task; ``False`` when it should be started again."""
    folder = out / "trials" / rec.id
    try:
        rec.result = ray.get(ref)
    except Exception as err:  # the trial's own exception, or its worker died
        rec.error, rec.traceback = _error(err)
        if rec.attempts <= opts.max_retries:
            return False
        rec.status = "failed"
        _write_trial(folder, experiment, rec)
        return True
    _write_result(folder, experiment, rec)
    rec.status, rec.error, rec.traceback = "done", None, None
    _write_trial(folder, experiment, rec)
    return True


def _interrupt(ray: Any, inflight: dict[Any, TrialRecord], experiment: Any, out: Path) -> None:
    for ref, rec in inflight.items():
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished or its worker is gone
            pass
        rec.status = "interrupted"
        _write_trial(out / "trials" / rec.id, experiment, rec)


def finished_results(records: list[TrialRecord]) -> list[Result]:
    """The trials' results, in the records' order.

    Raises:
        ValueError: naming the trials that did not finish.
    """
    missing = [f"{r.id} ({r.status}: {r.error})" for r in records if r.result is None]
    if missing:
        raise ValueError(f"trials {missing} did not finish; expected every trial done")
    return [r.result for r in records]  # type: ignore[misc]


def merged_result(records: list[TrialRecord]) -> Result:
    """One result from the trials' results (:meth:`Result.merge`), in the records' order.

    Raises:
        ValueError: naming the trials that did not finish.
    """
    return Result.merge(finished_results(records))


__all__ = [
    "FolderLockedError",
    "RAY_HINT",
    "RESULTS_FILE",
    "TRIAL_FILE",
    "RayUnavailableError",
    "TrialRecord",
    "import_ray",
    "locked",
    "measure_trial",
    "finished_results",
    "merged_result",
    "read_json",
    "run_trials",
    "start_ray",
]
