"""Fault injection: `tlassoc train` processes killed at random points resume bit-identically.

Every kill is followed by checks of what it left (the checkpoint a resume would use loads,
verifies its hashes and equals an uninterrupted run's state at its step; metrics parse), and
every run ends with a resume whose final weights, optimizer and data-generator state equal an
uninterrupted run's, bit for bit. Faults: SIGKILL, one SIGINT (Ctrl-C) and two SIGINTs in quick
succession, at seeded random times, during fresh runs, resumed runs and the resume of a run that
had already finished (which must write nothing). The test hook ``TLASSOC_FAULT_DELAY`` widens
each phase of a checkpoint write (files, rename, pointer switch, pruning) so that kills land in
all of them; the suite records which phase each kill interrupted.

Most processes are forked from a server that has imported tlassoc once (``_forkserver.py``;
each is a real process running ``tlassoc.cli.main``, killed by real signals), because importing
torch and TransformerLens takes several seconds per process; two tests start
``python -m tlassoc train`` itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _faults import (
    ROOT,
    TINY,
    WAIT_S,
    Reference,
    Server,
    alive,
    check_after_kill,
    check_finished,
    child_env,
    kill,
    phase_after_kill,
    snapshot,
    wait_for_lock,
)

from tlassoc._tl import TL_MAJOR

pytestmark = pytest.mark.skipif(
    TL_MAJOR != 4,
    reason="the kill suite runs in the TransformerLens 4 environment only: what it tests does "
    "not depend on TransformerLens, and one environment keeps it short",
)

SEED = 20250101
DELAY = "0.02"  # seconds TLASSOC_FAULT_DELAY sleeps between the phases of a checkpoint write
MIN_KILLS = 30
KINDS = {"kill": "SIGKILL", "int": "SIGINT", "int2": "two SIGINTs"}
TARGETS = (
    "writing the checkpoint files",
    "after the rename, before the pointer switch",
    "pruning older checkpoints",
)
SUMMARY: dict = {"kills": Counter(), "phases": Counter(), "seconds": {}, "faults sent": 0}


def _lines_ok(text: str) -> bool:
    lines = text.splitlines()
    return (
        bool(lines)
        and all(line.startswith("tlassoc: ") for line in lines)
        and ("Traceback" not in text)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("logs"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory) -> Reference:
    """An uninterrupted run with a checkpoint at every step, plus the state at step 0."""
    out = tmp_path_factory.mktemp("reference")
    argv = [*TINY, "--out", str(out), "--train.checkpoint_every", "1"]
    rc, child = server.run([*argv, "--train.keep_checkpoints", "1000"])
    assert rc == 0, child.err()
    ref = Reference.read(out, 0.0)
    zero = tmp_path_factory.mktemp("reference0")
    rc, child = server.run([*TINY, "--out", str(zero), "--train.steps", "0"])
    assert rc == 0, child.err()
    ref.states.update(Reference.read(zero, 0.0).states)
    assert sorted(ref.states) == list(range(41))
    # how long a run with the fault hook takes once it holds the lock (sets the kill times)
    timed = tmp_path_factory.mktemp("timed")
    child = server.start([*TINY, "--out", str(timed)], TLASSOC_FAULT_DELAY=DELAY)
    assert wait_for_lock(timed, child.pid)
    start = time.monotonic()
    assert server.wait(child) == 0, child.err()
    ref.seconds = time.monotonic() - start
    check_finished(timed, ref)
    SUMMARY["seconds"]["uninterrupted run with the hook"] = round(ref.seconds, 2)
    return ref


def _fault(rng: random.Random, number: int) -> tuple[str, str | None]:
    """The ``number``-th fault of a run: (kind, target phase or ``None`` for a random time).
    Every second one is a SIGKILL as soon as the files show a phase of a checkpoint write, the
    phases in turn; the others come at a random time, of a random kind."""
    if number % 2:
        return "kill", TARGETS[(number // 2) % len(TARGETS)]
    return rng.choice(list(KINDS)), None


def _kill_once(server, ref, out, argv, fault, rng):
    """Start ``argv`` and send ``fault``; returns (exit code, child)."""
    kind, target = fault
    child = server.start(argv, TLASSOC_FAULT_DELAY=DELAY)
    if kind == "kill" and target is None and rng.random() < 0.1:
        time.sleep(rng.uniform(0.0, 0.05))  # during start-up, before the lock
    elif wait_for_lock(out, child.pid):
        if target is None:
            time.sleep(rng.uniform(0.0, 1.1 * ref.seconds))
        else:
            while alive(child.pid) and phase_after_kill(out) != target:
                time.sleep(0.002)
    kill(child.pid, kind, rng)
    return server.wait(child), child


def _episode(server, ref, out: Path, rng: random.Random, kills_wanted: int) -> int:
    """A run killed up to ``kills_wanted`` times, resumed to the end, then its finished resume
    killed once; returns the number of kills that hit a running process."""
    argv, resume, hits, rc = [*TINY, "--out", str(out)], False, 0, None
    while hits < kills_wanted:
        fault = _fault(rng, SUMMARY["faults sent"])
        SUMMARY["faults sent"] += 1
        kind = fault[0]
        rc, child = _kill_once(server, ref, out, argv + ["--resume"] * resume, fault, rng)
        resume = True
        if rc == 0:
            break  # it finished before the fault arrived
        assert rc == (-signal.SIGKILL if kind == "kill" else 130), (rc, child.err())
        if kind != "kill":
            assert _lines_ok(child.err()), child.err()
        hits += 1
        SUMMARY["kills"][f"{KINDS[kind]} during a run"] += 1
        SUMMARY["phases"][phase_after_kill(out)] += 1
        check_after_kill(out, ref)
    if rc != 0:
        rc, child = server.run([*argv, "--resume"])
        assert rc == 0, child.err()
    check_finished(out, ref)
    return hits + _kill_finished(server, ref, out, argv, rng)


def _kill_finished(server, ref, out, argv, rng) -> int:
    """Kill the resume of a finished run; nothing may change, before or after a clean resume."""
    before = snapshot(out)
    kind = rng.choice(list(KINDS))
    child = server.start([*argv, "--resume"])
    time.sleep(rng.uniform(0.0, 0.3))
    kill(child.pid, kind, rng)
    rc = server.wait(child)
    hit = rc != 0
    if hit:
        assert rc == (-signal.SIGKILL if kind == "kill" else 130), (rc, child.err())
        SUMMARY["kills"][f"{KINDS[kind]} during the resume of a finished run"] += 1
    assert snapshot(out) == before
    rc, child = server.run([*argv, "--resume"])
    assert rc == 0, child.err()
    assert snapshot(out) == before, "resuming a finished run rewrote a file"
    check_finished(out, ref)
    return int(hit)


def test_kills_at_random_points_resume_bit_identical(server, reference, tmp_path):
    rng = random.Random(SEED)
    start, total, episode = time.monotonic(), 0, 0
    while total < MIN_KILLS + 6 and episode < 20:
        total += _episode(server, reference, tmp_path / f"run{episode}", rng, kills_wanted=3)
        episode += 1
    SUMMARY["seconds"]["kill episodes"] = round(time.monotonic() - start, 1)
    SUMMARY["episodes"] = episode
    print(f"\nfault summary: {json.dumps(SUMMARY, default=dict)}")
    if os.environ.get("TLASSOC_FAULT_SUMMARY"):
        Path(os.environ["TLASSOC_FAULT_SUMMARY"]).write_text(json.dumps(SUMMARY, default=dict))
    assert total >= MIN_KILLS
    assert set(TARGETS) <= set(SUMMARY["phases"]), SUMMARY["phases"]  # every phase was hit


def _python_m(argv: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tlassoc", *argv],
        cwd=ROOT,
        env={**os.environ, **child_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_a_second_process_on_the_same_folder_gets_the_lock_error(server, reference, tmp_path):
    out = tmp_path / "shared"
    first = server.start([*TINY, "--out", str(out)], TLASSOC_FAULT_DELAY="2.0")  # a slow run
    assert wait_for_lock(out, first.pid)
    second = _python_m([*TINY, "--out", str(out), "--resume"])
    _, err = second.communicate(timeout=WAIT_S)
    assert alive(first.pid), "the first run ended before the second asked for the lock"
    assert second.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("tlassoc: error: output folder") and f"pid {first.pid} on " in err, err
    assert "tlassoc train ape" in err, err  # the holder's command is named
    kill(first.pid, "kill", None)
    assert server.wait(first) == -signal.SIGKILL
    SUMMARY["kills"]["SIGKILL of the lock holder"] += 1
    check_after_kill(out, reference)
    rc, child = server.run([*TINY, "--out", str(out), "--resume"])
    assert rc == 0, child.err()
    check_finished(out, reference)


def test_ctrl_c_while_a_real_process_starts(reference, tmp_path):
    """``python -m tlassoc train``: Ctrl-C while torch is being imported prints one line; a
    real ``--resume`` process then finishes bit-identical to the reference."""
    out = tmp_path / "startup"
    proc = _python_m([*TINY, "--out", str(out)])
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, (proc.returncode, err)
    assert _lines_ok(err) and "interrupted" in err.splitlines()[-1], err
    SUMMARY["kills"]["SIGINT while a real process imports torch"] += 1
    check_after_kill(out, reference)
    resumed = _python_m([*TINY, "--out", str(out), "--resume"])
    _, err = resumed.communicate(timeout=WAIT_S)
    assert resumed.returncode == 0, err
    check_finished(out, reference)
