"""Resumable checkpoints: safetensors + JSON, written atomically, verified on load, never pickled.

A checkpoint folder holds the model as :meth:`AssocTransformer.save` writes it
(``model.safetensors`` + ``config.json``; the one save/load path for weights) plus the training
state: ``train_state.safetensors`` (optimizer tensors and the data generator's state) and
``train_state.json`` (step, training configuration, optimizer hyper-parameters, and the sha256
of every other file of the checkpoint and of itself, so whatever a resume reads is verified). A
run folder keeps them under ``checkpoints/step-XXXXXXXX/`` with ``checkpoints/latest.json``
naming the newest.

Safety rules:

* The checkpoint that ``latest.json`` names is never deleted or rewritten. A new one is written
  into a temporary ``step-XXXXXXXX.partial-PID`` folder, renamed into place, then the pointer is
  switched atomically, then older ones are pruned. A killed writer leaves at worst a partial or
  half-pruned folder, which is never loaded and is removed by the next run (:func:`clean_stale`).
* A checkpoint for a step that already exists complete is not written again (the state at that
  step is the same bits); a resume first removes checkpoints newer than the one it continues
  from (:func:`remove_after`), so an existing folder always belongs to the current run.
* A checkpoint with a non-finite weight or optimizer value is never written
  (:class:`DivergenceError`).

Test hook: with the environment variable ``TLASSOC_FAULT_DELAY`` set to a number of seconds,
:func:`write_checkpoint` sleeps that long between its phases (files written, folder renamed,
pointer switched, each older folder pruned), so that fault-injection tests can kill a process
inside every phase. It has no other effect and is unset in normal use.

Example:
    >>> import tempfile
    >>> latest_checkpoint(tempfile.mkdtemp()) is None
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tlassoc._io import atomic_write_bytes, atomic_write_json
from tlassoc.model import CONFIG_FILE, WEIGHTS_FILE, AssocTransformer, CheckpointError

LATEST_FILE = "latest.json"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_META_FILE = "train_state.json"
CHECKPOINTS_DIR = "checkpoints"
STATE_FORMAT_VERSION = 2
FAULT_DELAY_ENV = "TLASSOC_FAULT_DELAY"
_PARTIAL = ".partial-"
_TRASH = ".trash-"
_STEP_NAME = re.compile(r"step-(\d{8,})")
_FILES = (WEIGHTS_FILE, CONFIG_FILE, TRAIN_STATE_FILE, TRAIN_META_FILE)

#: Settings that may change when a run is resumed: they change how long the run is and how
#: often it records, not the numbers of the steps (``train.steps`` only while the learning rate
#: does not depend on it, i.e. with a constant schedule).
RESUME_FREE = (
    "model.device",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
)


class DivergenceError(ValueError):
    """Training produced a non-finite loss, weight or optimizer value."""


# ------------------------------------------------------------------------------------------------
# Writing and reading one checkpoint
# ------------------------------------------------------------------------------------------------


def _path(name: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}={value!r}; expected a folder path")
    return Path(value)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _self_hash(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        keys = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous()
                keys[key] = "tensor"
            else:
                keys[key] = value
        meta["state"][str(idx)] = keys
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, keys in meta["state"].items():
        entry = {}
        for key, kind in keys.items():
            entry[key] = tensors[f"optim.{idx}.{key}"] if kind == "tensor" else kind
        state[int(idx)] = entry
    return {"state": state, "param_groups": meta["param_groups"]}


def non_finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """Names of the parameters (and optimizer tensors) holding a NaN or an infinity.

    Example:
        >>> from tlassoc import AssocConfig
        >>> non_finite(AssocTransformer(AssocConfig(d_model=16)))
        []
    """
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if optimizer is not None:
        for idx, entry in optimizer.state_dict()["state"].items():
            for key, value in entry.items():
                if isinstance(value, Tensor) and value.is_floating_point():
                    if not bool(torch.isfinite(value).all()):
                        bad.append(f"optimizer.{idx}.{key}")
    return bad


def save_checkpoint(
    folder: str | os.PathLike[str],
    model: AssocTransformer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    config: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a resumable checkpoint into ``folder`` (model, optimizer, data generator, step).

    ``config`` is the :class:`~tlassoc.config.TrainConfig` (or anything with ``to_dict``); it is
    stored so that a resume can be checked against it. ``extra`` (JSON) is stored alongside.

    Raises:
        DivergenceError: a weight or optimizer value is NaN or infinite (nothing is written).
    """
    from safetensors.torch import save as st_save

    bad = non_finite(model, optimizer)
    if bad:
        raise DivergenceError(
            f"refusing to write the checkpoint of step {step}: {bad[0]} holds NaN or inf "
            f"({len(bad)} tensor(s)); expected finite weights"
        )
    folder = Path(folder)
    model.save(folder)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    tensors["generator_state"] = generator.get_state().contiguous()
    payload = st_save(tensors)
    atomic_write_bytes(folder / TRAIN_STATE_FILE, payload)
    record: dict[str, Any] = {
        "format": "tlassoc-train-state",
        "format_version": STATE_FORMAT_VERSION,
        "step": step,
        "optimizer": meta,
        "train_config": config.to_dict(),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "extra": extra or {},
        "files_sha256": {
            TRAIN_STATE_FILE: _sha256(payload),
            CONFIG_FILE: _sha256((folder / CONFIG_FILE).read_bytes()),
            WEIGHTS_FILE: _sha256((folder / WEIGHTS_FILE).read_bytes()),
        },
    }
    record["sha256"] = _self_hash(record)
    atomic_write_json(folder / TRAIN_META_FILE, record)
    return folder


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{meta_path} holds a {type(meta).__name__}; expected a JSON object written by tlassoc"
        )
    keys = ("step", "optimizer", "train_config", "files_sha256", "sha256")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise CheckpointError(
            f"{meta_path} has no {missing[0]!r}; expected a tlassoc training state with keys "
            f"{list(keys)}"
        )
    if meta["sha256"] != _self_hash(meta):
        raise CheckpointError(
            f"{meta_path} does not match its own sha256: it was edited or damaged; expected the "
            "file as tlassoc wrote it"
        )
    if not isinstance(meta["train_config"], dict) or not isinstance(meta["step"], int):
        raise CheckpointError(
            f"{meta_path}: expected an integer 'step' and a 'train_config' object"
        )
    return meta


