"""Start-up time: ``import tlassoc`` and ``tlassoc --help``, each in a fresh interpreter.

Run ``python benchmarks/bench_import.py`` (``--repeats N``, default 5). Each command runs ``N``
times in a new subprocess (interleaved, so a change of machine load hits both alike); the median
wall time is reported together with whether torch was imported. Exit status 1 when a target is
missed:

* ``tlassoc --help`` (``python -m tlassoc --help``): median < 1 s, and torch is not imported;
* ``import tlassoc``: median < 1 s, and torch is not imported (names load on first use).

Example:
    $ python benchmarks/bench_import.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

TARGET_SECONDS = 1.0

#: Each probe prints whether torch ended up imported.
PROBES = {
    "import tlassoc": "import sys, tlassoc; print(int('torch' in sys.modules))",
    "tlassoc --help": (
        "import sys, contextlib, io\n"
        "from tlassoc.cli import main\n"
        "sys.argv = ['tlassoc', '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(int('torch' in sys.modules))"
    ),
}


def run_once(code: str) -> tuple[float, bool]:
    """Wall seconds of one fresh interpreter running ``code``, and whether it imported torch."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    seconds = time.perf_counter() - start
    return seconds, out.stdout.strip().splitlines()[-1] == "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}; expected >= 1")
    times: dict[str, list[float]] = {name: [] for name in PROBES}
    torch_loaded: dict[str, bool] = {}
    run_once("print(0)")  # warm the file cache for the interpreter itself
    for _ in range(args.repeats):
        for name, code in PROBES.items():
            seconds, loaded = run_once(code)
            times[name].append(seconds)
            torch_loaded[name] = torch_loaded.get(name, False) or loaded
    baseline = statistics.median(run_once("print(0)")[0] for _ in range(args.repeats))
    ok = True
    rows = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        met = median < TARGET_SECONDS and not torch_loaded[name]
        ok &= met
        rows[name] = {
            "median_s": round(median, 3),
            "min_s": round(min(ts), 3),
            "torch_imported": torch_loaded[name],
            "target": f"< {TARGET_SECONDS} s, no torch",
            "met": met,
        }
    if args.json:
        print(json.dumps({"python_startup_s": round(baseline, 3), **rows}, indent=2))
    else:
        print(f"bare interpreter start-up: median {baseline:.3f} s ({args.repeats} runs)")
        for name, r in rows.items():
            print(
                f"{name:16s} median {r['median_s']:.3f} s (min {r['min_s']:.3f} s), "
                f"torch imported: {r['torch_imported']}, target {r['target']}: "
                f"{'met' if r['met'] else 'MISSED'}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
