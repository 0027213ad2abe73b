"""Shared checks of the experiment tests: run a quick configuration once per module (one torch
thread), check what the writer produced, and check that bad settings fail in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tlassoc.cli import main
from tlassoc.experiments import get
from tlassoc.experiments.framework import write

PNG = b"\x89PNG\r\n\x1a\n"


def run_quick(name: str, out_dir: Path) -> tuple[Any, Any, Any, Path]:
    """``(experiment, config, result, out_dir)`` of the quick configuration, written."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exp = get(name)
        cfg = exp.quick_config()
        result = exp.measure(cfg, progress=False)
        write(exp, result, out_dir)
    finally:
        torch.set_num_threads(threads)
    return exp, cfg, result, out_dir


def check_written(exp: Any, result: Any, out: Path, figures: list[str]) -> dict[str, Any]:
    """results.json has the claims evaluated per seed, report.md puts verdicts before tables,
    and every figure is a PNG; returns results.json."""
    data = json.loads((out / "results.json").read_text())
    assert data["experiment"] == exp.name and data["seeds"] == result.seeds
    assert len(data["per_seed"]) == len(result.seeds)
    names = [c.name for c in exp.claims(exp.config_class.from_dict(data["config"]))]
    assert [c["name"] for c in data["claims"]] == names and names
    for c in data["claims"]:
        assert len(c["values"]) == len(result.seeds)
        assert isinstance(c["holds"], bool) and c["meaning"]
    assert data["all_claims_hold"] == all(c["holds"] for c in data["claims"])
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Claims") < report.index("| quantity |")
    for claim in data["claims"]:
        assert f"**{claim['name']}**" in report
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG, name
    for key in result.artifacts.get("models", {}):
        assert (out / "models" / key).is_dir()
    return data


def check_one_seed_files(
    out: Path, name: str, n_claims: int, figures: list[str], first_table: str
) -> str:
    """A one-seed run of ``name``: results.json has ``n_claims`` claims, each with one value and
    a bool verdict; every figure is a PNG; report.md puts the verdicts before ``first_table``.
    Returns report.md."""
    data = json.loads((out / "results.json").read_text())
    assert data["experiment"] == name and len(data["claims"]) == n_claims
    for c in data["claims"]:
        assert len(c["values"]) == 1 and isinstance(c["holds"], bool)
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index(first_table)
    return report


def check_config_errors(config_class: type, cases: tuple[tuple[str, Any, str], ...]) -> None:
    """Each ``(path, value, regex)``: setting ``path`` to ``value`` on the default configuration
    raises a one-line ``ValueError`` matching ``regex``."""
    for path, value, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            config_class().set(path, value)
        assert "\n" not in str(err.value)


def reproduce_error(capsys: Any, out: Path, name: str, setting: str) -> str:
    """``tlassoc reproduce name --set setting`` exits with code 2 and no newline on stderr;
    returns that line."""
    code = main(["reproduce", name, "--out", str(out), "--set", setting])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    return err
