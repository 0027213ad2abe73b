"""Benchmark of the trigger-task sampler (``TriggerBigramTask.sample``) against Python loops.

Run ``python benchmarks/bench_data.py`` (``--quick`` for a shorter run). It prints the numbers
and exits non-zero if a target is missed.

What is measured, all in the same run, single-threaded (``torch.set_num_threads(1)``, so the
numbers do not depend on how busy the other cores are):

1. **Speed.** Tokens per second of ``TriggerBigramTask.sample`` on the paper's batch
   (512 sequences x 256 positions, Tiny Shakespeare, k = 5 fixed triggers, uniform outputs),
   against two per-token Python implementations of the *same* process written below, timed in
   interleaved rounds (medians), so a change of machine load hits all methods alike:

   - ``straightforward``: the reference-code style, one ``numpy`` ``Generator.choice(p=...)``
     per token; **target: ratio >= 50**;
   - ``bisect``: a hand-tuned loop (``random.random`` + ``bisect`` on precomputed cumulative
     rows), reported for information, as the strongest plain-Python baseline we know.

   Baselines run on fewer sequences and are scaled per token (their cost is linear in tokens).

2. **Peak memory of one batch.** Torch's CPU allocations are invisible to ``tracemalloc``, so
   a fresh subprocess imports everything, warms up with a small batch (so code, kernels and the
   sampling tables are loaded), reads its current resident set size (``/proc/self/statm``), then
   samples one full batch and reads the lifetime peak RSS (``resource.getrusage``).
   ``peak - current`` is an **upper bound** on the extra memory the batch needed (it also counts
   any earlier, higher peak). It is compared with the bytes of the batch's output tensors
   (distinct storages: ``tokens``/``targets`` are views of one tensor, so they count once);
   **target: <= 10x**.

Example:
    $ python benchmarks/bench_data.py --quick
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from tlassoc.data import BigramModel, TriggerBigramTask

BATCH, SEQ_LEN, K = 512, 256, 5
SPEED_TARGET = 50.0
MEMORY_TARGET = 10.0


def straightforward_loop(bigram: BigramModel, n_seq: int, seq_len: int, k: int, seed: int):
    """The trigger process token by token with numpy's ``choice`` (reference-code style)."""
    rng = np.random.default_rng(seed)
    d = bigram.d_vocab
    unigram = bigram.unigram.double().numpy()
    unigram = unigram / unigram.sum()
    cond = bigram.conditional.double().numpy()
    cond = cond / cond.sum(1, keepdims=True)
    triggers = list(np.argsort(-bigram.unigram_counts.numpy(), kind="stable")[:k])
    out = []
    for _ in range(n_seq):
        outputs = [int(rng.choice(d)) for _ in triggers]
        seq = [int(rng.choice(d, p=unigram))]
        labels = []
        counts: dict[int, int] = {}
        while len(seq) <= seq_len:
            prev = seq[-1]
            if prev in triggers:
                counts[prev] = counts.get(prev, 0) + 1
                labels.append(counts[prev])
                seq.append(outputs[triggers.index(prev)])
            else:
                labels.append(0)
                seq.append(int(rng.choice(d, p=cond[prev])))
        out.append((seq, labels))
    return out


