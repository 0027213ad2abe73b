"""Measure how long each recipe of ``tlassoc recipes`` takes to train on this machine.

Recipes whose whole run is estimated at <= ``--full-limit`` seconds are run to the end (with
the memory probes logged, as ``tlassoc train`` does); longer ones are timed over ``--steps``
optimizer steps after one warm-up step and the total is the measured seconds per step times the
recipe's step count (said so in the output). Writes ``tlassoc/data/recipe_times.json``, which
``tlassoc recipes`` prints.

Usage: ``python benchmarks/time_recipes.py [--threads 2] [--steps 5] [--full-limit 150]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tlassoc import AssocTransformer, recipes
from tlassoc._io import atomic_write_json
from tlassoc.data import make_task
from tlassoc.memory import probe_evaluator
from tlassoc.training import train

OUT = Path(__file__).parents[1] / "tlassoc" / "data" / "recipe_times.json"


def seconds_per_step(run, steps: int) -> float:
    task = make_task(run.task, batch_size=run.train.batch_size)
    short = run.train.replace(steps=1, log_every=0)
    model = AssocTransformer(run.model)
    train(model, task, short, progress=False)  # warm-up
    t0 = time.perf_counter()
    train(model, task, run.train.replace(steps=steps, log_every=0), progress=False)
    return (time.perf_counter() - t0) / steps


def full_run(run) -> float:
    task = make_task(run.task, batch_size=run.train.batch_size)
    t0 = time.perf_counter()
    train(AssocTransformer(run.model), task, run.train, progress=False,
          evaluators=[probe_evaluator(task)])  # fmt: skip
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--full-limit", type=float, default=150.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = {}
    for name in recipes.names():
        run = recipes.get(name)
        sps = seconds_per_step(run, args.steps)
        estimate = sps * run.train.steps
        if estimate <= args.full_limit:
            total, how = full_run(run), "full run"
        else:
            total, how = estimate, f"{args.steps} steps x {run.train.steps}"
        table[name] = {"seconds_per_step": sps, "steps": run.train.steps, "seconds": total,
                       "how": how}  # fmt: skip
        print(f"{name:12s} {sps:8.3f} s/step  {total:9.0f} s  ({how})", flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads"
    atomic_write_json(OUT, {"machine": machine, "how": "benchmarks/time_recipes.py",
                            "torch": torch.__version__, "recipes": table})  # fmt: skip
    print(f"written {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
