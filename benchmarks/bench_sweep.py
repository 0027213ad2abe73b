"""Sweep benchmark: 4 trials through an embedded Ray on 2 cores vs one after another in one process.

The trials are the length-generalisation experiment's quick setting (both encodings) with
``--steps`` training steps (default 1000: trials of tens of seconds, as a real sweep's are; trials
of a few seconds do not pay for the workers' start, each of which imports torch and
TransformerLens), one trial per seed (``seeds=0,1,2,3``).

* ``one process``: ``experiment.measure`` of each trial's configuration in turn, in this
  process, on ``--threads`` torch threads (default 1: with torch's default of 2 threads on the
  2-core development machine, while other jobs ran, the same trials took 3 to 20 times longer);
* ``sweep``: :func:`tlassoc.sweep.run_trials` on an embedded Ray with ``--cpus`` CPUs, one CPU
  and one torch thread per trial. Its time includes the workers' imports of torch and tlassoc;
  Ray's start-up (``ray.init``) is timed and reported separately.

With one thread in one process, both runs produce the same per-seed numbers (checked here; wall
times aside). Target: sweep / one process <= 0.65.

Run: ``python benchmarks/bench_sweep.py [--steps N] [--cpus N] [--threads N]``; exits 1 if the
target is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch

from tlassoc.experiments import get
from tlassoc.experiments.framework import jsonable, without_times
from tlassoc.sweep import run_trials, split_seeds, start_ray

TARGET = 0.65


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per trial")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, one process")
    args = parser.parse_args()
    threads = args.threads
    exp = get("length_generalization")
    base = exp.quick_config().override({"train.steps": args.steps, "seeds": (0, 1, 2, 3)})
    configs = split_seeds(base)

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    alone = [exp.measure(c, progress=False) for c in configs]
    sequential = time.perf_counter() - t0

    import ray

    t0 = time.perf_counter()
    start_ray(num_cpus=args.cpus)
    startup = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            records = run_trials(exp, configs, out, cpus_per_trial=1, progress=False)
            swept = time.perf_counter() - t0
    finally:
        ray.shutdown()

    assert all(r.status == "done" for r in records), [r.error for r in records]
    if threads == 1:  # the same thread count as the trials: the same bits
        for a, r in zip(alone, records, strict=True):
            assert without_times(jsonable(a.per_seed)) == without_times(jsonable(r.result.per_seed))
    ratio = swept / sequential
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
        f"ray {ray.__version__}"
    )
    print(f"load average (1, 5, 15 min) at the end: {load}")
    print(f"4 trials ({args.steps} steps each, both encodings) on {args.cpus} CPUs")
    print(f"one process ({threads} torch threads): {sequential:7.1f} s")
    print(f"sweep (embedded Ray, 1 CPU per trial): {swept:7.1f} s")
    print(f"  each trial, one process: {[round(a.seconds, 1) for a in alone]} s")
    print(f"  each trial, in the sweep: {[round(r.result.seconds, 1) for r in records]} s")
    print(f"Ray start-up (ray.init, not included above): {startup:.1f} s")
    print(f"ratio sweep / one process: {ratio:.2f} (target <= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
