"""Rebuild the derived tables that ship in ``tlassoc/data`` from the raw source files.

tlassoc never ships the raw texts, only tables derived from them:

- ``tiny_shakespeare_counts.json``: vocabulary, unigram counts and the 65 x 65 bigram count
  matrix of Tiny Shakespeare (karpathy/char-rnn ``data/tinyshakespeare/input.txt``);
- ``capital_world_pairs.csv``: the 116 (capital, country) pairs of the ``capital-world``
  section of word2vec's ``questions-words.txt`` (tmikolov/word2vec).

Both raw files are checked against their sha256 before anything is written, and every table is
written atomically with its provenance.

Usage::

    python -m tlassoc.data.build_tables SRC_DIR [--out OUT_DIR]

Example:
    >>> sha256_hex(b"abc")[:12]
    'ba7816bf8f01'
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from tlassoc._io import atomic_write_text
from tlassoc.data.bigram import TINY_SHAKESPEARE_TABLE, BigramModel, format_counts_json

#: Raw Tiny Shakespeare file name, digest, size and origin.
TINY_SHAKESPEARE_FILE = "tinyshakespeare.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_CHARS = 1115394
TINY_SHAKESPEARE_ORIGIN = "karpathy/char-rnn data/tinyshakespeare/input.txt (commit 6f9487a)"

#: Raw analogy file name, digest and origin.
QUESTIONS_WORDS_FILE = "questions-words.txt"
QUESTIONS_WORDS_SHA256 = "8c29b3332afc46f3fb8be04cb5297bf96f39aa7131272dff57869b4485b22a36"
QUESTIONS_WORDS_ORIGIN = "tmikolov/word2vec questions-words.txt (commit 20c129a, Apache-2.0)"
CAPITAL_WORLD_TABLE = "capital_world_pairs.csv"
CAPITAL_WORLD_SECTION = "capital-world"

PACKAGE_DATA_DIR = Path(__file__).resolve().parent


def sha256_hex(data: bytes) -> str:
    """Hex sha256 digest of ``data``.

    Example:
        >>> len(sha256_hex(b""))
        64
    """
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """Read ``path`` and check its sha256; a mismatch raises ``ValueError`` naming both digests.

    Example:
        >>> import tempfile, os
        >>> p = Path(tempfile.mkdtemp()) / "x.txt"
        >>> _ = p.write_bytes(b"abc")
        >>> read_verified(p, sha256_hex(b"abc"))
        b'abc'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source file {str(path)!r} does not exist")
    data = path.read_bytes()
    digest = sha256_hex(data)
    if digest != expected_sha256:
        raise ValueError(
            f"sha256 of {str(path)!r} is {digest}; expected {expected_sha256}. "
            "This is not the file the shipped tables were built from."
        )
    return data


def tiny_shakespeare_table(text: str, source_name: str, sha256: str) -> str:
    """The JSON text of the bigram count table of ``text`` with its provenance.

    Example:
        >>> '"n_characters": 4' in tiny_shakespeare_table("abab", "x.txt", "0" * 64)
        True
    """
    model = BigramModel.from_text(text)
    model.provenance = {
        "source_file": source_name,
        "origin": TINY_SHAKESPEARE_ORIGIN,
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": sha256,
        "n_characters": len(text),
        "n_bigrams": model.n_bigrams,
        "built_by": "python -m tlassoc.data.build_tables SRC_DIR",
        "note": "Derived statistics only; the raw text is not shipped.",
    }
    return format_counts_json(model.to_dict())


def capital_world_table(text: str, sha256: str) -> str:
    """The CSV text (with a ``#`` provenance header) of the capital-world pairs in ``text``.

    Pairs are the distinct ``(word1, word2)`` and ``(word3, word4)`` of the section, sorted by
    capital.

    Example:
        >>> csv = capital_world_table(": capital-world\\nA B C D\\n", "0" * 64)
        >>> csv.splitlines()[-2:]
        ['A,B', 'C,D']
    """
    from tlassoc.data.analogy import pairs_from_section, parse_questions_words

    sections = parse_questions_words(text)
    if CAPITAL_WORLD_SECTION not in sections:
        raise ValueError(f"no section {CAPITAL_WORLD_SECTION!r}; found {sorted(sections)}")
    pairs = pairs_from_section(sections[CAPITAL_WORLD_SECTION])
    words = {w for pair in pairs for w in pair}
    header = [
        f"# {len(pairs)} (capital, country) pairs over {len(words)} distinct words: the distinct",
        f"# (word1, word2) and (word3, word4) of section ': {CAPITAL_WORLD_SECTION}' of",
        f"# {QUESTIONS_WORDS_FILE}, sorted by capital.",
        f"# origin: {QUESTIONS_WORDS_ORIGIN}",
        f"# sha256: {sha256}",
        "# built by: python -m tlassoc.data.build_tables SRC_DIR",
        "capital,country",
    ]
    for capital, country in pairs:
        if "," in capital or "," in country:
            raise ValueError(f"pair {(capital, country)!r} contains a comma; cannot write CSV")
    rows = [f"{capital},{country}" for capital, country in pairs]
    return "\n".join(header + rows) + "\n"


def build_tables(src_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Verify the raw files in ``src_dir`` and (re)write the shipped tables into ``out_dir``.

    Args:
        src_dir: folder holding ``tinyshakespeare.txt`` and ``questions-words.txt``.
        out_dir: where to write; defaults to the installed ``tlassoc/data`` folder.

    Returns:
        The written table paths by file name.

    Example:
        >>> build_tables("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        FileNotFoundError: source file '/nonexistent/tinyshakespeare.txt' does not exist
    """
    src = Path(src_dir)
    out = Path(out_dir) if out_dir is not None else PACKAGE_DATA_DIR
    shakespeare = read_verified(src / TINY_SHAKESPEARE_FILE, TINY_SHAKESPEARE_SHA256)
    questions = read_verified(src / QUESTIONS_WORDS_FILE, QUESTIONS_WORDS_SHA256)
    text = shakespeare.decode("utf-8")
    if len(text) != TINY_SHAKESPEARE_CHARS:
        raise ValueError(f"{TINY_SHAKESPEARE_FILE} has {len(text)} characters; expected 1115394")
    written = {
        TINY_SHAKESPEARE_TABLE: out / TINY_SHAKESPEARE_TABLE,
        CAPITAL_WORLD_TABLE: out / CAPITAL_WORLD_TABLE,
    }
    table = tiny_shakespeare_table(text, TINY_SHAKESPEARE_FILE, TINY_SHAKESPEARE_SHA256)
    csv = capital_world_table(questions.decode("utf-8"), QUESTIONS_WORDS_SHA256)
    atomic_write_text(written[TINY_SHAKESPEARE_TABLE], table)
    atomic_write_text(written[CAPITAL_WORLD_TABLE], csv)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m tlassoc.data.build_tables SRC_DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", help="folder with tinyshakespeare.txt and questions-words.txt")
    parser.add_argument("--out", default=None, help="output folder (default: tlassoc/data)")
    args = parser.parse_args(argv)
    try:
        written = build_tables(args.src_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
