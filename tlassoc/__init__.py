"""tlassoc: induction heads as associative memories, on TransformerLens.

Example:
    >>> import tlassoc
    >>> model = tlassoc.AssocTransformer(tlassoc.presets.rpe(d_model=32, n_ctx=64))
    >>> model.to_str_tokens("To be")
    ['T', 'o', ' ', 'b', 'e']
"""

from tlassoc import presets
from tlassoc.config import AssocConfig
from tlassoc.data import AnalogyTask, BigramModel, TriggerBatch, TriggerBigramTask
from tlassoc.model import AssocTransformer, CheckpointError
from tlassoc.tokenizer import CharTokenizer, WordTokenizer

__version__ = "0.1.0"

__all__ = [
    "AnalogyTask",
    "AssocConfig",
    "AssocTransformer",
    "BigramModel",
    "CharTokenizer",
    "CheckpointError",
    "TriggerBatch",
    "TriggerBigramTask",
    "WordTokenizer",
    "__version__",
    "presets",
]
