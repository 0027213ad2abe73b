"""Configuration: every setting of tlassoc, each defined once, in the dataclass that owns it.

* :class:`AssocConfig` — the model (field names follow TransformerLens's
  ``HookedTransformerConfig``);
* :class:`TrainConfig` — optimizer, schedule, batch size, loss, staging, logging;
* :class:`TaskConfig` — the trigger task and its sequence length;
* :class:`RunConfig` — the three together, addressed by dotted paths (``model.d_model``).

This package imports neither torch nor TransformerLens (the ``tlassoc`` command builds its
help from it); torch is imported when a configuration is constructed.

Example:
    >>> from tlassoc.config import RunConfig
    >>> RunConfig().set("task.seq_len", 128).task.seq_len
    128
"""

from tlassoc.config.model import (
    ATTENTION_POSITIONS,
    FFN_TYPES,
    NORMALIZATION_TYPES,
    POSITIONAL_TYPES,
    RELATIVE_FORMS,
    AssocConfig,
)
from tlassoc.config.run import RunConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig

__all__ = [
    "ATTENTION_POSITIONS",
    "FFN_TYPES",
    "NORMALIZATION_TYPES",
    "POSITIONAL_TYPES",
    "RELATIVE_FORMS",
    "AssocConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
]
