"""The batched patching metric's contract: it sees tiled copies of the prompts."""

from __future__ import annotations

import pytest
import torch

from tlassoc import AssocTransformer, presets
from tlassoc import patching as P


@pytest.fixture(scope="module")
def setup():
    model = AssocTransformer(presets.rpe(d_model=16, n_ctx=64, seed=0)).eval()
    prompts = P.induction_prompts(model, repeat_len=6, n_samples=3, seed=0)
    return model, prompts


def _untiled_index_metric(prompts):
    targets = prompts.clean[:, -1]  # one target per prompt: length 3

    def metric(logits):
        return logits[torch.arange(len(targets)), -2].log_softmax(-1)[  # 3 rows, not all
            torch.arange(len(targets)), targets
        ]

    return metric


def _untiled_broadcast_metric(prompts):
    targets = prompts.clean[:, -1]

    def metric(logits):
        return logits[:, -2].log_softmax(-1).gather(-1, targets[:, None])[:, 0]  # shape error

    return metric


def _tiled_metric(prompts):
    targets = prompts.clean[:, -1]

    def metric(logits):
        tgt = targets.repeat(logits.shape[0] // len(targets))
        return logits[:, -2].log_softmax(-1).gather(-1, tgt[:, None])[:, 0]

    return metric


@pytest.mark.parametrize("make", [_untiled_index_metric, _untiled_broadcast_metric])
@pytest.mark.parametrize("act", ["z", "k"])
def test_untiled_targets_get_a_clear_error(setup, make, act):
    model, prompts = setup
    with pytest.raises(ValueError, match=r"patched copies of the 3 prompts.*targets\.repeat"):
        P.patch_heads(model, prompts, make(prompts), act=act, per_position=True)


def test_tiled_targets_work_and_match_one_patch_at_a_time(setup):
    model, prompts = setup
    metric = _tiled_metric(prompts)
    batched = P.patch_heads(model, prompts, metric, act="k")
    one = P.patch_heads(model, prompts, metric, act="k", batch_size=1)
    torch.testing.assert_close(batched.values, one.values, rtol=0, atol=1e-5)
