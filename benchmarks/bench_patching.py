"""Benchmark: per-position head-output patching, tlassoc (batched) vs transformer_lens.patching.

Same model (a 2-layer tlassoc RPE model, 1 head per layer by default), same prompts (length 256),
same process. Each repeat runs ``transformer_lens.patching.get_act_patch_attn_head_out_by_pos``
and :func:`tlassoc.patching.patch_heads` (``act="z", per_position=True``) back to back
(interleaved, so a change in the machine's load hits both alike); the ratio of the medians is
reported, with the max abs difference of the two results. Exits with status 1 when the numbers
differ by more than 1e-5 or the ratio is below ``--min-ratio`` (default 10).

    python benchmarks/bench_patching.py [--heads 1] [--d-model 64] [--length 256] [--repeats 3]
        [--threads 1]

Both run with the same number of torch threads (default 1: on a shared, loaded machine a
second thread mostly waits for a busy core; pass ``--threads 0`` for torch's default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars (they would slow TL's loop)

import torch  # noqa: E402
from transformer_lens import patching as tlp  # noqa: E402

from tlassoc import AssocTransformer, presets  # noqa: E402
from tlassoc import patching as P  # noqa: E402


def build(args: argparse.Namespace) -> tuple[AssocTransformer, P.InductionPrompts]:
    """The model and the clean/corrupted prompts (random blocks; the 65-token vocabulary is too
    small for distinct tokens at length 256, so blocks may repeat tokens)."""
    cfg = presets.rpe(
        d_model=args.d_model,
        n_ctx=args.length,
        n_heads=args.heads,
        d_head=args.d_model // args.heads,
        seed=0,
    )
    model = AssocTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    half = args.length // 2
    block = torch.randint(0, cfg.d_vocab, (args.samples, half), generator=gen)
    fresh = torch.randint(0, cfg.d_vocab, (args.samples, half), generator=gen)
    prompts = P.InductionPrompts(
        torch.cat([block, block], 1), torch.cat([fresh, block], 1), half, 0
    )
    return model, prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-ratio", type=float, default=10.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for both (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, prompts = build(args)
    metric = P.induction_logprob_metric(prompts)

    def run_tl() -> torch.Tensor:
        _, cache = model.run_with_cache(prompts.clean)
        return tlp.get_act_patch_attn_head_out_by_pos(
            model, prompts.corrupted, cache, lambda lg: metric(lg).mean()
        )

    def run_ours() -> torch.Tensor:
        return P.patch_heads(model, prompts, metric, act="z", per_position=True).values

    run_ours()  # warm-up (first-call allocations), both
    run_tl()
    t_tl, t_ours, diffs = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        theirs = run_tl()
        t_tl.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = run_ours()
        t_ours.append(time.perf_counter() - start)
        diffs.append((ours - theirs).abs().max().item())
    tl_s, ours_s = statistics.median(t_tl), statistics.median(t_ours)
    ratio = tl_s / ours_s
    diff = max(diffs)
    n = theirs.numel()
    print(f"patches: {n} (layers x positions x heads), length {prompts.clean.shape[1]}")
    print(f"torch threads: {torch.get_num_threads()}, repeats: {args.repeats} (interleaved)")
    print(f"transformer_lens.patching: {tl_s:.3f} s (median; all: {[round(t, 3) for t in t_tl]})")
    print(
        f"tlassoc batched:           {ours_s:.3f} s (median; all: {[round(t, 3) for t in t_ours]})"
    )
    print(f"speed ratio: {ratio:.1f}x   max abs difference: {diff:.2e}")
    if diff > 1e-5:
        print(f"FAIL: max abs difference {diff:.2e} > 1e-5")
        return 1
    if ratio < args.min_ratio:
        print(f"FAIL: speed ratio {ratio:.1f}x < {args.min_ratio}x")
        return 1
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