def _verify_files(folder: Path, meta: dict[str, Any]) -> bytes:
    """Check every file against the sha256 in ``train_state.json``; return the state bytes."""
    hashes = meta["files_sha256"]
    state = b""
    for name in (CONFIG_FILE, WEIGHTS_FILE, TRAIN_STATE_FILE):
        raw = (folder / name).read_bytes()
        if not isinstance(hashes, dict) or _sha256(raw) != hashes.get(name):
            raise CheckpointError(
                f"{folder / name} does not match the sha256 recorded in {TRAIN_META_FILE}: it "
                "was modified or belongs to another checkpoint"
            )
        if name == TRAIN_STATE_FILE:
            state = raw
    return state


def load_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Returns a dict with ``model`` (an :class:`AssocTransformer`), ``step``, ``optimizer_state``
    (a ``state_dict`` for ``load_state_dict``), ``generator_state``, ``train_config`` (a dict)
    and ``extra``.

    Raises:
        CheckpointError: a file is missing, pickled, modified or inconsistent (the file is named,
            with what was expected).
    """
    from safetensors.torch import load as st_load

    folder = _path("folder", folder)
    for name in _FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint file {folder / name} is missing")
    meta = _read_meta(folder / TRAIN_META_FILE)
    raw = _verify_files(folder, meta)
    model = AssocTransformer.load(folder)
    state_path = folder / TRAIN_STATE_FILE
    if raw[:1] == b"\x80" or raw[:2] == b"PK":
        raise CheckpointError(f"{state_path} looks like a pickle; tlassoc loads only safetensors")
    try:
        tensors = st_load(raw)
    except Exception as err:  # noqa: BLE001 - any parse failure is a broken file
        raise CheckpointError(f"{state_path} is not a valid safetensors file: {err}") from None
    try:
        opt_state = _unflatten_optimizer(tensors, meta["optimizer"])
        gen_state = tensors["generator_state"]
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise CheckpointError(
            f"{state_path} and {TRAIN_META_FILE} disagree (missing {err}); expected the optimizer "
            "tensors and 'generator_state' the JSON names"
        ) from None
    requires_grad = meta.get("requires_grad", {})
    for name, param in model.named_parameters():
        param.requires_grad_(bool(requires_grad.get(name, param.requires_grad)))
    return {
        "model": model,
        "step": meta["step"],
        "optimizer_state": opt_state,
        "generator_state": gen_state,
        "train_config": dict(meta["train_config"]),
        "extra": meta.get("extra") or {},
    }


# ------------------------------------------------------------------------------------------------
# Comparing configurations on resume
# ------------------------------------------------------------------------------------------------


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(data))}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def resume_differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """The settings of ``requested`` that differ from ``saved``, as ``path=saved (now new)``.

    Both are nested dicts keyed by section (``{"model": ..., "train": ..., "task": ...}``, as
    :meth:`RunConfig.to_dict` writes; any subset). Sections missing from either side and the
    settings in :data:`RESUME_FREE` are not compared; ``train.steps`` is compared only when a
    side has a non-constant schedule (the learning rate then depends on it).

    Example:
        >>> resume_differences({"train": {"lr": 0.1, "steps": 5, "schedule": "constant"}},
        ...                    {"train": {"lr": 0.2, "steps": 9, "schedule": "constant"}})
        ['train.lr=0.1 (now 0.2)']
    """
    old = _flat({k: v for k, v in saved.items() if k in requested})
    new = _flat({k: v for k, v in requested.items() if k in saved})
    free = set(RESUME_FREE)
    if old.get("train.schedule", "constant") == new.get("train.schedule", "constant") == "constant":
        free.add("train.steps")
    out = []
    for path in sorted(set(old) | set(new)):
        if path in free or old.get(path, "<unset>") == new.get(path, "<unset>"):
            continue
        out.append(f"{path}={_text(old.get(path, '<unset>'))} (now {_text(new.get(path))})")
    return out


# ------------------------------------------------------------------------------------------------
# A run folder's checkpoints
# ------------------------------------------------------------------------------------------------


def _step_of(folder: Path) -> int | None:
    match = _STEP_NAME.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def _complete(folder: Path) -> bool:
    return _step_of(folder) is not None and all((folder / n).is_file() for n in _FILES)


def _complete_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and _complete(p)]
    return sorted(done, key=lambda p: _step_of(p) or 0)


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The folder of the last complete checkpoint under ``out_dir`` (``None`` if there is none).

    If ``checkpoints/latest.json`` is unreadable or names a missing or incomplete checkpoint,
    the newest complete checkpoint is used instead, with a warning.
    """
    root = _path("out_dir", out_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_FILE
    done = _complete_folders(root)
    if not pointer.is_file():
        return done[-1] if done else None
    problem: str | None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
        if not isinstance(name, str) or not _STEP_NAME.fullmatch(name):
            raise TypeError(f"'checkpoint' is {name!r}, expected a name like step-00000100")
        folder = root / name
        problem = None if _complete(folder) else f"names {name}, which is missing or incomplete"
    except (OSError, ValueError, KeyError, TypeError) as err:
        folder, problem = root, f"is unreadable ({err})"
    if problem is None:
        return folder
    if not done:
        raise CheckpointError(f"{pointer} {problem}, and no complete checkpoint exists")
    warnings.warn(f"{pointer} {problem}; using {done[-1].name} instead", stacklevel=2)
    return done[-1]


def _fault_pause() -> None:
    """The fault-injection test hook (see the module docstring)."""
    delay = os.environ.get(FAULT_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def write_checkpoint(
    out_dir: str | os.PathLike[str],
    model: AssocTransformer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    config: Any,
    keep: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` under ``out_dir/checkpoints`` safely (see the module
    docstring), point ``latest.json`` at it and keep the ``keep`` newest.

    Raises:
        DivergenceError: the model or optimizer holds NaN or inf (nothing is written).
    """
    root = Path(out_dir) / CHECKPOINTS_DIR
    name = f"step-{step:08d}"
    folder = root / name
    if not _complete(folder):
        if folder.exists():  # an incomplete folder can only be left by a crash
            shutil.rmtree(folder)
        partial = root / f"{name}{_PARTIAL}{os.getpid()}"
        if partial.exists():
            shutil.rmtree(partial)
        save_checkpoint(partial, model, optimizer, generator, step, config, extra)
        _fault_pause()
        os.replace(partial, folder)
        _fault_pause()
    pointer = {"checkpoint": name, "step": step}
    if _read_json(root / LATEST_FILE) != pointer:
        atomic_write_json(root / LATEST_FILE, pointer)
        _fault_pause()
    for old in _complete_folders(root)[: -max(keep, 1)]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
            _fault_pause()
    return folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------
# Housekeeping of a run folder (call with the folder lock held)
# ------------------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(out_dir: str | os.PathLike[str]) -> list[str]:
    """Remove what killed writers leave behind: partial and incomplete checkpoint folders,
    temporary files of atomic writes, folders being cleared. Returns the removed names.

    Call it only while holding the folder's lock (:func:`tlassoc._io.folder_lock`), when no
    other process writes there.
    """
    out, root = Path(out_dir), Path(out_dir) / CHECKPOINTS_DIR
    removed = []
    for folder in (out, root):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            temp = p.name.startswith(".") and p.name.endswith(".tmp") or _TRASH in p.name
            partial = folder == root and p.is_dir() and not _complete(p)
            if temp or partial:
                _remove(p)
                removed.append(p.name)
    return removed


def remove_after(out_dir: str | os.PathLike[str], step: int) -> list[str]:
    """Remove the complete checkpoints newer than ``step`` (a resume from ``step`` recomputes
    them; keeping them would mix two runs' futures). Returns the removed names."""
    removed = []
    for p in _complete_folders(Path(out_dir) / CHECKPOINTS_DIR):
        if (_step_of(p) or 0) > step:
            shutil.rmtree(p)
            removed.append(p.name)
    return removed


def clear_run(out_dir: str | os.PathLike[str], names: tuple[str, ...] = ()) -> None:
    """Remove a previous run's ``checkpoints/`` and ``metrics.jsonl`` (plus ``names``) from
    ``out_dir``; other files are left alone. Each is first renamed aside (one atomic step, the
    checkpoints first), so an interrupted clear never leaves a half-deleted run to resume."""
    out = Path(out_dir)
    for name in (CHECKPOINTS_DIR, "metrics.jsonl", *names):
        path = out / name
        if path.exists() or path.is_symlink():
            trash = out / f"{name}{_TRASH}{os.getpid()}"
            _remove(trash)
            os.replace(path, trash)
            _remove(trash)


def run_files(out_dir: str | os.PathLike[str]) -> list[str]:
    """The files of a previous training run in ``out_dir`` (``checkpoints``, ``metrics.jsonl``).

    Example:
        >>> import tempfile
        >>> run_files(tempfile.mkdtemp())
        []
    """
    out = Path(out_dir)
    return [n for n in (CHECKPOINTS_DIR, "metrics.jsonl") if (out / n).exists()]


__all__ = [
    "CHECKPOINTS_DIR",
    "FAULT_DELAY_ENV",
    "LATEST_FILE",
    "RESUME_FREE",
    "DivergenceError",
    "clean_stale",
    "clear_run",
    "latest_checkpoint",
    "load_checkpoint",
    "non_finite",
    "remove_after",
    "resume_differences",
    "run_files",
    "save_checkpoint",
    "write_checkpoint",
]
