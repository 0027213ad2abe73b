"""tlassoc: induction heads as associative memories, on TransformerLens.

``import tlassoc`` is fast: names and submodules are loaded on first use, so
``tlassoc.memory``, ``tlassoc.heads`` and the others are reachable as attributes without an
explicit import.

Example:
    >>> import tlassoc
    >>> model = tlassoc.AssocTransformer(tlassoc.presets.rpe(d_model=32, n_ctx=64))
    >>> model.to_str_tokens("To be")
    ['T', 'o', ' ', 'b', 'e']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_NAMES = {
    "AssocConfig": "tlassoc.config",
    "RunConfig": "tlassoc.config",
    "TaskConfig": "tlassoc.config",
    "TrainConfig": "tlassoc.config",
    "AnalogyTask": "tlassoc.data",
    "BigramModel": "tlassoc.data",
    "TriggerBatch": "tlassoc.data",
    "TriggerBigramTask": "tlassoc.data",
    "AssocTransformer": "tlassoc.model",
    "CheckpointError": "tlassoc.model",
    "HubUnavailableError": "tlassoc.pretrained",
    "CharTokenizer": "tlassoc.tokenizer",
    "WordTokenizer": "tlassoc.tokenizer",
    "TrainResult": "tlassoc.training",
    "train": "tlassoc.training",
    "one_step_train": "tlassoc.training",
}
_SUBMODULES = (
    "config",
    "data",
    "experiments",
    "heads",
    "memory",
    "metrics",
    "patching",
    "presets",
    "pretrained",
    "recipes",
    "sweep",
    "theory",
    "training",
    "viz",
)

__all__ = sorted([*_NAMES, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"tlassoc.{name}")
    else:
        raise AttributeError(f"module 'tlassoc' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for editors and type checkers
    from tlassoc import (  # noqa: F401
        config,
        data,
        experiments,
        heads,
        memory,
        metrics,
        patching,
        presets,
        pretrained,
        recipes,
        theory,
        training,
        viz,
    )
    from tlassoc.config import AssocConfig, RunConfig, TaskConfig, TrainConfig  # noqa: F401
    from tlassoc.data import AnalogyTask, BigramModel, TriggerBatch, TriggerBigramTask  # noqa: F401
    from tlassoc.model import AssocTransformer, CheckpointError  # noqa: F401
    from tlassoc.pretrained import HubUnavailableError  # noqa: F401
    from tlassoc.tokenizer import CharTokenizer, WordTokenizer  # noqa: F401
    from tlassoc.training import TrainResult, one_step_train, train  # noqa: F401
