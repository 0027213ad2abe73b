"""Measure how long each experiment's default run takes on this machine (``tlassoc reproduce
--all``) and store the times that ``tlassoc experiments`` prints.

Runs ``tlassoc reproduce --all --out OUT`` (or, with ``--reuse``, reads a finished ``OUT``), then
writes ``tlassoc/data/experiment_times.json``: per experiment its wall time (seeds and other
independent parts in parallel on a local Ray, as ``tlassoc reproduce`` runs them), the number of
parts and the machine, plus the whole command's wall time and the load average before and
after (a loaded machine gives longer times; say so where the numbers are quoted).

Usage: ``python benchmarks/time_experiments.py --out DIR [--reuse [--total-seconds S]]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tlassoc import experiments
from tlassoc._io import atomic_write_json

OUT = Path(__file__).parents[1] / "tlassoc" / "data" / "experiment_times.json"


def collect(folder: Path) -> dict[str, dict]:
    """``{name: {"seconds", "parts", "all_claims_hold"}}`` from a ``reproduce --all`` folder."""
    table = {}
    for name in experiments.names():
        path = folder / name / "results.json"
        if not path.exists():
            print(f"{name}: no results.json (failed or not run)", file=sys.stderr)
            continue
        data = json.loads(path.read_text())
        table[name] = {
            "seconds": round(data["seconds"], 1),
            "parts": data["environment"].get("trials", 1),
            "all_claims_hold": data["all_claims_hold"],
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the reproduce --all output folder")
    parser.add_argument("--reuse", action="store_true", help="read a finished folder; run nothing")
    parser.add_argument(
        "--total-seconds", type=float, help="with --reuse: the measured wall time of that run"
    )
    args = parser.parse_args()
    out = Path(args.out)
    load_before = os.getloadavg()
    wall = args.total_seconds
    if not args.reuse:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "tlassoc", "reproduce", "--all", "--out", str(out)]
        done = subprocess.run([*cmd, "--no-progress"])
        wall = time.perf_counter() - t0
        if done.returncode not in (0, 1):  # 1: some experiment failed; its time is missing
            return done.returncode
    table = collect(out)
    for name, row in table.items():
        print(f"{name:24s} {row['seconds']:8.0f} s  ({row['parts']} parts)")
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    data = {
        "machine": machine,
        "how": "benchmarks/time_experiments.py (tlassoc reproduce --all)",
        "total_seconds": None if wall is None else round(wall, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "experiments": table,
    }
    atomic_write_json(OUT, data)
    print(f"written {OUT}" + ("" if wall is None else f"; reproduce --all took {wall:.0f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