def bisect_loop(bigram: BigramModel, n_seq: int, seq_len: int, k: int, seed: int):
    """The same process with ``random.random`` and ``bisect`` on cumulative rows."""
    rng = random.Random(seed)
    d = bigram.d_vocab
    uni_cum = np.cumsum(bigram.unigram.double().numpy()).tolist()
    rows = [np.cumsum(r).tolist() for r in bigram.conditional.double().numpy()]
    triggers = [int(i) for i in np.argsort(-bigram.unigram_counts.numpy(), kind="stable")[:k]]
    out = []
    for _ in range(n_seq):
        forced = {t: rng.randrange(d) for t in triggers}
        prev = min(bisect.bisect_right(uni_cum, rng.random() * uni_cum[-1]), d - 1)
        seq, labels, counts = [prev], [], dict.fromkeys(triggers, 0)
        for _ in range(seq_len):
            if prev in forced:
                counts[prev] += 1
                labels.append(counts[prev])
                prev = forced[prev]
            else:
                labels.append(0)
                row = rows[prev]
                prev = min(bisect.bisect_right(row, rng.random() * row[-1]), d - 1)
            seq.append(prev)
        out.append((seq, labels))
    return out


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_speed(quick: bool) -> dict:
    """Interleaved rounds (vectorised, then both loops), medians per method.

    Interleaving keeps the ratios fair when the machine's load changes during the run.
    """
    bigram = BigramModel.tiny_shakespeare()
    task = TriggerBigramTask(bigram, n_triggers=K, batch_size=BATCH, seq_len=SEQ_LEN)
    gen = torch.Generator().manual_seed(0)
    rounds = 3 if quick else 7
    n_plain = 2 if quick else 4
    n_bisect = 16 if quick else 32
    task.sample(generator=gen)  # warm-up (tables, kernels)
    vec, plain, fast = [], [], []
    for r in range(rounds):
        vec.append(_seconds(lambda: task.sample(generator=gen)))
        plain.append(_seconds(lambda r=r: straightforward_loop(bigram, n_plain, SEQ_LEN, K, r)))
        fast.append(_seconds(lambda r=r: bisect_loop(bigram, n_bisect, SEQ_LEN, K, r)))
    vec_rate = BATCH * SEQ_LEN / statistics.median(vec)
    plain_rate = n_plain * SEQ_LEN / statistics.median(plain)
    bisect_rate = n_bisect * SEQ_LEN / statistics.median(fast)
    return {
        "vectorised_tokens_per_s": vec_rate,
        "vectorised_batch_ms": statistics.median(vec) * 1e3,
        "straightforward_tokens_per_s": plain_rate,
        "bisect_tokens_per_s": bisect_rate,
        "ratio_vs_straightforward": vec_rate / plain_rate,
        "ratio_vs_bisect": vec_rate / bisect_rate,
    }


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def memory_child() -> None:
    """Runs in a fresh subprocess: prints the batch's peak extra memory and output bytes."""
    torch.set_num_threads(1)
    task = TriggerBigramTask(BigramModel.tiny_shakespeare(), batch_size=BATCH, seq_len=SEQ_LEN)
    task.sample(seed=0, batch_size=8)  # warm-up: code paths, kernels, sampling tables
    before = _current_rss_bytes()
    if before is None:
        before = _peak_rss_bytes()
    batch = task.sample(seed=1)
    peak = _peak_rss_bytes()
    storages = {}
    for name in ("tokens", "targets", "labels", "triggers", "outputs"):
        tensor = getattr(batch, name)
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    nominal = sum(
        getattr(batch, n).numel() * getattr(batch, n).element_size()
        for n in ("tokens", "targets", "labels", "triggers", "outputs")
    )
    print(
        json.dumps({"extra": peak - before, "output": sum(storages.values()), "nominal": nominal})
    )


def measure_memory() -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["ratio"] = data["extra"] / data["output"]
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark TriggerBigramTask.sample")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and baseline tokens")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child()
        return 0
    torch.set_num_threads(1)
    speed = measure_speed(args.quick)
    memory = measure_memory()
    mib = 1024**2
    print(f"batch {BATCH} x {SEQ_LEN}, k = {K} fixed triggers, Tiny Shakespeare, 1 thread")
    print(
        f"vectorised sample        : {speed['vectorised_tokens_per_s'] / 1e6:8.2f} M tokens/s "
        f"({speed['vectorised_batch_ms']:.1f} ms per batch)"
    )
    print(
        f"straightforward loop     : {speed['straightforward_tokens_per_s'] / 1e6:8.4f} M tokens/s"
        f"   ratio {speed['ratio_vs_straightforward']:7.1f}x (target >= {SPEED_TARGET:.0f}x)"
    )
    print(
        f"bisect loop (tuned)      : {speed['bisect_tokens_per_s'] / 1e6:8.4f} M tokens/s"
        f"   ratio {speed['ratio_vs_bisect']:7.1f}x (information)"
    )
    print(
        f"peak extra memory        : {memory['extra'] / mib:8.2f} MiB (upper bound, RSS) vs "
        f"outputs {memory['output'] / mib:.2f} MiB ({memory['nominal'] / mib:.2f} MiB nominal)"
        f"   ratio {memory['ratio']:5.2f}x (target <= {MEMORY_TARGET:.0f}x)"
    )
    failed = []
    if speed["ratio_vs_straightforward"] < SPEED_TARGET:
        failed.append("speed")
    if memory["ratio"] > MEMORY_TARGET:
        failed.append("memory")
    print("FAILED: " + ", ".join(failed) if failed else "all targets met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
