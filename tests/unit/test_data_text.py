"""load_tiny_shakespeare: local files, cache, fake downloads and failure modes (no network)."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import pytest

from tlassoc.data import BigramModel, DataUnavailableError, load_tiny_shakespeare
from tlassoc.data import text as text_module
from tlassoc.data.text import ChecksumMismatchError, default_cache_dir

CONTENT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
DIGEST = hashlib.sha256(CONTENT.encode()).hexdigest()
FAKE_URL = "http://example.invalid/input.txt"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any real network access in these tests is a failure."""

    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(text_module.urllib.request, "urlopen", refuse)


def serve(monkeypatch, payload: bytes, calls: list | None = None):
    def fake_urlopen(url, timeout):
        if calls is not None:
            calls.append((url, timeout))
        return io.BytesIO(payload)

    monkeypatch.setattr(text_module.urllib.request, "urlopen", fake_urlopen)


def test_local_path(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(CONTENT)
    assert load_tiny_shakespeare(path) == CONTENT
    assert load_tiny_shakespeare(str(path)) == CONTENT
    model = BigramModel.from_text(load_tiny_shakespeare(path))
    assert int(model.unigram_counts.sum()) == len(CONTENT)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_tiny_shakespeare(tmp_path / "missing.txt")


def test_not_cached_without_download_is_one_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError, match="Pass path= to a local copy") as info:
        load_tiny_shakespeare(cache_dir=tmp_path)
    assert isinstance(info.value, RuntimeError)
    assert "download=True" in str(info.value)


def test_download_into_cache_then_reuse(tmp_path, monkeypatch):
    calls: list = []
    serve(monkeypatch, CONTENT.encode(), calls)
    cache = tmp_path / "cache"
    text = load_tiny_shakespeare(cache_dir=cache, download=True, url=FAKE_URL, sha256=DIGEST)
    assert text == CONTENT
    assert calls == [(FAKE_URL, 10.0)]
    assert (cache / "tinyshakespeare.txt").read_text() == CONTENT
    assert [p.name for p in cache.iterdir()] == ["tinyshakespeare.txt"]  # no temp file left
    # Second call: served from the cache, without a download.
    again = load_tiny_shakespeare(cache_dir=cache, url=FAKE_URL, sha256=DIGEST)
    assert again == CONTENT and len(calls) == 1


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TLASSOC_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    serve(monkeypatch, CONTENT.encode())
    load_tiny_shakespeare(download=True, url=FAKE_URL, sha256=DIGEST)
    assert (tmp_path / "env-cache" / "tinyshakespeare.txt").is_file()
    monkeypatch.delenv("TLASSOC_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "tlassoc")


def test_checksum_mismatch_leaves_no_file(tmp_path, monkeypatch):
    serve(monkeypatch, b"tampered text")
    with pytest.raises(ChecksumMismatchError, match="nothing was written"):
        load_tiny_shakespeare(cache_dir=tmp_path, download=True, url=FAKE_URL, sha256=DIGEST)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_is_reported_or_replaced(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare.txt").write_text("corrupt")
    with pytest.raises(ChecksumMismatchError, match="delete it"):
        load_tiny_shakespeare(cache_dir=tmp_path, sha256=DIGEST)
    serve(monkeypatch, CONTENT.encode())
    assert (
        load_tiny_shakespeare(cache_dir=tmp_path, download=True, url=FAKE_URL, sha256=DIGEST)
        == CONTENT
    )
    assert (tmp_path / "tinyshakespeare.txt").read_text() == CONTENT


@pytest.mark.parametrize(
    "error",
    [urllib.error.URLError("Name or service not known"), TimeoutError("timed out"), OSError(101)],
)
def test_offline_is_one_clear_error(tmp_path, monkeypatch, error):
    def offline(url, timeout):
        raise error

    monkeypatch.setattr(text_module.urllib.request, "urlopen", offline)
    with pytest.raises(DataUnavailableError, match="pass path= to a local copy"):
        load_tiny_shakespeare(cache_dir=tmp_path, download=True, url=FAKE_URL)
    assert list(tmp_path.iterdir()) == []


def test_default_url_and_digest():
    assert text_module.TINY_SHAKESPEARE_URL == (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    )
    shipped = BigramModel.tiny_shakespeare().provenance["sha256"]
    assert text_module.TINY_SHAKESPEARE_SHA256 == shipped
