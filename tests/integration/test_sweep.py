"""Sweeps on a local Ray: the numbers of each trial are those of measuring its configuration in
one process; a failing trial is recorded while the others finish; rerunning skips finished
trials; a sweep whose driver is killed resumes and finishes with the same results.

One Ray instance (2 CPUs) serves the in-process tests; the kill test starts its own drivers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tlassoc._io import LOCK_FILE, FolderLockedError
from tlassoc.cli import main
from tlassoc.experiments import get
from tlassoc.experiments.framework import jsonable, lookup, mean_interval, without_times
from tlassoc.sweep import (
    measure_seeds,
    parse_grid,
    run_sweep,
    run_trials,
    start_ray,
)
from tlassoc.sweep.report import load_trials

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
#: A tiny length-generalisation setting: seconds per trial.
TINY = {"train.steps": 2, "task.seq_len": 16, "model.d_model": 16}
TINY_FLAGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def ray_local():
    """One embedded Ray (2 CPUs) for the module; workers can import this folder's modules."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *([old] if old else [])])
    started = start_ray(num_cpus=2)
    yield
    if started:
        import ray

        ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _in_process(exp, config_dict):
    """The per-seed numbers of measuring the configuration here, as results.json stores them."""
    result = exp.measure(exp.config_class.from_dict(config_dict), progress=False)
    return without_times(jsonable(result.per_seed))


