"""One-step training (Bietti et al. 2023, Thm. 3; docs/method.md, Training recipes).

Three gradient steps on a large batch (an estimate of the population loss), top-down, each matrix
starting from zero: ``W_O²`` (layer 1's output) first, then ``W_K²`` (layer 1's key), then
``W_K¹`` (layer 0's key). With the other trained matrices at zero, the gradient of a memory is
``Σ_k E[(p̂(k|x) - 1{y=k}) w_U(k) xᵀ]``: one step stores each input -> output pair weighted by how
often it occurs; in the theorem's idealised setting (uniform tokens, infinite width and length)
these are the induction circuit's memories.

At laptop scale on the Tiny Shakespeare trigger task (d_model 128, T 128) the three steps give an
in-context accuracy of about 0.27, far above chance (1/48) and above any context-blind predictor,
but through a context-frequency copy (uniform attention + the ``W_O²`` memory), not an induction
head; ``W_O²`` and ``W_K²`` align with the ideal memories (cosine ~0.3), ``W_K¹`` only weakly
(0.01-0.02, still far outside chance at d_model 512). Measurements and causes: docs/training.md,
"One-step training".

Example:
    >>> import torch
    >>> from tlassoc import AssocTransformer, presets
    >>> from tlassoc.data import BigramModel, TriggerBigramTask
    >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=32, batch_size=8)
    >>> model = AssocTransformer(presets.ape(d_model=32, n_ctx=32))
    >>> result = one_step_train(model, task, batch_size=8, n_batches=1, progress=False)
    >>> sorted(result.gradients)
    ['blocks.0.attn.W_K', 'blocks.1.attn.W_K', 'blocks.1.attn.W_O']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tlassoc.model import AssocTransformer
from tlassoc.training.evaluate import loss_mask, masked_loss

#: The matrices of the induction circuit, in the order they are stepped (top-down).
ONE_STEP_ORDER: tuple[str, ...] = ("blocks.1.attn.W_O", "blocks.1.attn.W_K", "blocks.0.attn.W_K")


@dataclass
class OneStepResult:
    """What :func:`one_step_train` returns.

    Attributes:
        model: The model, with the three matrices set to ``-lr * gradient``.
        gradients: The gradient used for each matrix (at the state before its own step).
        lrs: Step size of each matrix.
        losses: Loss on the gradient batch before each step and after the last one.
    """

    model: AssocTransformer
    gradients: dict[str, Tensor]
    lrs: dict[str, float]
    losses: list[float]


def _gradient(
    model: AssocTransformer, param: torch.nn.Parameter, task, batches: list, loss_on: str
) -> tuple[Tensor, float]:
    total = torch.zeros_like(param)
    loss_sum, weight_sum = 0.0, 0
    dev = param.device
    for batch in batches:
        labels = batch.labels.to(dev)
        mask = loss_mask(labels, loss_on)
        n = int(mask.sum())
        if n == 0:
            continue
        loss = masked_loss(model(batch.tokens.to(dev)), batch.targets.to(dev), mask)
        (grad,) = torch.autograd.grad(loss, [param])
        total += grad * n
        loss_sum += float(loss.detach()) * n
        weight_sum += n
    if weight_sum == 0:
        raise ValueError(f"no target with loss_on={loss_on!r} in the gradient batches")
    return total / weight_sum, loss_sum / weight_sum


def one_step_train(
    model: AssocTransformer,
    task,
    lrs: Sequence[float] = (20.0, 20.0, 200.0),
    *,
    batch_size: int = 256,
    n_batches: int = 4,
    seq_len: int | None = None,
    seed: int = 0,
    loss_on: str = "in_context",
    order: Sequence[str] = ONE_STEP_ORDER,
    progress: bool = True,
) -> OneStepResult:
    """Set ``W_O²``, ``W_K²``, ``W_K¹`` by one population-gradient step each, top-down.

    Every matrix in ``order`` is first set to zero. Then, one after another, its gradient on
    ``n_batches * batch_size`` fresh sequences (the same sequences for all three steps) is
    computed with the matrices above it already stepped and the ones below still zero, and the
    matrix becomes ``-lr * gradient``. Other weights are left as they are (the simplified model's
    frozen random embeddings, positions, ``W_V`` and layer 0's ``W_O``).

    Args:
        model: A two-layer :class:`~tlassoc.model.AssocTransformer` (changed in place).
        task: A :class:`~tlassoc.data.TriggerBigramTask`.
        lrs: Step sizes for the matrices of ``order`` (default: 20 for ``W_O²`` and ``W_K²``, 200
            for ``W_K¹``, whose gradient is smaller).
        batch_size: Sequences per gradient batch.
        n_batches: Number of batches averaged (population estimate of ``batch_size * n_batches``).
        seq_len: Sequence length (default: the task's).
        seed: Seed of the gradient batches.
        loss_on: ``"in_context"`` (label >= 2, default) or ``"all"``.
        order: Parameter names, stepped in this order.
        progress: Show a tqdm bar over the steps.

    Returns:
        A :class:`OneStepResult` with the model and the gradients used.

    Example:
        >>> from tlassoc import presets
        >>> from tlassoc.data import BigramModel, TriggerBigramTask
        >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=4)
        >>> m = AssocTransformer(presets.rpe(d_model=16, n_ctx=16))
        >>> r = one_step_train(m, task, batch_size=4, n_batches=1, progress=False)
        >>> len(r.losses)
        4
    """
    from tqdm.auto import tqdm

    if not isinstance(model, AssocTransformer):
        raise ValueError(f"model must be an AssocTransformer, got {type(model).__name__}")
    order = tuple(order)
    lrs = tuple(float(x) for x in lrs)
    if len(lrs) != len(order):
        raise ValueError(f"{len(lrs)} step sizes for {len(order)} matrices {order}")
    params = dict(model.named_parameters())
    missing = [n for n in order if n not in params]
    if missing:
        raise ValueError(f"model has no parameter {missing[0]!r}; expected names like {order}")
    for name in ("batch_size", "n_batches"):
        value = locals()[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected a positive integer")
    gen = torch.Generator().manual_seed(seed)
    length = seq_len or task.seq_len
    batches = [
        task.sample(generator=gen, batch_size=batch_size, seq_len=length) for _ in range(n_batches)
    ]
    was_training = model.training
    model.eval()
    old_flags = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(False)
    with torch.no_grad():
        for name in order:
            params[name].zero_()
    gradients: dict[str, Tensor] = {}
    losses: list[float] = []
    try:
        for name, lr in tqdm(
            list(zip(order, lrs, strict=True)), disable=not progress, desc="one-step"
        ):
            param = params[name]
            param.requires_grad_(True)
            grad, loss = _gradient(model, param, task, batches, loss_on)
            param.requires_grad_(False)
            losses.append(loss)
            gradients[name] = grad.detach().clone()
            with torch.no_grad():
                param.copy_(-lr * grad)
        with torch.no_grad():
            dev = next(model.parameters()).device
            tot, cnt = 0.0, 0
            for batch in batches:
                mask = loss_mask(batch.labels.to(dev), loss_on)
                n = int(mask.sum())
                tot += (
                    float(masked_loss(model(batch.tokens.to(dev)), batch.targets.to(dev), mask)) * n
                )
                cnt += n
            losses.append(tot / max(cnt, 1))
    finally:
        for n, p in params.items():
            p.requires_grad_(old_flags[n])
        model.train(was_training)
    return OneStepResult(model, gradients, dict(zip(order, lrs, strict=True)), losses)


__all__ = ["ONE_STEP_ORDER", "OneStepResult", "one_step_train"]
