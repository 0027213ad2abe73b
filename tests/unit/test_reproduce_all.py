"""`tlassoc reproduce --all`: every experiment runs into its own folder, one failure does not
stop the rest, and the index report has a verdict line per experiment with links."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import tlassoc.experiments as experiments
from tlassoc.cli import main
from tlassoc.config import RunConfig
from tlassoc.experiments.framework import Claim, Experiment, Report, Result


@dataclass
class TinyConfig(RunConfig):
    """Args:
    value: The number the experiment reports.
    """

    value: float = 0.75


class Tiny(Experiment):
    name = "tiny"
    description = "a number"
    config_class = TinyConfig

    def measure(self, config, progress=True):
        return Result(self.name, config.to_dict(), [0], [{"x": config.value}], seconds=1.0)

    def claims(self, config):
        return [Claim("x_high", "x", ">=", 0.5, "x is high"), Claim("x_low", "x", "<", 0.5, "")]

    def report(self, result):
        return Report("# tiny\n", {"x.png": lambda path: path.write_bytes(b"\x89PNG")})


class Broken(Tiny):
    name = "broken"

    def measure(self, config, progress=True):
        raise RuntimeError("out of memory")


@pytest.fixture
def registry(monkeypatch):
    table = {"tiny": Tiny(), "broken": Broken()}
    monkeypatch.setattr(experiments, "names", lambda: list(table))
    monkeypatch.setattr(experiments, "get", lambda name: table[name])


def test_all_writes_each_experiment_and_an_index(registry, tmp_path, capsys):
    assert main(["reproduce", "--all", "--out", str(tmp_path), "--no-progress"]) == 1
    assert "broken: failed: RuntimeError: out of memory" in capsys.readouterr().err
    assert (tmp_path / "tiny" / "results.json").is_file()
    index = (tmp_path / "report.md").read_text()
    assert "| [tiny](tiny/report.md): a number | some claims do not hold | 1 / 2 |" in index
    assert "[x.png](tiny/x.png)" in index
    assert "| broken | not run: RuntimeError: out of memory |" in index


def test_all_refuses_a_name_or_settings(registry, tmp_path, capsys):
    assert main(["reproduce", "tiny", "--all", "--out", str(tmp_path)]) == 2
    assert "expected no name" in capsys.readouterr().err
