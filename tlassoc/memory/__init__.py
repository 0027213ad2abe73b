"""Associative memories: read weights as stored pairs, recall probes, ideal constructions.

* :mod:`tlassoc.memory.tables`: express any weight or circuit in embedding bases
  (:func:`memory_table`, :func:`memory_report`, :func:`basis`, :func:`circuit`).
* :mod:`tlassoc.memory.probes`: the recall probes and attention probes (docs/method.md, Recall
  probes).
* :mod:`tlassoc.memory.ideal`: set a model's weights to the ideal memories (docs/method.md,
  Associative memories; :func:`build_ideal`, :func:`ideal_model`) and the three-layer
  construction without positions (:func:`build_ideal_nope`).

Weights are read through :func:`tlassoc.heads.adapter.head_weights`, whose docstring states the
matrix convention (TransformerLens's rows, ``x @ W``); the papers' column convention appears
only where paper notation is printed (:func:`circuit`, :func:`memory_table`, the ideal
constructions).

Example:
    >>> from tlassoc.memory import ideal_model, memory_report
    >>> report = memory_report(ideal_model("relative", d_model=128, n_ctx=64))
    >>> report["W_U W_O1"].recall
    1.0
"""

from tlassoc.memory.ideal import (
    build_ideal,
    build_ideal_nope,
    dual_basis,
    dual_inputs,
    ideal_memories,
    ideal_model,
    ideal_nope_model,
    memory_alignment,
    outer_memory,
)
from tlassoc.memory.probes import (
    FIRST_POSITIONS,
    induction_attention_accuracy,
    previous_token_accuracy,
    probe_evaluator,
    recall_probes,
    wf_probe,
    wk1_distance_scores,
    wk1_position_hits,
    wk1_probe,
    wk2_probe,
    wk2_scores,
    wo2_probe,
)
from tlassoc.memory.tables import (
    BASIS_KINDS,
    Basis,
    MemoryTable,
    basis,
    circuit,
    memory_report,
    memory_table,
)

__all__ = [
    "probe_evaluator",
    "BASIS_KINDS",
    "FIRST_POSITIONS",
    "induction_attention_accuracy",
    "previous_token_accuracy",
    "recall_probes",
    "wf_probe",
    "wk1_distance_scores",
    "wk1_position_hits",
    "wk1_probe",
    "wk2_probe",
    "wk2_scores",
    "wo2_probe",
    "Basis",
    "MemoryTable",
    "basis",
    "build_ideal",
    "build_ideal_nope",
    "circuit",
    "dual_basis",
    "dual_inputs",
    "ideal_memories",
    "ideal_model",
    "ideal_nope_model",
    "memory_alignment",
    "memory_report",
    "memory_table",
    "outer_memory",
]
