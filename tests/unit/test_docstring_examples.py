"""The examples in tlassoc's docstrings run and print what they claim (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import tlassoc

SKIP = {"tlassoc.__main__", "tlassoc.cli", "tlassoc.quickstart", "tlassoc.data.build_tables"}
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(tlassoc.__path__, prefix="tlassoc.") if m.name not in SKIP
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