def test_cli_sweep_matches_in_process(ray_local, tmp_path, one_thread):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "length_generalization",
        "--quick",
        *TINY_FLAGS,
        "--grid",
        "model.d_model=16,32",
        "--grid",
        "seeds=0,1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    exp = get("length_generalization")
    trials = load_trials(out)
    assert len(trials) == 4 and {t["status"] for t in trials} == {"done"}
    assert sorted((t["params"]["model.d_model"], t["params"]["seeds"]) for t in trials) == [
        (16, [0]),
        (16, [1]),
        (32, [0]),
        (32, [1]),
    ]
    for t in trials:
        assert without_times(t["result"]["per_seed"]) == _in_process(exp, t["config"]), t["params"]

    table = pd.read_csv(out / "trials.csv")
    metrics = list(dict.fromkeys(c.metric for c in exp.claims(exp.quick_config())))
    assert len(table) == 4 and {"model.d_model", "seed", *metrics} <= set(table.columns)
    parquet = pd.read_parquet(out / "trials.parquet")
    pd.testing.assert_frame_equal(parquet.drop(columns="error"), table.drop(columns="error"))
    by_trial = {t["id"]: t["result"]["per_seed"][0] for t in trials}
    for _, row in table.iterrows():
        for metric in metrics:
            assert row[metric] == pytest.approx(lookup(by_trial[row["trial"]], metric), rel=1e-12)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 * len(metrics) and set(summary["n"]) == {2}
    row = summary[(summary["model.d_model"] == 32) & (summary["metric"] == metrics[0])].iloc[0]
    values = table.loc[table["model.d_model"] == 32, metrics[0]].tolist()
    assert row["mean"] == pytest.approx(mean_interval(values)[0])
    assert row["low"] == pytest.approx(mean_interval(values)[1])
    text = (out / "summary.md").read_text()
    assert all(c.name in text for c in exp.claims(exp.quick_config()))
    assert (out / "figures" / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    # a rerun of the same command finds every trial finished and measures nothing
    before = {
        t["id"]: (out / "trials" / t["id"] / "results.json").stat().st_mtime_ns for t in trials
    }
    assert main(argv) == 0
    after = {i: (out / "trials" / i / "results.json").stat().st_mtime_ns for i in before}
    assert after == before
    # and the report is rebuilt from the trial folders alone
    (out / "summary.csv").unlink()
    assert main(["sweep-report", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), summary)


def test_failing_trial_is_recorded_the_others_finish_and_a_rerun_retries_only_it(
    ray_local, tmp_path
):
    sys.path.insert(0, str(HERE))
    from sweep_test_experiments import FlakyLengthGen

    log = tmp_path / "calls.log"
    exp = FlakyLengthGen(str(log), fail_d=24, flaky_d=32)
    base = exp.quick_config().override(TINY)
    grid = parse_grid(exp.config_class, ["model.d_model=16,24,32"])
    out = tmp_path / "sweep"
    records = run_sweep(exp, base, grid, out, max_retries=1, progress=False)
    outcome = {r.params["model.d_model"]: (r.status, r.attempts) for r in records}
    assert outcome == {16: ("done", 1), 24: ("failed", 2), 32: ("done", 2)}
    failed = records[1]
    assert failed.error == "RuntimeError: d_model 24 is refused by this test experiment"
    assert failed.result is None and records[0].result.per_seed
    stored = json.loads((out / "trials" / failed.id / "trial.json").read_text())
    assert (stored["status"], stored["attempts"], stored["error"]) == ("failed", 2, failed.error)
    assert failed.id in (out / "summary.md").read_text()
    table = pd.read_csv(out / "trials.csv")
    assert table.set_index("model.d_model")["status"].to_dict() == {
        16: "done",
        24: "failed",
        32: "done",
    }
    assert sorted(log.read_text().split("\n")[:-1]) == ["16 0", "24 0", "24 0", "32 0", "32 0"]

    done = {
        r.id: (out / "trials" / r.id / "results.json").read_bytes()
        for r in records
        if r.status == "done"
    }
    again = run_sweep(exp, base, grid, out, max_retries=0, progress=False)
    assert [r.status for r in again] == ["done", "failed", "done"]
    assert sorted(log.read_text().split("\n")[:-1]).count("24 0") == 3
    assert len(log.read_text().split("\n")[:-1]) == 6  # only the failed trial ran again
    assert {i: (out / "trials" / i / "results.json").read_bytes() for i in done} == done


def test_measure_seeds_merges_per_seed_trials_with_the_in_processwithout_times(
    ray_local, tmp_path, one_thread
):
    exp = get("length_generalization")
    config = exp.quick_config().override({**TINY, "seeds": (0, 1)})
    merged = measure_seeds(exp, config, tmp_path / "trials", progress=False)
    assert merged.seeds == [0, 1] and merged.config["seeds"] == [0, 1]
    names = []
    for seed, record in zip([0, 1], merged.per_seed, strict=True):
        alone = exp.measure(config.set("seeds", (seed,)), progress=False)
        assert without_times(jsonable(record)) == without_times(jsonable(alone.per_seed[0]))
        names += sorted(alone.artifacts["models"])
    assert sorted(merged.artifacts["models"]) == sorted(names) and len(names) >= 2
    # finished trials are read back from their folders, models from their safetensors files
    again = measure_seeds(exp, config, tmp_path / "trials", progress=False)
    assert without_times(jsonable(again.per_seed)) == without_times(jsonable(merged.per_seed))
    assert sorted(again.artifacts["models"]) == sorted(names)


def test_reproduce_runs_seeds_on_ray_with_the_in_processwithout_times(
    ray_local, tmp_path, one_thread
):
    flags = ["length_generalization", "--quick", *TINY_FLAGS, "--set", "seeds=0,1"]
    ray_out, here_out = tmp_path / "ray", tmp_path / "here"
    assert main(["reproduce", *flags, "--out", str(ray_out), "--no-progress"]) == 0
    assert main(["reproduce", *flags, "--in-process", "--out", str(here_out), "--no-progress"]) == 0
    on_ray = json.loads((ray_out / "results.json").read_text())
    here = json.loads((here_out / "results.json").read_text())
    assert on_ray["seeds"] == here["seeds"] == [0, 1]
    assert without_times(on_ray["per_seed"]) == without_times(here["per_seed"])
    assert [c["values"] for c in on_ray["claims"]] == [c["values"] for c in here["claims"]]
    trials = sorted(p.name for p in (ray_out / "trials").iterdir())
    assert len(trials) == 4 and not (here_out / "trials").exists()
    # the report is complete although no task object came back from Ray: attention views too
    names = {p.name for p in here_out.iterdir()} - {"models"}
    assert names <= {p.name for p in ray_out.iterdir()}
    assert sorted(p.name for p in (ray_out / "models").iterdir()) == sorted(
        p.name for p in (here_out / "models").iterdir()
    )

    # a rerun reads the finished seeds back instead of training them again
    def stamps():
        return {t: (ray_out / "trials" / t / "results.json").stat().st_mtime_ns for t in trials}

    before = stamps()
    assert main(["reproduce", *flags, "--out", str(ray_out), "--no-progress"]) == 0
    assert stamps() == before
    again = json.loads((ray_out / "results.json").read_text())
    assert without_times(again["per_seed"]) == without_times(on_ray["per_seed"])


def test_reproduce_without_ray_runs_the_seeds_here_and_says_so(tmp_path):
    out = tmp_path / "o"
    argv = ["reproduce", "--quick", *TINY_FLAGS, "--set", "seeds=0,1", "--out", str(out)]
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from tlassoc.cli import main\n"
        f"sys.exit(main({argv + ['--no-progress']!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warning == [
        'tlassoc: warning: Ray is not installed; install it with: pip install "tlassoc[sweep]" '
        "to run the 2 seeds in parallel; running them one after another in this process"
    ]
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1]
    assert not (out / "trials").exists()


