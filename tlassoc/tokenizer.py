"""Offline tokenizers: one token per character (Tiny Shakespeare) or per word (analogy data).

Both work without any download, map strings to token ids and back, serialise to a small JSON
dict (saved next to model checkpoints) and can be turned into a Hugging Face
``PreTrainedTokenizerFast`` (``to_hf()``) for TransformerLens objects that expect one.

Example:
    >>> tok = CharTokenizer.tiny_shakespeare()
    >>> len(tok)
    65
    >>> tok.decode(tok.encode("To be"))
    'To be'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

#: The 65 distinct characters of Tiny Shakespeare, sorted by code point (token id = index).
TINY_SHAKESPEARE_VOCAB: str = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class _BaseTokenizer(ABC):
    """Shared machinery: a list of token strings whose index is the token id."""

    kind: str = "base"

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if not vocab:
            raise ValueError("vocab is empty; expected at least one token")
        index: dict[str, int] = {}
        for i, token in enumerate(vocab):
            if not isinstance(token, str) or token == "":
                raise ValueError(f"vocab entry {i} is {token!r}; expected a non-empty string")
            if token in index:
                raise ValueError(f"vocab has {token!r} twice (ids {index[token]} and {i})")
            index[token] = i
        self.vocab: list[str] = vocab
        self._index = index

    def __len__(self) -> int:
        return len(self.vocab)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.vocab == other.vocab  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d_vocab={len(self)})"

    def token_to_id(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise ValueError(
                f"token {token!r} is not in the {type(self).__name__} vocabulary "
                f"({len(self)} tokens)"
            ) from None

    @abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into token strings."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; unknown tokens raise ``ValueError`` naming them."""
        if not isinstance(text, str):
            raise ValueError(f"expected a string to encode, got {type(text).__name__}")
        pieces = self.tokenize(text)
        unknown = sorted({p for p in pieces if p not in self._index})
        if unknown:
            raise ValueError(
                f"unknown token(s) {unknown[:10]!r} not in the {len(self)}-token vocabulary"
            )
        return [self._index[p] for p in pieces]

    def id_to_str(self, ids: Iterable[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self)})")
            out.append(self.vocab[i])
        return out

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids ``ids``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, inverse of :func:`tokenizer_from_dict`."""
        return {"type": self.kind, "vocab": list(self.vocab)}


class CharTokenizer(_BaseTokenizer):
    """One token per character.

    Example:
        >>> tok = CharTokenizer("ab")
        >>> tok.encode("abba")
        [0, 1, 1, 0]
    """

    kind = "char"

    def __init__(self, vocab: Sequence[str] | str):
        super().__init__(list(vocab))
        bad = [t for t in self.vocab if len(t) != 1]
        if bad:
            raise ValueError(f"CharTokenizer tokens must be single characters, got {bad[:5]!r}")

    @classmethod
    def tiny_shakespeare(cls) -> CharTokenizer:
        """The 65-character vocabulary of Tiny Shakespeare (the papers' vocabulary)."""
        return cls(TINY_SHAKESPEARE_VOCAB)

    def tokenize(self, text: str) -> list[str]:
        return list(text)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.id_to_str(ids))

    def to_hf(self) -> Any:
        """A Hugging Face ``PreTrainedTokenizerFast`` with the same ids, built offline.

        It has no beginning-of-sequence token; its end-of-text and padding tokens reuse the first
        vocabulary entry (``"\\n"`` for Tiny Shakespeare), so no id outside ``[0, d_vocab)`` is
        ever created.
        """
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        core = Tokenizer(models.WordLevel(vocab=dict(self._index), unk_token=None))
        core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        core.decoder = decoders.Fuse()
        special = self.vocab[0]
        hf = PreTrainedTokenizerFast(
            tokenizer_object=core,
            eos_token=special,
            pad_token=special,
            clean_up_tokenization_spaces=False,
        )
        hf.init_kwargs["name_or_path"] = "tlassoc-char"
        return hf


class WordTokenizer(_BaseTokenizer):
    """One token per whitespace-separated word.

    Example:
        >>> tok = WordTokenizer(["Paris", "France"])
        >>> tok.encode("Paris France Paris")
        [0, 1, 0]
        >>> tok.decode([1, 0])
        'France Paris'
    """

    kind = "word"

    def __init__(self, vocab: Sequence[str]):
        super().__init__(vocab)
        bad = [t for t in self.vocab if t.split() != [t]]
        if bad:
            raise ValueError(f"WordTokenizer tokens must not contain whitespace: {bad[:5]!r}")

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.id_to_str(ids))


def tokenizer_from_dict(data: dict[str, Any]) -> CharTokenizer | WordTokenizer:
    """Rebuild a tokenizer from :meth:`to_dict` output.

    Example:
        >>> tokenizer_from_dict(CharTokenizer("xy").to_dict()).vocab
        ['x', 'y']
    """
    kinds = {"char": CharTokenizer, "word": WordTokenizer}
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in kinds:
        raise ValueError(f"tokenizer type {kind!r} is unknown; expected one of {sorted(kinds)}")
    return kinds[kind](data["vocab"])
