"""tlassoc: induction heads as associative memories, on TransformerLens.

Example:
    >>> import tlassoc
    >>> model = tlassoc.AssocTransformer(tlassoc.presets.rpe(d_model=32, n_ctx=64))
    >>> model.to_str_tokens("To be")
    ['T', 'o', ' ', 'b', 'e']
"""

from tlassoc import presets, train
from tlassoc.config import AssocConfig
from tlassoc.data import AnalogyTask, BigramModel, TriggerBatch, TriggerBigramTask
from tlassoc.model import AssocTransformer, CheckpointError
from tlassoc.onestep import one_step_train
from tlassoc.pretrained import HubUnavailableError
from tlassoc.tokenizer import CharTokenizer, WordTokenizer
from tlassoc.train import TrainConfig, TrainResult

__version__ = "0.1.0"

__all__ = [
    "AnalogyTask",
    "AssocConfig",
    "AssocTransformer",
    "BigramModel",
    "CharTokenizer",
    "CheckpointError",
    "HubUnavailableError",
    "TrainConfig",
    "TrainResult",
    "TriggerBatch",
    "TriggerBigramTask",
    "WordTokenizer",
    "one_step_train",
    "__version__",
    "presets",
    "train",
]
