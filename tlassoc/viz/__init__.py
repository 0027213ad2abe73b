"""Figures: circuitsvis renders and matplotlib plots, one module per topic.

* :mod:`tlassoc.viz.attention`: ``attention_html``, ``save_attention_html``, ``plot_attention``.
* :mod:`tlassoc.viz.training`: per-position accuracies and probes over training.
* :mod:`tlassoc.viz.memory`: memory heatmaps, ranked pairs, theory vs model.
* :mod:`tlassoc.viz.heads`: head-score heatmaps, patching results, model comparison.
"""
