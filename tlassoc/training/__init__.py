"""Training: the step loop, its evaluation, checkpoints, and one-step (population-gradient)
training.

* :mod:`~tlassoc.training.loop` — :func:`train` (the step loop alone; extra evaluators are
  passed in by the caller, so training imports no analysis code);
* :mod:`~tlassoc.training.evaluate` — losses and accuracies on a batch;
* :mod:`~tlassoc.training.checkpoint` — resumable safetensors + JSON checkpoints;
* :mod:`~tlassoc.training.onestep` — the three population-gradient steps of the one-step
  theory.

Recipes (a model, a training and a task configuration together) are in :mod:`tlassoc.recipes`.

Example:
    >>> from tlassoc import AssocTransformer, presets
    >>> from tlassoc.config import TaskConfig
    >>> from tlassoc.data import make_task
    >>> task = make_task(TaskConfig(seq_len=16), batch_size=4)
    >>> model = AssocTransformer(presets.ape(d_model=16, n_ctx=16))
    >>> train(model, task, TrainConfig.full(steps=2, batch_size=4), progress=False).step
    2
"""

from tlassoc.config.train import TrainConfig
from tlassoc.training.checkpoint import (
    DivergenceError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from tlassoc.training.evaluate import evaluate, loss_mask, masked_loss
from tlassoc.training.loop import (
    METRICS_FILE,
    Evaluator,
    TrainResult,
    lr_factor,
    read_metrics,
    train,
    write_metrics,
)
from tlassoc.training.onestep import ONE_STEP_ORDER, OneStepResult, one_step_train

__all__ = [
    "METRICS_FILE",
    "ONE_STEP_ORDER",
    "DivergenceError",
    "Evaluator",
    "OneStepResult",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "latest_checkpoint",
    "load_checkpoint",
    "loss_mask",
    "lr_factor",
    "masked_loss",
    "one_step_train",
    "read_metrics",
    "save_checkpoint",
    "train",
    "write_checkpoint",
    "write_metrics",
]
