"""Data for tlassoc: global bigram statistics, the trigger task and the analogy task.

Example:
    >>> from tlassoc.data import BigramModel, TriggerBigramTask
    >>> task = TriggerBigramTask(BigramModel.tiny_shakespeare(), batch_size=2, seq_len=16)
    >>> task.sample(seed=0).tokens.shape
    torch.Size([2, 16])
"""

from tlassoc.data.analogy import AnalogyTask, capital_world_pairs, parse_questions_words
from tlassoc.data.bigram import BigramModel
from tlassoc.data.text import ChecksumMismatchError, DataUnavailableError, load_tiny_shakespeare
from tlassoc.data.triggers import TriggerBatch, TriggerBigramTask, make_task

__all__ = [
    "make_task",
    "AnalogyTask",
    "BigramModel",
    "ChecksumMismatchError",
    "DataUnavailableError",
    "TriggerBatch",
    "TriggerBigramTask",
    "capital_world_pairs",
    "load_tiny_shakespeare",
    "parse_questions_words",
]
