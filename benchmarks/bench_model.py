"""Foundation benchmark: one forward+backward training step of the simplified two-layer model.

Batch 64, length 256, d_model 128, 2 layers, 1 head, vocabulary 65, CPU. Three models, timed in
the same run with interleaved repeats (median):

* ``plain``: :class:`baseline_model.PlainSimplifiedTransformer`, the same math in plain PyTorch;
* ``tlassoc APE``: ``AssocTransformer(presets.ape(...))``;
* ``tlassoc RPE``: ``AssocTransformer(presets.rpe(...))``.

* ``tlassoc APE, hooked path``: the same model with ``fast_attention=False`` (the step-by-step
  path every hook sees; reported, no target).

Training runs through the fused attention path whenever nothing is hooked. Targets: APE / plain
<= 0.9 and RPE / APE <= 1.3. Peak memory of one step (growth of the
process's resident set, each model in a fresh process) is reported for all three.

Run: ``python benchmarks/bench_model.py [--repeats N] [--threads N]``; exits 1 if a target is
missed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds, peak_rss_mib  # noqa: E402
from baseline_model import PlainSimplifiedTransformer  # noqa: E402

from tlassoc import AssocTransformer, presets  # noqa: E402

BATCH, SEQ, D_MODEL = 64, 256, 128

_MEMORY_CODE = """
import sys, torch
sys.path.insert(0, ".")
from baseline_model import PlainSimplifiedTransformer
from tlassoc import AssocTransformer, presets
torch.set_num_threads({threads})
def setup():
    global model, tokens
    model = {ctor}
    tokens = torch.randint(0, 65, ({batch}, {seq}), generator=torch.Generator().manual_seed(0))
def step():
    logits = model(tokens)
    flat_logits, flat_targets = logits[:, :-1].reshape(-1, 65), tokens[:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(flat_logits, flat_targets)
    loss.backward()
"""

CONSTRUCTORS = {
    "plain": f"PlainSimplifiedTransformer(d_model={D_MODEL}, n_ctx={SEQ})",
    "tlassoc APE": f"AssocTransformer(presets.ape(d_model={D_MODEL}, n_ctx={SEQ}))",
    "tlassoc RPE": f"AssocTransformer(presets.rpe(d_model={D_MODEL}, n_ctx={SEQ}))",
    "APE, hooked path": (
        f"AssocTransformer(presets.ape(d_model={D_MODEL}, n_ctx={SEQ}, fast_attention=False))"
    ),
}


def make_step(model: torch.nn.Module, tokens: torch.Tensor):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
        )
        loss.backward()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    tokens = torch.randint(0, 65, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    models = {
        "plain": PlainSimplifiedTransformer(d_model=D_MODEL, n_ctx=SEQ),
        "tlassoc APE": AssocTransformer(presets.ape(d_model=D_MODEL, n_ctx=SEQ)),
        "tlassoc RPE": AssocTransformer(presets.rpe(d_model=D_MODEL, n_ctx=SEQ)),
        "APE, hooked path": AssocTransformer(
            presets.ape(d_model=D_MODEL, n_ctx=SEQ, fast_attention=False)
        ),
    }
    times = median_seconds({k: make_step(m, tokens) for k, m in models.items()}, args.repeats)
    memory = {
        name: peak_rss_mib(
            _MEMORY_CODE.format(threads=args.threads, ctor=ctor, batch=BATCH, seq=SEQ)
        )
        for name, ctor in CONSTRUCTORS.items()
    }
    print(
        f"forward+backward, batch {BATCH}, length {SEQ}, d_model {D_MODEL}, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    for name in models:
        print(
            f"  {name:16s} {times[name] * 1e3:8.1f} ms/step   peak memory of a step "
            f"{memory[name]:7.1f} MiB"
        )
    ratios = {
        "tlassoc APE / plain": (times["tlassoc APE"] / times["plain"], 0.9),
        "tlassoc RPE / tlassoc APE": (times["tlassoc RPE"] / times["tlassoc APE"], 1.3),
    }
    ok = True
    for name, (ratio, target) in ratios.items():
        passed = ratio <= target
        ok &= passed
        print(
            f"  {name:26s} ratio {ratio:5.3f}  (target <= {target})  {'PASS' if passed else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
