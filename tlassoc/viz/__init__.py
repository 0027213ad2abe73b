"""Figures: circuitsvis renders and matplotlib plots, one module per topic.

* :mod:`tlassoc.viz.attention`: ``attention_html`` (an offline, self-contained circuitsvis page),
  ``save_attention_html``, ``plot_attention``.
* :mod:`tlassoc.viz.training`: per-position accuracies and probes over training.
* :mod:`tlassoc.viz.memory`: memory heatmaps, ranked pairs, theory vs model.
* :mod:`tlassoc.viz.heads`: head-score heatmaps, patching results, model comparison.
* :mod:`tlassoc.viz.data`: the bigram matrix of the task data.
* :mod:`tlassoc.viz.browser`: headless Chromium (DOM after scripts ran, screenshots) for views.
"""
