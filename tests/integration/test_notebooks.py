"""Every tutorial re-runs top to bottom, offline, and prints the same key numbers as its stored
outputs (nbval: cells marked ``# NBVAL_CHECK_OUTPUT`` are compared with the committed
outputs, every other cell must run without error).

Each tutorial runs in its own ``pytest --nbval-lax`` process with a kernel of the current
environment, so the TransformerLens 3.x run checks the tutorials on 3.x too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
CELL_TIMEOUT_S = 1800  # per cell, generous: the machine may be busy
NOTEBOOK_TIMEOUT_S = 3600


def test_tutorials_exist():
    names = [p.name for p in TUTORIALS]
    assert "00_quickstart.ipynb" in names and len(names) >= 6


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_stored_with_its_outputs(path):
    """Committed executed: figures visible on the repository page, checked cells present,
    no error output, a measured run time, and a modest size."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "run `make tutorials`"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("NBVAL_CHECK_OUTPUT" in c.source for c in code), "no key numbers are checked"
    run = nb.metadata.get("tlassoc", {}).get("run", {})
    assert run.get("seconds", 0) > 0 and "core" in run.get("machine", "")
    assert path.stat().st_size < 2_500_000, "keep stored outputs small (PNG figures)"
    for o in outputs:  # interactive views are stored as pictures, not 1.3 MB of JavaScript
        assert "CircuitsVis.render(" not in json.dumps(o.get("data", {}))


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_reruns_with_the_same_key_numbers(path, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MPLBACKEND", None)  # the notebook's own inline backend, as in Jupyter
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        "--current-env",
        f"--nbval-cell-timeout={CELL_TIMEOUT_S}",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-q",
        "--rootdir",
        str(tmp_path),
        str(path),
    ]
    proc = subprocess.run(
        cmd,
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=NOTEBOOK_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_readme_run_times_are_the_measured_ones():
    """The README's tutorial table states the run time stored in each notebook's metadata."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \[(\w+)\]\(tutorials/\w+\.ipynb\) \|.*\| (\d+) s \|$", readme, re.M)
    assert rows, "the README has no tutorial table with run times"
    for name, stated in rows:
        nb = nbformat.read(ROOT / "tutorials" / f"{name}.ipynb", as_version=4)
        measured = nb.metadata["tlassoc"]["run"]["seconds"]
        assert abs(int(stated) - measured) <= 1, f"{name}: README {stated} s, measured {measured} s"
