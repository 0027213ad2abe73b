"""Test-only experiments for tests/integration/test_sweep.py: the length-generalisation
experiment with a trial that always fails, one that fails on its first attempt, and trials that
wait for a gate file. Ray workers import this module by name (its folder is put on PYTHONPATH
before Ray starts), so it must stay importable on its own."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tlassoc.experiments.length_generalization import LengthGenExperiment


class FlakyLengthGen(LengthGenExperiment):
    """``model.d_model == fail_d`` always raises; ``model.d_model == flaky_d`` raises on its
    first attempt. Every call appends ``d_model seed`` to ``log``."""

    name = "test_flaky_lengthgen"

    def __init__(self, log: str, fail_d: int = 24, flaky_d: int = 32):
        self.log, self.fail_d, self.flaky_d = log, fail_d, flaky_d

    def measure(self, config, progress=True):
        d, seed = config.model.d_model, config.seeds[0]
        with open(self.log, "a") as fh:
            fh.write(f"{d} {seed}\n")
        if d == self.fail_d:
            raise RuntimeError(f"d_model {d} is refused by this test experiment")
        marker = Path(self.log).with_suffix(f".failed-once-{d}-{seed}")
        if d == self.flaky_d and not marker.exists():
            marker.touch()
            raise RuntimeError("first attempt fails")
        return super().measure(config, progress)


class GatedLengthGen(LengthGenExperiment):
    """Seeds >= 1 wait until the file ``gate`` (default: ``$TLASSOC_TEST_GATE``, read where the
    experiment is made) exists, and give up when their Ray node is gone, so a sweep can be
    stopped or killed while they run."""

    name = "test_gated_lengthgen"

    def __init__(self, gate: str | None = None):
        self.gate = gate or os.environ["TLASSOC_TEST_GATE"]

    def measure(self, config, progress=True):
        gate = Path(self.gate)
        parent = os.getppid()
        while config.seeds[0] >= 1 and not gate.exists():
            if os.getppid() != parent:
                raise RuntimeError("the Ray node that ran this trial is gone")
            time.sleep(0.1)
        return super().measure(config, progress)
