"""Helpers of the fault-injection suite: a process server, kills, and on-disk checks."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tlassoc._io import LOCK_FILE, LOCK_INFO_FILE
from tlassoc.training import latest_checkpoint, load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("_forkserver.py")
WAIT_S = 300.0  # generous: the machine may be busy

#: The tiny run every kill test trains (40 steps, a checkpoint every 3, metrics every 5).
TINY = [
    "train", "ape", "--model.d_model", "16", "--task.seq_len", "16", "--train.batch_size", "4",
    "--train.steps", "40", "--train.checkpoint_every", "3", "--train.log_every", "5",
    "--no-progress",
]  # fmt: skip
KEEP = 2  # the ape recipe keeps two checkpoints


def child_env(**extra: str) -> dict[str, str]:
    """Environment of every process the suite starts: one thread, offline."""
    env = {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.update(extra)
    return env


@dataclass
class Child:
    pid: int
    stdout: Path
    stderr: Path

    def err(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""


class Server:
    """The fork server of ``_forkserver.py`` (tlassoc imported once, one child per run)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **child_env()},
        )

    def _ask(self, cmd: dict, timeout: float = WAIT_S) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            if cmd["op"] == "wait":
                os.kill(cmd["pid"], signal.SIGKILL)
                self.proc.stdout.readline()
            raise AssertionError(f"no answer to {cmd} within {timeout} s")
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], **env: str) -> Child:
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        pid = self._ask(
            {"op": "run", "argv": argv, "env": env, "stdout": str(out), "stderr": str(err)}
        )["pid"]
        return Child(pid, out, err)

    def wait(self, child: Child) -> int:
        return self._ask({"op": "wait", "pid": child.pid})["rc"]

    def run(self, argv: list[str], **env: str) -> tuple[int, Child]:
        child = self.start(argv, **env)
        return self.wait(child), child

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def wait_for_lock(out: Path, pid: int, timeout: float = WAIT_S) -> bool:
    """Wait until process ``pid`` holds the lock of ``out`` (its sidecar names it); ``False``
    if the process ended first."""
    info = out / LOCK_INFO_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(info.read_text())["pid"] == pid:
                return True
        except (OSError, ValueError, KeyError):
            pass
        if not alive(pid):
            return False
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not take the lock of {out} within {timeout} s")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a child of the server that ended is a zombie until reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill(pid: int, kind: str, rng) -> None:
    """Send the fault: ``kill`` (SIGKILL), ``int`` (one SIGINT) or ``int2`` (two SIGINTs)."""
    try:
        if kind == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGINT)
            if kind == "int2":
                time.sleep(rng.uniform(0.0, 0.03))
                os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        pass


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Reference:
    """An uninterrupted run with a checkpoint at every step."""

    states: dict[int, tuple[str, str]] = field(default_factory=dict)  # step -> file hashes
    metrics: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def read(cls, out: Path, seconds: float) -> Reference:
        ref = cls(seconds=seconds)
        for folder in sorted((out / "checkpoints").glob("step-*")):
            ck = json.loads((folder / "train_state.json").read_text())
            ref.states[ck["step"]] = state_hashes(folder)
        ref.metrics = read_metrics(out)
        return ref


def tensors_digest(path: Path) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes, bytes). Not of the file:
    safetensors writes its metadata in hash-map order, which differs between processes."""
    import torch
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, t in sorted(load_file(path).items()):
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_hashes(folder: Path) -> tuple[str, str]:
    """What must be bit-identical: the weights and the optimizer + data-generator state."""
    return tensors_digest(folder / "model.safetensors"), tensors_digest(
        folder / "train_state.safetensors"
    )


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def phase_after_kill(out: Path) -> str:
    """Which phase of a checkpoint write the files show a kill interrupted (or ``between``)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return "before the first checkpoint"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if any(".partial-" in n for n in names):
        return "writing the checkpoint files"
    complete = [n for n in names if all((root / n / f).is_file() for f in CKPT_FILES)]
    pointer = (
        json.loads((root / "latest.json").read_text())["checkpoint"]
        if (root / "latest.json").is_file()
        else None
    )
    if complete and pointer != complete[-1]:
        return "after the rename, before the pointer switch"
    if len(complete) != len(names) or len(complete) > KEEP:
        return "pruning older checkpoints"
    return "between checkpoint writes"


CKPT_FILES = ("model.safetensors", "config.json", "train_state.safetensors", "train_state.json")


def check_after_kill(out: Path, ref: Reference) -> int | None:
    """The files a kill left are consistent: the checkpoint to resume loads, verifies and equals
    the reference's at its step; metrics parse and are a prefix of the reference's. Returns the
    checkpoint's step (``None``: none yet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a kill must never leave a broken latest.json
        folder = latest_checkpoint(out)
    records = read_metrics(out)
    steps = [r["step"] for r in records]
    ref_steps = [r["step"] for r in ref.metrics]
    assert steps == ref_steps[: len(steps)], (steps, ref_steps)
    if folder is None:
        return None
    step = load_checkpoint(folder)["step"]
    assert state_hashes(folder) == ref.states[step], f"{folder} differs from the reference"
    return step


def check_finished(out: Path, ref: Reference) -> None:
    """A completed run: final state bit-identical to the reference, same metrics (but the
    timings), the two newest checkpoints and nothing left over."""
    folder = latest_checkpoint(out)
    assert folder is not None and load_checkpoint(folder)["step"] == 40
    assert state_hashes(folder) == ref.states[40]
    assert without_seconds(read_metrics(out)) == without_seconds(ref.metrics)
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [
        "latest.json", "step-00000039", "step-00000040"
    ], sorted(p.name for p in root.iterdir())  # fmt: skip
    left = {p.name for p in out.iterdir()} - {LOCK_FILE}  # filelock may keep its (empty) file
    assert left == {"checkpoints", "metrics.jsonl", "run.json"}, left


def snapshot(out: Path) -> dict[str, tuple[str, int, int]]:
    """Every file's hash, modification time and inode (lock files aside, including a temporary
    copy of the lock's holder record that a kill can leave behind: it is not run state, and
    the next run removes it)."""
    snap = {}
    for p in sorted(out.rglob("*")):
        lock_tmp = p.name.startswith(f".{LOCK_INFO_FILE}.") and p.name.endswith(".tmp")
        if p.is_file() and p.name not in (LOCK_FILE, LOCK_INFO_FILE) and not lock_tmp:
            st = p.stat()
            snap[str(p.relative_to(out))] = (sha(p), st.st_mtime_ns, st.st_ino)
    return snap


def one_line(text: str) -> bool:
    return text.count("\n") == 1 and "Traceback" not in text and text.startswith("tlassoc: ")
