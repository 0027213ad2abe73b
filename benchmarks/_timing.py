"""Shared helpers for the benchmarks: interleaved repeated timings and peak memory."""

from __future__ import annotations

import gc
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path


def median_seconds(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median wall time of each function, calls interleaved so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_rss_mib(code: str) -> float:
    """Peak resident-memory growth (MiB) of one ``step()`` in a fresh Python process.

    ``code`` must define ``setup()`` (build the model and inputs) and ``step()``. After ``setup()``
    the kernel's high-water mark is reset (``/proc/self/clear_refs``, Linux), so the result is
    ``VmHWM`` after ``step()`` minus ``VmRSS`` before it: what one step allocates on top of the
    model and its inputs, torch CPU tensors included (which ``tracemalloc`` cannot see). There is
    no warm-up step: memory freed by one would be reused from the allocator's cache and hide the
    step's real peak.
    """
    script = code + textwrap.dedent("""
        import gc, sys
        def _status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1])
        setup()
        gc.collect()
        open("/proc/self/clear_refs", "w").write("5")
        before = _status("VmRSS:")
        step()
        sys.stdout.write(str((_status("VmHWM:") - before) / 1024))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(Path(__file__).parent),
    )
    return float(out.stdout.strip().splitlines()[-1])
