"""Shared, cached models for the heads / patching / pretrained tests.

Both trained models use :func:`tlassoc.training.train` once per test session, with one torch
thread (fastest for this size on a shared machine; restored afterwards):

* ``trained_rpe()``: the simplified RPE model trained with the loss on in-context positions
  (label >= 2), the papers' simplified recipe (here AdamW, lr 0.1, 500 steps of 32 x 128).
* ``trained_rpe_ffn()``: an RPE model with a linear feed-forward layer (the global bigram
  memory) trained with the loss on ALL positions, so that its global-bigram loss is
  meaningful. Its layer-0 relative term is the T5-style learned scalar per distance
  (``relative_form="bias"``), which learns the previous-token head far faster than the default
  vector form; d_model 128 leaves the feed-forward layer room to separate the current token
  from what the previous-token head writes (at 64 the global-bigram loss moves by up to 0.06
  when that head is mean-ablated, depending on the seed). AdamW, lr 0.05 with a cosine
  schedule, 450 steps of 32 x 128, 10 triggers per sequence: in-context accuracy about 0.95,
  global-bigram loss about 2.44.
"""

from __future__ import annotations

import functools

import torch

from tlassoc import AssocTransformer, presets
from tlassoc.config import TrainConfig
from tlassoc.data import BigramModel, TriggerBigramTask
from tlassoc.training import train

SEQ_LEN = 128


@functools.cache
def task(n_triggers: int = 5) -> TriggerBigramTask:
    return TriggerBigramTask(
        BigramModel.tiny_shakespeare(),
        batch_size=32,
        seq_len=SEQ_LEN,
        trigger_mode="random",
        n_triggers=n_triggers,
    )


def _train(
    model: AssocTransformer,
    n_triggers: int,
    steps: int,
    loss_on: str,
    lr: float = 0.1,
    schedule: str = "constant",
) -> AssocTransformer:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig.full(
            steps=steps,
            lr=lr,
            schedule=schedule,
            weight_decay=0.0,
            batch_size=32,
            loss_on=loss_on,
            log_every=0,
            eval_batch_size=8,
        )
        train(model, task(n_triggers), cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@functools.cache
def trained_rpe() -> AssocTransformer:
    """The simplified two-layer RPE model (d_model 64), trained on the in-context positions
    until its induction circuit works."""
    model = AssocTransformer(presets.rpe(d_model=64, n_ctx=256, seed=0))
    return _train(model, n_triggers=5, steps=500, loss_on="in_context")


@functools.cache
def trained_rpe_ffn() -> AssocTransformer:
    """The RPE model (scalar relative bias, d_model 128) with a linear feed-forward layer in
    layer 1, trained on all positions."""
    cfg = presets.rpe(d_model=128, n_ctx=256, ffn_type="linear", relative_form="bias", seed=0)
    model = AssocTransformer(cfg)
    return _train(model, n_triggers=10, steps=450, loss_on="all", lr=0.05, schedule="cosine")


@functools.cache
def eval_batch(n_triggers: int = 5):
    """A fixed evaluation batch of the trigger task (64 sequences)."""
    return task(n_triggers).sample(seed=12345, batch_size=64)


@functools.cache
def gpt2_small_offline():
    """A 2-layer, 4-head GPT-2-architecture model built offline (random weights)."""
    from tlassoc.pretrained import gpt2_like

    return gpt2_like(n_layers=2, n_heads=4, d_model=64, n_ctx=256, seed=0)
