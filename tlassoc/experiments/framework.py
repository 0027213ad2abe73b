"""The experiment framework: configs, pure measurements, claims as data, one writer.

An experiment is an :class:`Experiment` subclass with

* a config class (a :class:`~tlassoc.config.RunConfig` plus the experiment's own evaluation
  fields, so ``--set model.d_model=64`` and ``--set seeds=0,1,2`` address it alike);
* ``measure(config) -> Result``: trains and evaluates, writes no file (pure);
* ``claims(config) -> list[Claim]``: what the papers state, as data
  (``Claim(name, metric, op, threshold, meaning)``), evaluated against a result per seed;
* ``report(result) -> Report``: markdown, figures and HTML views, drawn from the result.

:func:`write` is the one writer of ``results.json``, ``report.md``, figures and HTML. The
report, ``results.json`` and the tests all read the same claims.

Example:
    >>> claim = Claim("high", metric="acc", op=">=", threshold=0.9, meaning="accurate")
    >>> result = Result("demo", config={}, seeds=[0, 1], per_seed=[{"acc": 0.95}, {"acc": 0.97}])
    >>> outcome = claim.evaluate(result)
    >>> outcome.values, outcome.holds
    ([0.95, 0.97], True)
"""

from __future__ import annotations

import math
import operator
import platform
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tlassoc._io import atomic_write_json, atomic_write_text

#: The comparisons a claim may use: ``abs<=`` bounds the magnitude (a change of at most x).
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "abs<=": lambda v, t: abs(v) <= t,
}

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then the normal 1.96).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of ``values`` (NaN bounds with fewer than two values).

    Example:
        >>> [round(x, 3) for x in mean_interval([1.0, 2.0, 3.0])]
        [2.0, -0.484, 4.484]
    """
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, math.nan, math.nan
    df = len(vals) - 1
    half = (_T95[df - 1] if df <= len(_T95) else 1.96) * statistics.stdev(vals) / len(vals) ** 0.5
    return mean, mean - half, mean + half


def lookup(record: dict[str, Any], path: str) -> Any:
    """The value at dotted ``path`` of a nested dict (``KeyError`` naming the path)."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"metric {path!r} is not in the result (missing {part!r})")
        value = value[part]
    return value


@dataclass(frozen=True)
class Claim:
    """A statement about a result: ``metric op threshold`` must hold for every seed.

    Attributes:
        name: Short identifier (used in tables and ``results.json``).
        metric: Dotted path into a seed's measurements, e.g. ``"relative.segment.drop"``.
        op: One of ``>=``, ``>``, ``<=``, ``<``, ``abs<=``.
        threshold: The number the metric is compared with.
        meaning: One sentence: what holding this claim says.
    """

    name: str
    metric: str
    op: str
    threshold: float
    meaning: str

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op={self.op!r}; expected one of {list(OPS)}")

    def holds_for(self, value: float | None) -> bool:
        """Whether one value satisfies the claim (a missing or NaN value never does)."""
        if value is None or math.isnan(value):
            return False
        return bool(OPS[self.op](value, self.threshold))

    def evaluate(self, result: Result) -> ClaimOutcome:
        """The claim on every seed of ``result``."""
        values = [lookup(rec, self.metric) for rec in result.per_seed]
        mean, low, high = mean_interval(values)
        holds = bool(values) and all(self.holds_for(v) for v in values)
        return ClaimOutcome(self, values, mean, low, high, holds)

    @property
    def statement(self) -> str:
        """``metric op threshold`` as text."""
        if self.op == "abs<=":
            return f"|{self.metric}| <= {self.threshold:g}"
        return f"{self.metric} {self.op} {self.threshold:g}"


