"""Training benchmark: steps/s and time to induction head, tlassoc (RPE, APE) vs plain PyTorch.

Three models trained in the same run on the same batches of the Tiny Shakespeare trigger task
(length 128, batch 64, d_model 64, AdamW lr 0.05, loss on label >= 2; the settings of
``tlassoc reproduce``):

* ``plain``: :class:`baseline_model.PlainSimplifiedTransformer` (same math as ``presets.ape()``)
  in a hand-written loop, advanced one step after each tlassoc step (interleaved, so load on a
  shared machine hits both alike);
* ``tlassoc APE`` / ``tlassoc RPE``: :func:`tlassoc.training.train` (with its per-step bookkeeping,
  progress bar off, no probes).

Steps/s is measured over the whole run (sampling included). Time to induction head: the first
evaluation (every ``--eval-every`` steps, 64 held-out sequences) with in-context accuracy
(label >= 2) >= 0.9, in steps and in seconds of training (evaluation time excluded).
Target: tlassoc APE steps/s within 1.15x of plain (``plain / APE <= 1.15``).

Run: ``python benchmarks/bench_training.py [--steps N] [--threads N]``; exits 1 if the target is
missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from baseline_model import PlainSimplifiedTransformer  # noqa: E402

from tlassoc import AssocTransformer, presets  # noqa: E402
from tlassoc.config import TrainConfig  # noqa: E402
from tlassoc.data import BigramModel, TriggerBigramTask  # noqa: E402
from tlassoc.training import loss_mask, masked_loss, train  # noqa: E402

SEQ, BATCH, D_MODEL, LR = 128, 64, 64, 0.05


def _icl_acc(model, batch) -> float:
    with torch.no_grad():
        logits = model(batch.tokens)
    mask = batch.labels >= 2
    return float(((logits.argmax(-1) == batch.targets) & mask).sum() / mask.sum())


class PlainRun:
    """The plain-PyTorch baseline, advanced one training step at a time."""

    def __init__(self, task, eval_batch, eval_every: int):
        self.model = PlainSimplifiedTransformer(d_model=D_MODEL, n_ctx=SEQ)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0.0
        )
        self.gen = torch.Generator().manual_seed(0)
        self.task, self.eval_batch, self.eval_every = task, eval_batch, eval_every
        self.step, self.train_s, self.hit = 0, 0.0, None

    def advance(self) -> None:
        t0 = time.perf_counter()
        batch = self.task.sample(generator=self.gen)
        mask = loss_mask(batch.labels, "in_context")
        loss = masked_loss(self.model(batch.tokens), batch.targets, mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.train_s += time.perf_counter() - t0
        self.step += 1
        if self.hit is None and self.step % self.eval_every == 0:
            if _icl_acc(self.model, self.eval_batch) >= 0.9:
                self.hit = (self.step, self.train_s)


def run_pair(enc: str, task, eval_batch, steps: int, eval_every: int) -> dict:
    """Train tlassoc (``enc``) with :func:`train` and the plain baseline, interleaved step by step
    (the baseline steps inside tlassoc's callback), so machine noise hits both alike."""
    make = presets.rpe if enc == "rpe" else presets.ape
    model = AssocTransformer(make(d_model=D_MODEL, n_ctx=SEQ))
    cfg = TrainConfig(
        steps=steps,
        batch_size=BATCH,
        optimizer="adamw",
        lr=LR,
        weight_decay=0.0,
        loss_on="in_context",
        log_every=0,
        seed=0,
    )
    plain = PlainRun(task, eval_batch, eval_every)
    state = {"train_s": 0.0, "t0": time.perf_counter(), "hit": None}

    def callback(step, m, loss):
        state["train_s"] += time.perf_counter() - state["t0"]
        if state["hit"] is None and step % eval_every == 0 and _icl_acc(m, eval_batch) >= 0.9:
            state["hit"] = (step, state["train_s"])
        plain.advance()
        state["t0"] = time.perf_counter()

    train(model, task, cfg, callback=callback, progress=False)
    return {
        f"tlassoc {enc.upper()}": {
            "steps_per_s": steps / state["train_s"],
            "induction": state["hit"],
        },
        f"plain (paired with {enc.upper()})": {
            "steps_per_s": steps / plain.train_s,
            "induction": plain.hit,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = TriggerBigramTask(BigramModel.tiny_shakespeare(), seq_len=SEQ, batch_size=BATCH)
    eval_batch = task.sample(seed=12345)
    results = {
        **run_pair("ape", task, eval_batch, args.steps, args.eval_every),
        **run_pair("rpe", task, eval_batch, args.steps, args.eval_every),
    }
    print(f"{'model':<24} {'steps/s':>8} {'induction (steps, s)':>22}")
    for name, r in results.items():
        hit = (
            "not reached"
            if r["induction"] is None
            else (f"{r['induction'][0]}, {r['induction'][1]:.1f}")
        )
        print(f"{name:<24} {r['steps_per_s']:>8.2f} {hit:>22}")
    ratio = (
        results["plain (paired with APE)"]["steps_per_s"] / results["tlassoc APE"]["steps_per_s"]
    )
    print(f"plain / tlassoc APE steps/s ratio: {ratio:.2f} (target <= 1.15)")
    return 0 if ratio <= 1.15 else 1


if __name__ == "__main__":
    sys.exit(main())
