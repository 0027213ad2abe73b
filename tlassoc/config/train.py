"""`TrainConfig`: how a model is trained (optimizer, schedule, batches, loss, staging, logging).

Only settings live here. Where a run writes its files, whether it resumes, shows a progress bar
or which extra evaluators it logs are arguments of :func:`tlassoc.training.train`, not settings:
they do not change the numbers a run produces. The sequence length belongs to the task
(:class:`~tlassoc.config.TaskConfig`).

Example:
    >>> TrainConfig.full().optimizer, TrainConfig.simplified().lr
    ('adamw', 0.2)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from tlassoc.config import _fields

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "linear")
LOSS_ON = ("all", "in_context")


def check_int(name: str, value: Any, minimum: int | None) -> None:
    """Raise ``ValueError("name=value; expected an integer >= minimum")`` unless it is one."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r}; expected an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r}; expected an integer >= {minimum}")


def check_seed(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer a ``torch.Generator`` accepts
    (``-2**63 <= value < 2**64``).

    Example:
        >>> check_seed("seed", 2**64)
        Traceback (most recent call last):
        ...
        ValueError: seed=18446744073709551616; expected an integer in [-2**63, 2**64)
    """
    check_int(name, value, minimum=None)
    if not -(2**63) <= value < 2**64:
        raise ValueError(f"{name}={value!r}; expected an integer in [-2**63, 2**64)")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError("name=value; expected one of [...]")`` unless ``value`` is a choice."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {list(choices)}")


def _check_number(name: str, value: Any, maximum: float = 1e30) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}; expected a finite number")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name}={value!r}; expected a number in [0, {maximum:g}]")


@dataclass
class TrainConfig:
    """How to train: optimizer, schedule, batch size, loss positions, staging, logging.

    Args:
        steps: Number of optimizer steps.
        batch_size: Sequences per training batch.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"`` (with ``betas``).
        lr: Peak learning rate.
        momentum: SGD momentum.
        betas: AdamW betas.
        weight_decay: Weight decay (SGD: L2 added to the gradient; AdamW: decoupled).
        schedule: ``"constant"``, ``"cosine"`` (to 0 at ``steps``) or ``"linear"`` (to 0),
            after ``warmup_steps`` of linear warm-up.
        warmup_steps: Steps of linear warm-up from 0 to ``lr``.
        loss_on: ``"in_context"``: cross-entropy only on targets with label >= 2 (the induction
            head's job); ``"all"``: on every target with label >= 0.
        unfreeze: Staged training: ``((step, patterns), ...)``. A parameter matched by a stage's
            ``fnmatch`` patterns is held frozen until that step and trainable from it on (even
            if the model config froze it). Parameters in no stage keep their ``requires_grad``.
        grad_clip: Clip the global gradient norm to this value (``None``: no clipping).
        seed: Seed of the training-data generator (the weights have their own seed,
            ``model.seed``).
        log_every: Evaluate and log metrics every this many steps (0: only at the end).
        eval_batch_size: Sequences in the fixed evaluation batch.
        eval_seed: Seed of the evaluation batch.
        checkpoint_every: Write a checkpoint every this many steps (0: only at the end and on
            Ctrl-C) when the run has an output folder.
        keep_checkpoints: Number of most recent checkpoints kept on disk.

    Example:
        >>> TrainConfig(steps=10, schedule="linear").replace(lr=0.05).lr
        0.05
    """

    steps: int = 1000
    batch_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    loss_on: str = "in_context"
    unfreeze: tuple[tuple[int, tuple[str, ...]], ...] = ()
    grad_clip: float | None = None
    seed: int = 0
    log_every: int = 50
    eval_batch_size: int = 64
    eval_seed: int = 12345
    checkpoint_every: int = 0
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "checkpoint_every", "warmup_steps"):
            check_int(name, getattr(self, name), minimum=0)
        for name in ("eval_batch_size", "keep_checkpoints", "batch_size"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("seed", "eval_seed"):
            check_seed(name, getattr(self, name))
        _check_number("lr", self.lr, maximum=1e6)
        _check_number("momentum", self.momentum, maximum=1.0)
        _check_number("weight_decay", self.weight_decay, maximum=1e6)
        self.lr, self.momentum = float(self.lr), float(self.momentum)
        self.weight_decay = float(self.weight_decay)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, maximum=1e30)
            if self.grad_clip <= 0:
                raise ValueError(f"grad_clip={self.grad_clip!r}; expected a positive number")
            self.grad_clip = float(self.grad_clip)
        try:
            self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        except (TypeError, ValueError):
            raise ValueError(f"betas={self.betas!r}; expected two numbers in [0, 1)") from None
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas!r}; expected two numbers in [0, 1)")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("loss_on", self.loss_on, LOSS_ON)
        self.unfreeze = _stages(self.unfreeze)

    # --- the papers' recipes ----------------------------------------------------------------
    @classmethod
    def simplified(cls, **overrides: Any) -> TrainConfig:
        """Bietti et al.'s recipe for the simplified model: SGD, momentum 0.9, weight decay 1e-4,
        batch 512, lr 0.2 (their code's default; their figure uses 0.03), 1,000 steps, loss
        only on in-context targets (label >= 2).

        Example:
            >>> TrainConfig.simplified(lr=0.03).momentum
            0.9
        """
        base: dict[str, Any] = dict(
            steps=1000,
            batch_size=512,
            optimizer="sgd",
            lr=0.2,
            momentum=0.9,
            weight_decay=1e-4,
            loss_on="in_context",
        )
        return cls(**{**base, **overrides})

    @classmethod
    def full(cls, **overrides: Any) -> TrainConfig:
        """The full model's recipe: AdamW, lr 0.01, weight decay 0.01, betas (0.9, 0.99),
        batch 64, loss on all tokens.

        Example:
            >>> TrainConfig.full().betas
            (0.9, 0.99)
        """
        base: dict[str, Any] = dict(
            steps=1000,
            batch_size=64,
            optimizer="adamw",
            lr=0.01,
            betas=(0.9, 0.99),
            weight_decay=0.01,
            loss_on="all",
        )
        return cls(**{**base, **overrides})

    @classmethod
    def staged(cls, steps: int = 1000, **overrides: Any) -> TrainConfig:
        """The simplified recipe with the matrices released top-down: ``W_O²`` at step 0,
        ``W_K²`` at ``steps // 3``, ``W_K¹`` at ``2 * steps // 3``.

        Example:
            >>> [s for s, _ in TrainConfig.staged(steps=90).unfreeze]
            [0, 30, 60]
        """
        stages = (
            (0, ("blocks.1.attn.W_O",)),
            (steps // 3, ("blocks.1.attn.W_K",)),
            (2 * steps // 3, ("blocks.0.attn.W_K",)),
        )
        return cls.simplified(**{"steps": steps, "unfreeze": stages, **overrides})

    # --- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; :meth:`from_dict` inverts it exactly."""
        return _fields.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> TrainConfig:
        """Inverse of :meth:`to_dict`; an unknown or ill-typed field is named in the error."""
        return _fields.from_dict(cls, data, path)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _stages(unfreeze: Any) -> tuple[tuple[int, tuple[str, ...]], ...]:
    stages = []
    for stage in unfreeze:
        try:
            step, patterns = stage
        except (TypeError, ValueError):
            raise ValueError(f"unfreeze stage {stage!r}; expected (step, patterns)") from None
        check_int("unfreeze step", step, minimum=0)
        if isinstance(patterns, str):
            patterns = (patterns,)
        patterns = tuple(patterns)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"unfreeze patterns {patterns!r}; expected parameter-name patterns")
        stages.append((int(step), patterns))
    return tuple(sorted(stages))


__all__ = [
    "LOSS_ON",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "check_choice",
    "check_int",
    "check_seed",
]
