"""Imports flow one way (docs/architecture.md): every tlassoc import of every module, at module
level or inside a function, goes to the same layer or a lower one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tlassoc import _NAMES  # top-level name -> the module that defines it

ROOT = Path(__file__).parents[2] / "tlassoc"

#: Lowest layer first; a module may import modules of its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("tlassoc._io", "tlassoc.config", "tlassoc.presets", "tlassoc.recipes"),
    ("tlassoc.metrics", "tlassoc.tokenizer", "tlassoc.data"),
    (
        "tlassoc._tl",
        "tlassoc._tl_surface",
        "tlassoc._model_folders",
        "tlassoc.model",
        "tlassoc.convert",
    ),
    ("tlassoc.training",),
    (
        "tlassoc.memory",
        "tlassoc.theory",
        "tlassoc.heads",
        "tlassoc.patching",
        "tlassoc.viz",
        "tlassoc.pretrained",
    ),
    ("tlassoc.experiments",),
    ("tlassoc.sweep",),
    ("tlassoc.cli", "tlassoc.__main__", "tlassoc.quickstart"),
]


def _layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                best = i
    if best is None:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md")
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name != "tlassoc":  # the package root loads everything lazily
            out[name] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = (
                    module.split(".")[: -node.level]
                    if not path.name == "__init__.py"
                    else (module.split(".")[: len(module.split(".")) - node.level + 1])
                )
                base = ".".join([*pkg, base]) if base else ".".join(pkg)
            if base == "tlassoc":
                found |= {_NAMES.get(a.name, f"tlassoc.{a.name}") for a in node.names}
            else:
                found.add(base)
    return {m for m in found if m == "tlassoc" or m.startswith("tlassoc.")}


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_flow_downwards(module):
    own = _layer(module)
    for target in _imports(_modules()[module], module):
        if target == "tlassoc":
            continue
        assert _layer(target) <= own, f"{module} (layer {own}) imports {target}"


def test_model_and_convert_do_not_import_each_other_both_ways():
    mods = _modules()
    model_imports = _imports(mods["tlassoc.model"], "tlassoc.model")
    convert_imports = _imports(mods["tlassoc.convert"], "tlassoc.convert")
    assert not ("tlassoc.convert" in model_imports and "tlassoc.model" in convert_imports)


def test_training_imports_no_analysis():
    mods = _modules()
    for name, path in mods.items():
        if name.startswith("tlassoc.training"):
            assert all(_layer(t) <= 3 for t in _imports(path, name)), name