@dataclass
class ClaimOutcome:
    """A claim evaluated on a result: per-seed values, mean, 95 % interval, verdict."""

    claim: Claim
    values: list[float]
    mean: float
    low: float
    high: float
    holds: bool

    def to_dict(self) -> dict[str, Any]:
        c = self.claim
        return {
            "name": c.name,
            "metric": c.metric,
            "op": c.op,
            "threshold": c.threshold,
            "meaning": c.meaning,
            "values": self.values,
            "mean": self.mean,
            "interval": [self.low, self.high],
            "holds": self.holds,
        }


def _union(into: dict[str, Any], record: dict[str, Any], where: str) -> None:
    """Merge ``record`` into ``into`` key by key; a leaf present in both is an error."""
    for key, value in record.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _union(into[key], value, f"{where}: {key}")
        else:
            raise ValueError(f"{where}: {key!r} was measured by two parts; expected one")


@dataclass
class Result:
    """What :meth:`Experiment.measure` returns.

    Attributes:
        experiment: The experiment's name.
        config: The configuration, as ``to_dict`` wrote it.
        seeds: The seeds that were run, in order.
        per_seed: One nested dict of measurements per seed (claims' metrics index into it).
        seconds: Wall time of the measurement.
        environment: Machine, versions and threads the numbers were measured with.
        artifacts: In-memory objects for the report (trained models, sample batches); not saved.
    """

    experiment: str
    config: dict[str, Any]
    seeds: list[int]
    per_seed: list[dict[str, Any]]
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def values(self, metric: str) -> list[Any]:
        """The value of ``metric`` for every seed."""
        return [lookup(rec, metric) for rec in self.per_seed]

    @classmethod
    def merge(cls, results: list[Result]) -> Result:
        """One result from per-seed results of the same experiment (e.g. sweep trials that each
        ran one seed): seeds, measurements and artifacts are concatenated in the given order;
        the configuration's ``seeds`` lists every seed; seconds add up.

        Example:
            >>> a = Result("x", {"seeds": [0]}, [0], [{"v": 1.0}], seconds=2.0)
            >>> b = Result("x", {"seeds": [1]}, [1], [{"v": 3.0}], seconds=3.0)
            >>> m = Result.merge([a, b])
            >>> m.seeds, m.values("v"), m.config["seeds"], m.seconds
            ([0, 1], [1.0, 3.0], [0, 1], 5.0)
        """
        if not results:
            raise ValueError("results=[]; expected at least one result")
        names = {r.experiment for r in results}
        if len(names) != 1:
            raise ValueError(f"results of experiments {sorted(names)}; expected one experiment")
        first = results[0]
        config = {k: v for k, v in first.config.items() if k != "seeds"}
        for r in results[1:]:
            other = {k: v for k, v in r.config.items() if k != "seeds"}
            if other != config:
                raise ValueError("results differ in settings other than seeds; cannot merge")
        seeds = [s for r in results for s in r.seeds]
        return cls.combine({**first.config, "seeds": seeds}, results)

    @classmethod
    def combine(cls, config: dict[str, Any], parts: list[Result]) -> Result:
        """One result of ``config`` from the results of its parts (configurations that each
        hold one value of the fields in :attr:`Experiment.parallel_fields`): each seed's record
        is the union of the parts' records of that seed, nested dicts merged key by key (a key
        measured by two parts is an error); seconds add up; artifacts are merged.

        Example:
            >>> a = Result("x", {"seeds": [0], "lens": [16]}, [0], [{"T16": {"v": 1.0}}])
            >>> b = Result("x", {"seeds": [0], "lens": [32]}, [0], [{"T32": {"v": 2.0}}])
            >>> whole = Result.combine({"seeds": [0], "lens": [16, 32]}, [a, b])
            >>> whole.seeds, whole.per_seed
            ([0], [{'T16': {'v': 1.0}, 'T32': {'v': 2.0}}])
        """
        if not parts:
            raise ValueError("parts=[]; expected at least one result")
        seeds = list(config.get("seeds") or dict.fromkeys(s for r in parts for s in r.seeds))
        records: dict[int, dict[str, Any]] = {seed: {} for seed in seeds}
        artifacts: dict[str, Any] = {}
        for part in parts:
            for seed, record in zip(part.seeds, part.per_seed, strict=True):
                if seed not in records:
                    raise ValueError(f"part of seed {seed}; expected seeds {seeds}")
                _union(records[seed], record, f"seed {seed}")
            for key, value in part.artifacts.items():
                if isinstance(value, dict) and isinstance(artifacts.get(key, {}), dict):
                    artifacts.setdefault(key, {}).update(value)
                else:
                    artifacts.setdefault(key, value)
        return cls(
            parts[0].experiment,
            config,
            seeds,
            [records[s] for s in seeds],
            seconds=sum(r.seconds for r in parts),
            environment=parts[0].environment,
            artifacts=artifacts,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """A result read back from ``results.json`` (without artifacts)."""
        return cls(
            data["experiment"],
            data["config"],
            list(data["seeds"]),
            list(data["per_seed"]),
            seconds=float(data.get("seconds", 0.0)),
            environment=dict(data.get("environment", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "config": self.config,
            "seeds": self.seeds,
            "per_seed": self.per_seed,
            "seconds": self.seconds,
            "environment": self.environment,
        }


@dataclass
class Report:
    """What :meth:`Experiment.report` returns: markdown, figures and HTML views.

    Attributes:
        markdown: The report's text (``report.md``).
        figures: File name -> function that draws the figure into the given PNG path.
        html: File name -> a complete HTML page.
    """

    markdown: str
    figures: dict[str, Callable[[Path], Any]] = field(default_factory=dict)
    html: dict[str, str] = field(default_factory=dict)


class Experiment(ABC):
    """Base class of every experiment (see the module docstring)."""

    #: Name used by ``tlassoc reproduce NAME``.
    name: ClassVar[str]
    #: One line for listings.
    description: ClassVar[str]
    #: The configuration class (a RunConfig subclass with the experiment's own fields).
    config_class: ClassVar[type]
    #: Tuple-valued configuration fields whose values are measured independently of each
    #: other, so that ``measure`` of the whole equals :meth:`Result.combine` of ``measure`` of
    #: each single-valued part (the parts run in parallel in ``tlassoc reproduce``). Every
    #: experiment's seeds are; an experiment whose per-seed record is keyed by another field's
    #: values (length generalisation: ``record["T16"]["relative"]``) adds that field.
    parallel_fields: ClassVar[tuple[str, ...]] = ("seeds",)

    def default_config(self) -> Any:
        """The configuration ``tlassoc reproduce NAME`` runs."""
        return self.config_class()

    def quick_config(self) -> Any:
        """A small configuration for tests and a first look (``--quick``)."""
        return self.default_config()

    @abstractmethod
    def measure(self, config: Any, progress: bool = True) -> Result:
        """Train and evaluate; no file is written."""

    @abstractmethod
    def claims(self, config: Any) -> list[Claim]:
        """The claims this experiment checks, with thresholds fixed before running."""

    @abstractmethod
    def report(self, result: Result) -> Report:
        """Markdown, figures and HTML views of a result."""

    def evaluate_claims(self, result: Result) -> list[ClaimOutcome]:
        """Every claim evaluated on ``result``."""
        config = self.config_class.from_dict(result.config)
        return [claim.evaluate(result) for claim in self.claims(config)]

    def run(self, config: Any = None, out_dir: Any = None, progress: bool = True) -> Result:
        """:meth:`measure`, then (with ``out_dir``) :func:`write`."""
        result = self.measure(config if config is not None else self.default_config(), progress)
        if out_dir is not None:
            write(self, result, out_dir)
        return result


def environment() -> dict[str, Any]:
    """Machine and versions to record next to every measured number."""
    import importlib.metadata as md
    import os

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
        "tlassoc": version("tlassoc"),
    }


def jsonable(x: Any) -> Any:
    """``x`` with non-finite floats as ``None`` and tuples as lists (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def without_times(x: Any) -> Any:
    """``x`` (nested dicts and lists, e.g. a result's ``per_seed``) without its wall-time
    entries (keys containing ``seconds``): the part two runs of the same configuration share.

    Example:
        >>> without_times([{"acc": 0.9, "train_seconds": 3.2, "by_len": {"seconds": 1}}])
        [{'acc': 0.9, 'by_len': {}}]
    """
    if isinstance(x, dict):
        return {k: without_times(v) for k, v in x.items() if "seconds" not in k}
    if isinstance(x, list):
        return [without_times(v) for v in x]
    return x


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table (``n/a`` for missing or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def claims_table(outcomes: list[ClaimOutcome]) -> str:
    """Markdown table of evaluated claims: statement, per-seed values, mean [interval], verdict."""
    lines = [
        "| claim | statement | per seed | mean [95 % interval] | verdict |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        values = ", ".join(fmt(v) for v in o.values)
        interval = f"{fmt(o.mean)} [{fmt(o.low)}, {fmt(o.high)}]"
        verdict = "holds" if o.holds else "**does not hold**"
        lines.append(
            f"| {o.claim.name} | `{o.claim.statement}` | {values} | {interval} | {verdict} |"
        )
    return "\n".join(lines)


def write(experiment: Experiment, result: Result, out_dir: Any) -> Path:
    """Write ``results.json``, ``report.md``, figures and HTML views of ``result`` atomically,
    and the trained models (``result.artifacts["models"]``) under ``models/<name>/``
    (load one with :meth:`tlassoc.AssocTransformer.load`).

    ``results.json`` holds the configuration, the per-seed measurements, the environment and the
    evaluated claims; ``report.md`` is :meth:`Experiment.report`'s markdown.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = experiment.report(result)
    for name, draw in report.figures.items():
        draw(out / name)
    for name, page in report.html.items():
        atomic_write_text(out / name, page)
    atomic_write_text(out / "report.md", report.markdown)
    for name, model in result.artifacts.get("models", {}).items():
        model.save(out / "models" / name)
    data = result.to_dict()
    data["claims"] = [o.to_dict() for o in experiment.evaluate_claims(result)]
    data["all_claims_hold"] = all(c["holds"] for c in data["claims"])
    atomic_write_json(out / "results.json", jsonable(data))
    return out


def write_index(out_dir: Any, entries: list[tuple[str, str, Result | None, str]]) -> Path:
    """Write ``out_dir/report.md``: one line per experiment with its verdict and links.

    Args:
        out_dir: The folder holding one subfolder per experiment.
        entries: ``(name, description, result or None, note)``; ``note`` explains a missing
            result (e.g. the error that stopped it).
    """
    from tlassoc.experiments import get

    out = Path(out_dir)
    lines = [
        "# tlassoc reproduce --all",
        "",
        "| experiment | verdict | claims holding | time | report |",
        "|---|---|---|---|---|",
    ]
    for name, description, result, note in entries:
        if result is None:
            lines.append(f"| {name} | not run: {note} | | | |")
            continue
        outcomes = get(name).evaluate_claims(result)
        held = sum(o.holds for o in outcomes)
        verdict = "all claims hold" if held == len(outcomes) else "some claims do not hold"
        files = sorted(p.name for p in (out / name).glob("*") if p.suffix in (".png", ".html"))
        links = ", ".join(f"[{f}]({name}/{f})" for f in files)
        lines.append(
            f"| [{name}]({name}/report.md): {description} | {verdict} | {held} / "
            f"{len(outcomes)} | {result.seconds:.0f} s | {links} |"
        )
    total = sum(r.seconds for _, _, r, _ in entries if r is not None)
    lines += ["", f"Total measured time {total:.0f} s.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


__all__ = [
    "OPS",
    "Claim",
    "ClaimOutcome",
    "Experiment",
    "Report",
    "Result",
    "claims_table",
    "environment",
    "fmt",
    "jsonable",
    "lookup",
    "mean_interval",
    "without_times",
    "write",
    "write_index",
]
