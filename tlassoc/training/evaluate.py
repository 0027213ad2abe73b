"""Losses and accuracies of a model on trigger-task batches (what training logs).

Only tensor measurements from :mod:`tlassoc.metrics` are used here; analyses such as the memory
recall probes are passed to :func:`tlassoc.training.train` as extra evaluators by the caller.

Example:
    >>> loss_mask(torch.tensor([[0, 1, 2, -1]]), "in_context").tolist()
    [[False, False, True, False]]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tlassoc.config.train import LOSS_ON, check_choice
from tlassoc.metrics import induction_attention_accuracy, masked_mean, previous_token_accuracy


def loss_mask(labels: Int[Tensor, "batch pos"], loss_on: str) -> Bool[Tensor, "batch pos"]:
    """Boolean mask of the targets the loss is taken on (``"in_context"``: label >= 2;
    ``"all"``: label >= 0).

    Example:
        >>> loss_mask(torch.tensor([[0, 1, 2, -1]]), "all").tolist()
        [[True, True, True, False]]
    """
    check_choice("loss_on", loss_on, LOSS_ON)
    return labels >= 2 if loss_on == "in_context" else labels >= 0


def masked_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    targets: Int[Tensor, "batch pos"],
    mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, ""]:
    """Mean cross-entropy over the ``True`` positions of ``mask`` (0 if none)."""
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    m = mask.flatten().to(nll.dtype)
    return (nll * m).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def evaluate(model: Any, batch: Any) -> dict[str, float]:
    """Losses and accuracies of ``model`` on one :class:`~tlassoc.data.TriggerBatch`.

    Keys: ``loss`` (all targets with label >= 0), ``loss_global`` (label 0: global bigrams),
    ``loss_in_context`` (label >= 2), ``acc_ge1`` / ``acc_ge2`` (argmax accuracy on label >= 1 /
    >= 2), ``prev_token_acc`` (fraction of query positions t >= 1 whose layer-0 attention argmax
    is t - 1, head 0) and ``induction_attn_acc`` (layer 1's argmax lands right after an earlier
    copy of the current token).

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> from tlassoc.data import BigramModel, TriggerBigramTask
        >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=16, batch_size=2)
        >>> m = AssocTransformer(presets.rpe(d_model=16, n_ctx=16))
        >>> sorted(evaluate(m, task.sample(seed=0)))[:3]
        ['acc_ge1', 'acc_ge2', 'induction_attn_acc']
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    tokens, targets, labels = batch.tokens.to(dev), batch.targets.to(dev), batch.labels.to(dev)
    names = {"blocks.0.attn.hook_pattern"}
    if model.cfg.n_layers > 1:
        names.add("blocks.1.attn.hook_pattern")
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    nll = nll.view_as(targets)
    correct = (logits.argmax(-1) == targets).to(nll.dtype)
    out = {
        "loss": masked_mean(nll, labels >= 0),
        "loss_global": masked_mean(nll, labels == 0),
        "loss_in_context": masked_mean(nll, labels >= 2),
        "acc_ge1": masked_mean(correct, labels >= 1),
        "acc_ge2": masked_mean(correct, labels >= 2),
    }
    pattern0 = cache["blocks.0.attn.hook_pattern"][:, 0]
    out["prev_token_acc"] = float(previous_token_accuracy(pattern0)[1:].mean())
    if model.cfg.n_layers > 1:
        pattern1 = cache["blocks.1.attn.hook_pattern"][:, 0]
        out["induction_attn_acc"] = induction_attention_accuracy(pattern1, tokens)
    model.train(was_training)
    return out


__all__ = ["evaluate", "loss_mask", "masked_loss"]
