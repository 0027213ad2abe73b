"""Training: recipes learn, resume is bit-exact, Ctrl-C leaves a usable checkpoint."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from tlassoc import AssocTransformer, presets, recipes
from tlassoc.config import TrainConfig
from tlassoc.data import BigramModel, TriggerBigramTask
from tlassoc.memory import probe_evaluator
from tlassoc.presets import full as full_model_config
from tlassoc.training import (
    latest_checkpoint,
    load_checkpoint,
    lr_factor,
    read_metrics,
    train,
)


@pytest.fixture(scope="module")
def task() -> TriggerBigramTask:
    return TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=32, batch_size=16)


def _small(**kw):
    base = dict(steps=20, batch_size=32, log_every=0, eval_batch_size=64)
    return {**base, **kw}


@pytest.mark.parametrize(
    "make_model, make_cfg",
    [
        (
            lambda: presets.rpe(d_model=32, n_ctx=64),
            lambda: TrainConfig.simplified(**_small(optimizer="adamw", lr=0.05, log_every=20)),
        ),
        (
            lambda: presets.ape(d_model=32, n_ctx=64),
            lambda: TrainConfig.simplified(**_small(lr=0.5, log_every=20)),
        ),
        (
            lambda: presets.rpe(d_model=32, n_ctx=64),
            lambda: TrainConfig.staged(**_small(lr=0.5, log_every=20)),
        ),
        (
            lambda: full_model_config(d_model=32, n_ctx=64),
            lambda: TrainConfig.full(**_small(lr=0.01, log_every=20)),
        ),
    ],
    ids=["simplified-adamw", "simplified-sgd", "staged", "full"],
)
def test_recipes_reduce_the_loss(task, make_model, make_cfg):
    model = AssocTransformer(make_model())
    result = train(model, task, make_cfg(), progress=False)
    cfg = make_cfg()
    key = "loss_in_context" if cfg.loss_on == "in_context" else "loss"
    first, last = result.history[0][key], result.history[-1][key]
    assert last < first - 0.05, (first, last)


def test_frozen_parameters_stay_and_stages_release(task):
    model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig.staged(**_small(steps=9))
    release_k1 = dict((p[0], s) for s, p in cfg.unfreeze)["blocks.0.attn.W_K"]
    seen = {}

    def cb(step, m, loss):
        seen[step] = (m.blocks[0].attn.W_K.detach() - before["blocks.0.attn.W_K"]).abs().max()

    train(model, task, cfg, callback=cb, progress=False)
    for name in (
        "embed.W_E",
        "unembed.W_U",
        "blocks.0.attn.W_V",
        "blocks.0.attn.W_O",
        "blocks.1.attn.W_V",
        "rel_embed.W_rel",
    ):
        assert torch.equal(dict(model.named_parameters())[name], before[name]), name
    assert float(seen[release_k1]) == 0.0  # steps 0..release-1 left W_K¹ untouched
    assert float(seen[9]) > 0.0
    assert not torch.equal(model.blocks[1].attn.W_O, before["blocks.1.attn.W_O"])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_bit_identical(task, tmp_path, optimizer):
    cfg = TrainConfig(
        steps=10,
        batch_size=8,
        optimizer=optimizer,
        lr=0.05,
        log_every=5,
        checkpoint_every=4,
        seed=3,
        schedule="cosine",
        warmup_steps=2,
    )
    ref = AssocTransformer(presets.ape(d_model=16, n_ctx=32))
    opts = dict(progress=False, evaluators=[probe_evaluator(task)])
    ref_result = train(ref, task, cfg, out_dir=tmp_path / "ref", **opts)

    def stop(step, m, loss):
        if step == 6:
            raise KeyboardInterrupt

    model = AssocTransformer(presets.ape(d_model=16, n_ctx=32))
    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(model, task, cfg, out_dir=out, callback=stop, **opts)
    assert load_checkpoint(latest_checkpoint(out))["step"] == 6
    fresh = AssocTransformer(presets.ape(d_model=16, n_ctx=32))
    result = train(fresh, task, cfg, out_dir=out, resume=True, **opts)
    assert result.step == 10 and len(result.losses) == 4
    for (n, p), (_, q) in zip(ref.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert result.losses == ref_result.losses[6:]
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == [0, 5, 10] == [r["step"] for r in ref_result.history]


def test_sigint_writes_checkpoint_between_steps(task, tmp_path):
    def interrupt(step, m, loss):
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    model = AssocTransformer(presets.rpe(d_model=16, n_ctx=32))
    cfg = TrainConfig(steps=8, batch_size=8, log_every=0)
    with pytest.raises(KeyboardInterrupt):
        train(model, task, cfg, out_dir=tmp_path, progress=False, callback=interrupt)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt["step"] == 3
    for (n, p), (_, q) in zip(
        model.named_parameters(), ckpt["model"].named_parameters(), strict=True
    ):
        assert torch.equal(p, q), n
    pointer = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_metrics_records_hold_losses_and_probes(task, tmp_path):
    model = AssocTransformer(presets.ape(d_model=16, n_ctx=32))
    cfg = TrainConfig(steps=4, batch_size=8, log_every=2)
    train(model, task, cfg, out_dir=tmp_path, progress=False, evaluators=[probe_evaluator(task)])
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [0, 2, 4]
    for key in (
        "loss_global",
        "loss_in_context",
        "acc_ge1",
        "acc_ge2",
        "prev_token_acc",
        "probe_wo2",
        "probe_wk2",
        "probe_wk1",
        "probe_wk1_first64",
    ):
        assert key in recs[-1], key


def test_lr_schedule_and_validation():
    cfg = TrainConfig(steps=100, schedule="cosine", warmup_steps=10)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 100) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="resume"):
        train(AssocTransformer(presets.rpe(d_model=16, n_ctx=32)), None, cfg, resume=True)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.get("nope-nope")
    assert set(recipes.names()) >= {"rpe", "ape", "full", "staged-rpe"}
    run = recipes.get("rpe")
    m_cfg, t_cfg = run.model, run.train
    assert m_cfg.identity_query and "blocks.0.attn.W_O" in m_cfg.frozen
    assert (t_cfg.optimizer, t_cfg.momentum, t_cfg.weight_decay, t_cfg.batch_size, t_cfg.lr) == (
        "sgd",
        0.9,
        1e-4,
        512,
        0.2,
    )


def test_unfreeze_pattern_must_match(task):
    model = AssocTransformer(presets.rpe(d_model=16, n_ctx=32))
    with pytest.raises(ValueError, match="matches no parameter"):
        train(model, task, TrainConfig(steps=1, unfreeze=((0, ("blocks.9.*",)),)), progress=False)
