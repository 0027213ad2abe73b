"""Resumable checkpoints: safetensors + JSON, written atomically, never pickled.

A checkpoint folder holds the model as :meth:`AssocTransformer.save` writes it
(``model.safetensors`` + ``config.json``; the one save/load path for weights) plus the training
state: ``train_state.safetensors`` (optimizer tensors and the data generator's state) and
``train_state.json`` (step, training configuration, optimizer hyper-parameters). A run folder
keeps them under ``checkpoints/step-XXXXXXXX/`` with ``checkpoints/latest.json`` naming the
newest.

Safety rule: the checkpoint that ``latest.json`` names is never deleted or rewritten. A new one
is written into a temporary folder, renamed into place, then the pointer is switched
atomically, then older ones are pruned. A checkpoint for a step that already exists is not
written again (the state at that step is the same bits).

Example:
    >>> import tempfile
    >>> latest_checkpoint(tempfile.mkdtemp()) is None
    True
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tlassoc._io import atomic_write_bytes, atomic_write_json
from tlassoc.model import AssocTransformer, CheckpointError

LATEST_FILE = "latest.json"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_META_FILE = "train_state.json"
_PARTIAL = ".partial-"


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


def save_checkpoint(
    folder: str | os.PathLike[str],
    model: AssocTransformer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    config: Any,
) -> Path:
    """Write a resumable checkpoint into ``folder`` (model, optimizer, data generator, step).

    ``config`` is the :class:`~tlassoc.config.TrainConfig` (or a run configuration with
    ``to_dict``); it is stored so that a resume can be checked against it.
    """
    from safetensors.torch import save as st_save

    folder = Path(folder)
    model.save(folder)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    tensors["generator_state"] = generator.get_state().contiguous()
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    atomic_write_bytes(folder / TRAIN_STATE_FILE, st_save(tensors))
    atomic_write_json(
        folder / TRAIN_META_FILE,
        {
            "step": step,
            "optimizer": meta,
            "train_config": config.to_dict(),
            "requires_grad": requires_grad,
        },
    )
    return folder


def load_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns a dict with ``model`` (an :class:`AssocTransformer`), ``step``, ``optimizer_state``
    (a ``state_dict`` for ``load_state_dict``), ``generator_state`` and ``train_config`` (a dict).

    Raises:
        CheckpointError: a file is missing, pickled or inconsistent (the file is named).
    """
    from safetensors.torch import load as st_load

    folder = Path(folder)
    model = AssocTransformer.load(folder)
    state_path, meta_path = folder / TRAIN_STATE_FILE, folder / TRAIN_META_FILE
    for p in (state_path, meta_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} is missing")
    raw = state_path.read_bytes()
    if raw[:1] == b"\x80" or raw[:2] == b"PK":
        raise CheckpointError(f"{state_path} looks like a pickle; tlassoc loads only safetensors")
    try:
        tensors = st_load(raw)
        meta = json.loads(meta_path.read_text())
        opt_state = _unflatten_optimizer(tensors, meta["optimizer"])
        gen_state = tensors["generator_state"]
        step = int(meta["step"])
        train_config = dict(meta["train_config"])
    except Exception as err:  # noqa: BLE001 - any parse failure is a broken checkpoint
        raise CheckpointError(f"checkpoint {folder} is unreadable: {err!r}") from None
    for name, param in model.named_parameters():
        param.requires_grad_(bool(meta.get("requires_grad", {}).get(name, param.requires_grad)))
    return {
        "model": model,
        "step": step,
        "optimizer_state": opt_state,
        "generator_state": gen_state,
        "train_config": train_config,
    }


def _complete(folder: Path) -> bool:
    names = ("model.safetensors", "config.json", TRAIN_STATE_FILE, TRAIN_META_FILE)
    return _PARTIAL not in folder.name and all((folder / n).is_file() for n in names)


def _newest_complete(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and _complete(p))
    return done[-1] if done else None


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The folder of the last complete checkpoint under ``out_dir`` (``None`` if there is none).

    If ``checkpoints/latest.json`` is unreadable or names a missing checkpoint, the newest
    complete checkpoint is used instead, with a warning.
    """
    root = Path(out_dir) / "checkpoints"
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        return _newest_complete(root) if root.is_dir() else None
    try:
        folder = root / str(json.loads(pointer.read_text())["checkpoint"])
        problem = None if _complete(folder) else f"names {folder.name}, which is incomplete"
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        folder, problem = None, f"is unreadable ({err})"
    if problem is None:
        return folder
    fallback = _newest_complete(root)
    if fallback is None:
        raise CheckpointError(f"{pointer} {problem}, and no complete checkpoint exists")
    warnings.warn(f"{pointer} {problem}; using {fallback.name}", stacklevel=2)
    return fallback


def write_checkpoint(
    out_dir: Path,
    model: AssocTransformer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    config: Any,
    keep: int,
) -> Path:
    """Write the checkpoint of ``step`` under ``out_dir/checkpoints`` safely (see the module
    docstring), point ``latest.json`` at it and keep the ``keep`` newest."""
    root = out_dir / "checkpoints"
    name = f"step-{step:08d}"
    folder = root / name
    if not _complete(folder):
        if folder.exists():  # an incomplete folder can only be left by a crash
            shutil.rmtree(folder)
        partial = root / f"{name}{_PARTIAL}{os.getpid()}"
        if partial.exists():
            shutil.rmtree(partial)
        save_checkpoint(partial, model, optimizer, generator, step, config)
        os.replace(partial, folder)
    atomic_write_json(root / LATEST_FILE, {"checkpoint": name, "step": step})
    _prune(root, keep=name, n_keep=keep)
    return folder


def _prune(root: Path, keep: str, n_keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != keep)
    for p in done[: max(0, len(done) - (n_keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint", "write_checkpoint"]
