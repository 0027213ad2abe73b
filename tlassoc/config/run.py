"""`RunConfig`: everything that determines one training run — model, training and task.

A run configuration is three nested dataclasses, each owning its settings:
``model`` (:class:`~tlassoc.config.AssocConfig`), ``train``
(:class:`~tlassoc.config.TrainConfig`) and ``task`` (:class:`~tlassoc.config.TaskConfig`).
Settings are addressed by dotted paths (``model.d_model``, ``train.lr``, ``task.seq_len``), the
same paths the command line's ``--set`` takes and the same keys ``to_dict`` writes.

Example:
    >>> run = RunConfig().set("model.d_model", 64).set("train.lr", 0.05)
    >>> run.model.d_model, run.model.d_head, run.train.lr
    (64, 64, 0.05)
    >>> RunConfig.from_dict(run.to_dict()) == run
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tlassoc.config import _fields
from tlassoc.config.model import AssocConfig
from tlassoc.config.task import TaskConfig
from tlassoc.config.train import TrainConfig


@dataclass
class RunConfig:
    """One training run: the model, how it is trained, and on which task.

    Args:
        model: The model's configuration.
        train: How it is trained.
        task: The data it is trained on (``task.seq_len`` is the training length).
    """

    model: AssocConfig = field(default_factory=AssocConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        for name, cls in (("model", AssocConfig), ("train", TrainConfig), ("task", TaskConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name}={getattr(self, name)!r}; expected a {cls.__name__}")
        if self.model.positional_embedding_type == "standard" and (
            self.model.n_ctx < self.task.seq_len
        ):
            raise ValueError(
                f"task.seq_len={self.task.seq_len} exceeds model.n_ctx={self.model.n_ctx}; "
                "absolute positions need n_ctx >= the training length"
            )
        if self.model.d_vocab < 65:
            raise ValueError(
                f"model.d_vocab={self.model.d_vocab}; the Tiny Shakespeare task needs >= 65"
            )

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON-serialisable dict; :meth:`from_dict` inverts it exactly."""
        return _fields.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; errors name the dotted path of a bad field.

        Example:
            >>> RunConfig.from_dict({"train": {"lrr": 1}})
            Traceback (most recent call last):
            ...
            ValueError: unknown field 'train.lrr'; expected one of [...]
        """
        return _fields.from_dict(cls, data)

    def set(self, path: str, value: Any) -> RunConfig:
        """A copy with the setting at dotted ``path`` changed (values derived from it, such as
        ``model.d_head`` from ``model.d_model``, are derived again)."""
        return _fields.replace_path(self, path, value)

    def override(self, assignments: dict[str, Any]) -> RunConfig:
        """:meth:`set` for several ``path: value`` pairs (in order)."""
        out = self
        for path, value in assignments.items():
            out = out.set(path, value)
        return out

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with whole sections replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def digest(self) -> str:
        """A stable 12-character hash of the configuration (same settings, same digest)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


__all__ = ["RunConfig"]
