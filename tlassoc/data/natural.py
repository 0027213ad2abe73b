"""Real natural text, character by character, for training small language models offline.

The trigger task is synthetic; to see whether the heads found in the simplified models look
like those of a model trained on real text, a small model needs real text. Two sources:

* ``"python-docs"`` (default, always available): the English prose of the Python reference
  manual that every CPython installation ships as :mod:`pydoc_data.topics` (the text ``help()``
  prints: about 465,000 characters of human-written documentation with code examples). It is
  real text, written by people, and needs no download, so it works offline and in CI. Its
  content changes slightly between Python versions: :func:`load_text` returns the text and
  its sha256, which experiments record.
* a path: any UTF-8 text file (e.g. a local copy of Tiny Shakespeare's ``input.txt``; see
  :func:`tlassoc.data.load_tiny_shakespeare`). Nothing is downloaded and nothing is copied
  into the package.

Characters are tokenised with a fixed 96-character vocabulary (:data:`TEXT_VOCAB`: newline and
the 95 printable ASCII characters), so Tiny Shakespeare's 65 characters and the Python manual
map to the same ids. Tabs become a space; any other character outside the vocabulary (under
0.2 % of the Python manual: typographic quotes, dashes) becomes ``"?"``.

Example:
    >>> text, digest = load_text("python-docs")
    >>> len(text) > 100_000, len(digest)
    (True, 64)
    >>> task = TextTask(encode_text(text[:5000]), seq_len=32, batch_size=2)
    >>> task.sample(seed=0).tokens.shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from tlassoc.data.bigram import make_generator
from tlassoc.data.triggers import TriggerBatch
from tlassoc.tokenizer import CharTokenizer

#: Newline and the 95 printable ASCII characters (space to ``~``), in code-point order.
TEXT_VOCAB: str = "\n" + "".join(chr(c) for c in range(32, 127))
#: The text that ships with Python (:func:`python_docs_text`); any other source is a file path.
PYTHON_DOCS = "python-docs"

_REPLACEMENT = "?"
_TRANSLATE = {ord("\t"): " ", ord("\r"): None}


def text_tokenizer() -> CharTokenizer:
    """The character tokenizer of :data:`TEXT_VOCAB` (96 tokens).

    Example:
        >>> tok = text_tokenizer()
        >>> len(tok), tok.decode(tok.encode("Hi!"))
        (96, 'Hi!')
    """
    return CharTokenizer(TEXT_VOCAB)


def python_docs_text() -> str:
    """The Python reference manual's topics (:mod:`pydoc_data.topics`), in sorted topic order,
    separated by blank lines.

    Example:
        >>> "assert" in python_docs_text()[:200]
        True
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip("\n") for k in sorted(topics))


