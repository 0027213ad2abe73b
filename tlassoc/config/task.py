"""`TaskConfig`: the data a run trains on (the bigram-with-triggers task and its length).

Example:
    >>> TaskConfig(seq_len=64).n_triggers
    5
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tlassoc.config import _fields
from tlassoc.config.train import check_choice, check_int

TASKS = ("trigger_bigram",)
TRIGGER_MODES = ("fixed", "random")
OUTPUT_MODES = ("uniform", "bigram")
OUTPUT_SPLITS = ("all", "train", "test")

#: Longest sequence a run may ask for; longer ones would need many GB for attention scores.
MAX_SEQ_LEN = 16384


@dataclass
class TaskConfig:
    """The trigger task on the Tiny Shakespeare bigram statistics (see ``docs/method.md``,
    Data model).

    Args:
        name: The task: ``"trigger_bigram"`` (bigram sequences with triggers and their outputs).
        seq_len: Training sequence length ``T_train`` (input positions per sequence).
        n_triggers: ``k``, the number of triggers per sequence (0: the plain bigram chain).
        trigger_mode: ``"fixed"``: the ``k`` most frequent tokens; ``"random"``: ``k`` tokens
            drawn per sequence from the unigram distribution.
        output_mode: ``"uniform"`` over the allowed outputs or ``"bigram"`` from the trigger's
            bigram row restricted to the allowed outputs.
        output_not_trigger: Never let a trigger's output equal the trigger itself.
        output_split: ``"all"``; ``"train"``: outputs among the first ``n_train_outputs`` ids;
            ``"test"``: outputs among the others (out-of-distribution evaluation).
        n_train_outputs: Size of the training part of the output split (48 = 75 % of 65).

    Example:
        >>> TaskConfig(seq_len=32, trigger_mode="random").to_dict()["trigger_mode"]
        'random'

    :func:`tlassoc.data.make_task` builds the sampler it describes.
    """

    name: str = "trigger_bigram"
    seq_len: int = 256
    n_triggers: int = 5
    trigger_mode: str = "fixed"
    output_mode: str = "uniform"
    output_not_trigger: bool = False
    output_split: str = "all"
    n_train_outputs: int = 48

    def __post_init__(self) -> None:
        check_choice("name", self.name, TASKS)
        check_int("seq_len", self.seq_len, minimum=1)
        if self.seq_len > MAX_SEQ_LEN:
            raise ValueError(f"seq_len={self.seq_len}; expected at most {MAX_SEQ_LEN}")
        check_int("n_triggers", self.n_triggers, minimum=0)
        check_choice("trigger_mode", self.trigger_mode, TRIGGER_MODES)
        check_choice("output_mode", self.output_mode, OUTPUT_MODES)
        check_choice("output_split", self.output_split, OUTPUT_SPLITS)
        check_int("n_train_outputs", self.n_train_outputs, minimum=1)
        if not isinstance(self.output_not_trigger, bool):
            raise ValueError(f"output_not_trigger={self.output_not_trigger!r}; expected a bool")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; :meth:`from_dict` inverts it exactly."""
        return _fields.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> TaskConfig:
        """Inverse of :meth:`to_dict`; an unknown or ill-typed field is named in the error."""
        return _fields.from_dict(cls, data, path)

    def replace(self, **changes: Any) -> TaskConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


__all__ = ["MAX_SEQ_LEN", "TASKS", "TaskConfig"]