GATED = "sweep_test_experiments:GatedLengthGen"
_DRIVER = """
import sys
from tlassoc import experiments
experiments.EXPERIMENTS["test_gated_lengthgen"] = "{gated}"
from tlassoc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _gated_argv(out: Path) -> list[str]:
    """A 2 x 2 sweep of the gated experiment: seeds 0 and 1, d_model 16 and 32."""
    return [
        "sweep",
        "test_gated_lengthgen",
        "--quick",
        *TINY_FLAGS,
        "--grid",
        "seeds=0,1",
        "--grid",
        "model.d_model=16,32",
        "--out",
        str(out),
        "--no-progress",
    ]


def _statuses(out: Path) -> dict[int, str]:
    found = {}
    for path in (out / "trials").glob("*/trial.json"):
        try:
            data = json.loads(path.read_text())
        except ValueError:  # never: files are replaced atomically
            raise AssertionError(f"{path} is not valid JSON") from None
        found[(data["params"]["seeds"][0], data["params"]["model.d_model"])] = data["status"]
    return found


def test_ctrl_c_cancels_running_trials_and_keeps_finished_ones(
    ray_local, tmp_path, monkeypatch, capsys
):
    """Seed-1 trials wait for a gate that never opens; SIGINT arrives once seed 0 is done."""
    from tlassoc import experiments

    monkeypatch.setitem(experiments.EXPERIMENTS, "test_gated_lengthgen", GATED)
    monkeypatch.setenv("TLASSOC_TEST_GATE", str(tmp_path / "gate"))
    out = tmp_path / "sweep"

    def interrupt_when_seed0_done():
        deadline = time.monotonic() + 600
        while list(_statuses(out).values()).count("done") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_when_seed0_done, daemon=True)
    watcher.start()
    assert main(_gated_argv(out)) == 130
    watcher.join()
    assert "sweep interrupted; finished trials are kept" in capsys.readouterr().err
    seed1 = {(1, 16): "interrupted", (1, 32): "interrupted"}
    assert _statuses(out) == {(0, 16): "done", (0, 32): "done", **seed1}
    assert not (out / "summary.md").exists()  # no report of an interrupted sweep


def test_killed_sweep_resumes_and_finishes_with_the_same_results(
    ray_local, tmp_path, monkeypatch, one_thread
):
    """Seed-1 trials wait for a gate file, so the driver (a subprocess with its own embedded
    Ray) is killed with SIGKILL while they run and after the seed-0 trials finished; the same
    command, run again here with the gate open, finishes the sweep."""
    from tlassoc import experiments

    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(gated=GATED))
    gate, out = tmp_path / "gate", tmp_path / "sweep"
    pythonpath = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath, "TLASSOC_TEST_GATE": str(gate)}
    cmd = [sys.executable, str(driver), *_gated_argv(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while list(_statuses(out).values()).count("done") < 2:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the seed-0 trials did not finish in 10 minutes"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    killed = _statuses(out)
    assert killed == {(0, 16): "done", (0, 32): "done", (1, 16): "running", (1, 32): "running"}
    kept = {p: p.read_bytes() for p in (out / "trials").glob("*/results.json")}
    assert len(kept) == 2

    gate.touch()
    monkeypatch.setitem(experiments.EXPERIMENTS, "test_gated_lengthgen", GATED)
    monkeypatch.setenv("TLASSOC_TEST_GATE", str(gate))
    assert main(_gated_argv(out)) == 0
    assert set(_statuses(out).values()) == {"done"}
    assert {p: p.read_bytes() for p in kept} == kept  # finished trials were not run again
    exp = get("length_generalization")
    for t in load_trials(out):
        assert without_times(t["result"]["per_seed"]) == _in_process(exp, t["config"]), t["params"]


def test_sweep_without_ray_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import tlassoc.sweep\n"
        "assert 'torch' not in sys.modules, 'import tlassoc.sweep loaded torch'\n"
        "from tlassoc.cli import main\n"
        f"sys.exit(main(['sweep', 'length_generalization', '--grid', 'seeds=0,1', '--out', "
        f"{str(tmp_path / 'o')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        'tlassoc: error: Ray is not installed; install it with: pip install "tlassoc[sweep]"'
    ]
    assert not (tmp_path / "o" / "trials").exists()  # nothing was written


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("model.d_modl=16,32", "unknown field 'model.d_modl'"),
        ("model.d_model=16,x", "model.d_model='x'; expected int"),
        ("model.d_model", "--grid 'model.d_model'; expected PATH=V1,V2"),
        ("model.d_model=-4", "grid setting model.d_model=-4: d_model=-4; expected"),
    ],
)
def test_bad_grid_is_one_line_and_writes_nothing(tmp_path, capsys, grid, message):
    out = tmp_path / "o"
    argv = ["sweep", "length_generalization", "--quick", "--grid", grid, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (out / "trials").exists()


def test_bad_sweep_options_are_one_line(tmp_path, capsys):
    argv = ["sweep", "length_generalization", "--grid", "seeds=0", "--out", str(tmp_path / "o")]
    assert main([*argv, "--cpus-per-trial", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tlassoc: error: cpus_per_trial=0; expected an integer >= 1"
    )
    assert main([*argv, "--max-retries", "x"]) == 2
    assert "--max-retries: invalid int value: 'x'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "trials").exists()


def test_embedded_ray_start_is_tried_again_when_its_node_misses_the_deadline(monkeypatch):
    import ray

    calls = []

    def init(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) < fail_times + 1:
            raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "init", init)
    fail_times = 2
    assert start_ray(num_cpus=1) is True and len(calls) == 3
    assert calls[0][0] == ("local",) and calls[0][1]["num_cpus"] == 1
    calls.clear()
    fail_times = 3
    with pytest.raises(Exception, match="timed out during startup"):
        start_ray(num_cpus=1)
    assert len(calls) == 3


def test_a_folder_another_sweep_holds_is_refused(tmp_path):
    from filelock import FileLock

    exp = get("length_generalization")
    out = tmp_path / "o"
    out.mkdir()
    with FileLock(str(out / LOCK_FILE), thread_local=False):  # as another process would
        with pytest.raises(FolderLockedError, match="is in use by"):
            run_trials(exp, [exp.quick_config()], out)
    assert not (out / "trials").exists()