def load_text(source: str = PYTHON_DOCS) -> tuple[str, str]:
    """Real text and its sha256 (of the UTF-8 bytes, before tokenisation).

    Args:
        source: ``"python-docs"`` (the Python manual shipped with CPython) or the path of a
            UTF-8 text file (e.g. Tiny Shakespeare's ``input.txt``).

    Raises:
        ValueError: ``source`` is empty or not a string.
        FileNotFoundError: the file does not exist.

    Example:
        >>> load_text("/no/such/file.txt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: text file '/no/such/file.txt' does not exist; expected ...
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"source={source!r}; expected {PYTHON_DOCS!r} or a file path")
    if source == PYTHON_DOCS:
        text = python_docs_text()
    else:
        file = Path(source).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"text file {source!r} does not exist; expected {PYTHON_DOCS!r} or the path of "
                "a UTF-8 text file"
            )
        text = file.read_text(encoding="utf-8")
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def encode_text(text: str) -> Int[Tensor, " n"]:
    """Token ids of ``text`` in :data:`TEXT_VOCAB` (tab -> space, carriage returns dropped,
    other unknown characters -> ``"?"``).

    Example:
        >>> encode_text("a\\tb\\u2019").tolist() == text_tokenizer().encode("a b?")
        True
    """
    table = {c: i for i, c in enumerate(TEXT_VOCAB)}
    unknown = table[_REPLACEMENT]
    cleaned = text.translate(_TRANSLATE)
    return torch.tensor([table.get(c, unknown) for c in cleaned], dtype=torch.long)


def printable_fraction(text: str) -> float:
    """Fraction of the characters of ``text`` that are in :data:`TEXT_VOCAB` or a tab.

    Example:
        >>> printable_fraction("ab\\u2019c")
        0.75
    """
    if not text:
        return 1.0
    ok = set(TEXT_VOCAB) | {"\t", "\r"}
    return sum(c in ok for c in text) / len(text)


class TextTask:
    """Random windows of a token stream, batched like the trigger task (for
    :func:`tlassoc.training.train` and :func:`tlassoc.training.evaluate`).

    A window of ``seq_len + 1`` consecutive tokens gives ``tokens`` (the first ``seq_len``) and
    ``targets`` (shifted by one), all with label 0; train with ``loss_on="all"``.

    With ``repeat_fraction > 0`` (ours), that fraction of the windows is a *repeated* window:
    a text segment of ``h = ceil((seq_len + 1) / 2)`` consecutive tokens followed by the same
    segment again (truncated to the window). Its targets inside the second copy from its second
    token on can be predicted by copying (an induction head) and get label 2, like the trigger
    task's in-context targets; everything else keeps label 0.

    Args:
        ids: The token stream (e.g. :func:`encode_text` of a text).
        seq_len: Input positions per window.
        batch_size: Windows per batch.
        repeat_fraction: Fraction of repeated windows (0 = the text as it is).

    Example:
        >>> task = TextTask(torch.arange(100) % 96, seq_len=8, batch_size=3)
        >>> b = task.sample(seed=1)
        >>> bool((b.targets[:, :-1] == b.tokens[:, 1:]).all()), int(b.labels.sum())
        (True, 0)
        >>> r = TextTask(torch.arange(100) % 96, seq_len=8, repeat_fraction=1.0).sample(seed=1)
        >>> bool((r.tokens[:, :3] == r.tokens[:, 5:]).all()), r.labels[0].tolist()
        (True, [0, 0, 0, 0, 0, 2, 2, 2])
    """

    trigger_mode = "none"

    def __init__(
        self,
        ids: Int[Tensor, " n"],
        seq_len: int,
        batch_size: int = 32,
        repeat_fraction: float = 0.0,
    ):
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive integer")
        r = repeat_fraction
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
            raise ValueError(f"repeat_fraction={r!r}; expected a number in [0, 1]")
        self.repeat_fraction = float(r)
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if ids.numel() < seq_len + 2:
            raise ValueError(
                f"the text has {ids.numel()} tokens; expected more than seq_len + 1 = {seq_len + 1}"
            )
        self.ids, self.seq_len, self.batch_size = ids, seq_len, batch_size

    def sample(
        self,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        *,
        batch_size: int | None = None,
        seq_len: int | None = None,
    ) -> TriggerBatch:
        """A batch of random windows (``generator`` or ``seed``; same seed, same windows)."""
        gen = make_generator(generator, seed)
        n = self.batch_size if batch_size is None else batch_size
        length = self.seq_len if seq_len is None else seq_len
        if length + 1 >= self.ids.numel():
            raise ValueError(f"seq_len={length}; expected < {self.ids.numel() - 1} (text length)")
        starts = torch.randint(0, self.ids.numel() - length, (n,), generator=gen)
        offsets = torch.arange(length + 1)
        labels = torch.zeros(n, length, dtype=torch.long)
        if self.repeat_fraction > 0:
            repeat = torch.rand(n, generator=gen) < self.repeat_fraction
            h = (length + 2) // 2
            folded = torch.where(offsets < h, offsets, offsets - h)
            offsets = torch.where(repeat[:, None], folded, offsets)
            labels[:, h:] = 2 * repeat[:, None].long()
        else:
            offsets = offsets.expand(n, -1)
        windows = self.ids[starts[:, None] + offsets]
        empty = torch.zeros(n, 0, dtype=torch.long)
        return TriggerBatch(windows[:, :-1], windows[:, 1:], labels, empty, empty)

    def split(self, fraction: float) -> tuple[TextTask, TextTask]:
        """Two tasks on the first ``1 - fraction`` and the last ``fraction`` of the stream
        (training text and held-out text).

        Example:
            >>> a, b = TextTask(torch.arange(1000) % 96, seq_len=8).split(0.1)
            >>> a.ids.numel(), b.ids.numel()
            (900, 100)
        """
        if not 0 < fraction < 1:
            raise ValueError(f"fraction={fraction!r}; expected a number in (0, 1)")
        cut = int(round(self.ids.numel() * (1 - fraction)))
        return (
            TextTask(self.ids[:cut], self.seq_len, self.batch_size, self.repeat_fraction),
            TextTask(self.ids[cut:], self.seq_len, self.batch_size, self.repeat_fraction),
        )


__all__ = [
    "PYTHON_DOCS",
    "TEXT_VOCAB",
    "TextTask",
    "encode_text",
    "load_text",
    "printable_fraction",
    "python_docs_text",
    "text_tokenizer",
]
