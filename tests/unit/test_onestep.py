"""One-step training: top-down gradient steps from zero, gradients returned."""

from __future__ import annotations

import pytest
import torch

from tlassoc import AssocTransformer, presets
from tlassoc.data import BigramModel, TriggerBigramTask
from tlassoc.onestep import ONE_STEP_ORDER, one_step_train


@pytest.fixture(scope="module")
def task():
    return TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=48, batch_size=64)


def test_matrices_are_minus_lr_times_gradient(task):
    model = AssocTransformer(presets.ape(d_model=32, n_ctx=48))
    frozen_before = model.W_E.detach().clone()
    lrs = (3.0, 5.0, 7.0)
    res = one_step_train(model, task, lrs, batch_size=32, n_batches=2, progress=False)
    params = dict(model.named_parameters())
    for name, lr in zip(ONE_STEP_ORDER, lrs, strict=True):
        assert torch.equal(params[name].detach(), -lr * res.gradients[name])
        assert res.gradients[name].abs().sum() > 0  # top-down: each gradient is non-zero
    assert torch.equal(model.W_E, frozen_before)
    assert len(res.losses) == 4 and res.losses[1] < res.losses[0]  # W_O² step lowers the loss
    assert model.blocks[0].attn.W_K.requires_grad  # flags restored


def test_gradients_depend_on_order_and_are_seeded(task):
    a = one_step_train(
        AssocTransformer(presets.rpe(d_model=32, n_ctx=48)),
        task,
        batch_size=16,
        n_batches=1,
        seed=1,
        progress=False,
    )
    b = one_step_train(
        AssocTransformer(presets.rpe(d_model=32, n_ctx=48)),
        task,
        batch_size=16,
        n_batches=1,
        seed=1,
        progress=False,
    )
    for name in ONE_STEP_ORDER:
        assert torch.equal(a.gradients[name], b.gradients[name])
    # Bottom-up, W_K² is stepped while W_O² = 0: layer 1's attention then cannot matter.
    c = one_step_train(
        AssocTransformer(presets.rpe(d_model=32, n_ctx=48)),
        task,
        order=ONE_STEP_ORDER[::-1],
        batch_size=16,
        n_batches=1,
        progress=False,
    )
    assert float(c.gradients["blocks.1.attn.W_K"].abs().max()) == 0.0


def test_bad_arguments(task):
    model = AssocTransformer(presets.ape(d_model=16, n_ctx=48))
    with pytest.raises(ValueError, match="step sizes"):
        one_step_train(model, task, (1.0,), progress=False)
    with pytest.raises(ValueError, match="no parameter"):
        one_step_train(model, task, (1.0,), order=("blocks.7.attn.W_K",), progress=False)
