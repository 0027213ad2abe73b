"""Which model folder a path means: a model, a training run's latest checkpoint, or the one model
of an experiment's output folder.

The folder layouts, written by :meth:`tlassoc.AssocTransformer.save`, :func:`tlassoc.train`
(``out_dir``) and the experiments' writer:

* a model folder: ``model.safetensors`` + ``config.json``;
* a training run: ``checkpoints/latest.json`` naming ``checkpoints/step-XXXXXXXX/`` (each a
  model folder plus the training state);
* an experiment's output folder: ``models/<name>/`` (one model folder per trained model).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> resolve_model_folder(folder) == folder  # nothing to resolve: returned as given
    True
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

__all__ = ["CHECKPOINTS_DIR", "LATEST_FILE", "MODELS_DIR", "resolve_model_folder"]

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest.json"
MODELS_DIR = "models"
_MODEL_FILES = ("model.safetensors", "config.json")


def _is_model(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _MODEL_FILES)


def _latest_checkpoint(root: Path, error: type[Exception]) -> Path:
    """The checkpoint ``root/latest.json`` names; when the pointer is unreadable or names a
    missing checkpoint, the newest complete one, with a warning."""
    pointer = root / LATEST_FILE
    problem = None
    if pointer.is_file():
        try:
            named = root / str(json.loads(pointer.read_text())["checkpoint"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            problem = f"is unreadable ({err})"
        else:
            if _is_model(named):
                return named
            problem = f"names {named.name}, which holds no complete model"
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and _is_model(p))
    if not done:
        why = f"{pointer} {problem}" if problem else f"{root} has no {LATEST_FILE}"
        raise error(f"{why}, and no complete checkpoint exists under {root}")
    if problem:
        warnings.warn(f"{pointer} {problem}; loading {done[-1].name}", stacklevel=3)
    return done[-1]


def resolve_model_folder(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> Path:
    """The model folder ``path`` stands for.

    Args:
        path: A model folder; a training run folder (its latest checkpoint); or an experiment's
            output folder holding exactly one model under ``models/``.
        error: Exception class raised when the path names a run or an output folder but no
            single model can be chosen.

    Returns:
        ``path`` itself when it is a model folder or no known layout (the caller reports what is
        missing), else the folder of the chosen model.

    Raises:
        error: the run has no complete checkpoint, or the output folder holds zero or several
            models (the message lists them and how to pick one).
    """
    folder = Path(path)
    if not folder.is_dir() or _is_model(folder):
        return folder
    if (folder / CHECKPOINTS_DIR).is_dir():
        return _latest_checkpoint(folder / CHECKPOINTS_DIR, error)
    models = folder / MODELS_DIR
    if models.is_dir():
        found = sorted(p for p in models.iterdir() if p.is_dir() and _is_model(p))
        if len(found) == 1:
            return found[0]
        names = ", ".join(p.name for p in found) or "none"
        example = f"; pass one of them, e.g. {str(found[0])!r}" if found else ""
        raise error(
            f"path={str(folder)!r} is an experiment output folder with {len(found)} models under "
            f"{MODELS_DIR}/ ({names}); expected exactly one{example}"
        )
    return folder
