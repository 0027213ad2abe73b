"""Experiments: each a config, a pure ``measure``, claims as data and a report.

The framework is :mod:`tlassoc.experiments.framework`; each experiment is one module
registered here by name (``tlassoc reproduce NAME``). Modules are imported on first use.

Example:
    >>> names()[:2]
    ['length_generalization', 'induction_heads']
    >>> get("length_generalization").description[:3]
    'RPE'
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> "module:class" of every experiment, in listing order.
EXPERIMENTS: dict[str, str] = {
    "length_generalization": "tlassoc.experiments.length_generalization:LengthGenExperiment",
    "induction_heads": "tlassoc.experiments.induction_heads:InductionHeadsExperiment",
    "nope3": "tlassoc.experiments.nope3:Nope3Experiment",
    "memory_order": "tlassoc.experiments.memory_order:MemoryOrderExperiment",
    "one_step": "tlassoc.experiments.one_step:OneStepExperiment",
    "natural_induction": "tlassoc.experiments.natural_induction:NaturalInductionExperiment",
    "knowledge_hijack": "tlassoc.experiments.knowledge_hijack:KnowledgeHijackExperiment",
    "stronger_amt": "tlassoc.experiments.stronger_amt:StrongerAMTExperiment",
    "analogy": "tlassoc.experiments.analogy:AnalogyExperiment",
    "ood_outputs": "tlassoc.experiments.ood_outputs:OODOutputsExperiment",
}

#: The experiment ``tlassoc reproduce`` runs when no name is given.
DEFAULT = "length_generalization"


def names() -> list[str]:
    """The experiment names."""
    return list(EXPERIMENTS)


def get(name: str) -> Any:
    """An instance of the experiment ``name``.

    Raises:
        ValueError: ``unknown experiment 'x'; expected one of [...]``.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {names()}")
    module, cls = EXPERIMENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def measured_times() -> dict[str, Any]:
    """Wall times of every experiment's default run on the development machine
    (``experiment_times.json``, written by ``benchmarks/time_experiments.py``):
    ``{"machine": ..., "total_seconds": ..., "experiments": {name: {"seconds": s, ...}}}``;
    empty if never measured."""
    from tlassoc._io import package_json

    return package_json("experiment_times.json")


__all__ = ["DEFAULT", "EXPERIMENTS", "get", "measured_times", "names"]
