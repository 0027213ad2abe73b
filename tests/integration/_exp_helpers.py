"""Shared checks of the paper-experiment tests: run a quick configuration once per module (one
torch thread), and check what the writer produced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

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
