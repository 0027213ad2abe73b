"""The README's pictures, taken in headless Chromium: the attention view that ``tlassoc
reproduce`` writes, and two figures of the executed tutorials as a notebook page shows them.

Run ``python benchmarks/screenshots.py [--results DIR]`` (``make screenshots``). ``DIR`` is the
output folder of a ``tlassoc reproduce`` run (``results/`` by default); when it holds no
``attention_relative.html``, a quick run (``tlassoc reproduce --quick``) is made into a
temporary folder first. Writes ``docs/img/*.png``.

Example:
    $ python benchmarks/screenshots.py --results results
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tlassoc._io import atomic_write_bytes  # noqa: E402
from tlassoc.viz.browser import screenshot  # noqa: E402
from tutorials import _crop_png  # noqa: E402

#: (notebook, cell id, picture): tutorial figures shown in the README.
FIGURES = (
    ("03_activation_patching.ipynb", "419c37c0", "tutorial03_patching.png"),
    ("05_training.ipynb", "96892df9", "tutorial05_late_evidence.png"),
)


def shoot(html: Path, png: Path, width: int, height: int) -> Path:
    """Screenshot of ``html`` cropped to its content, written atomically to ``png``."""
    with tempfile.TemporaryDirectory() as folder:
        raw = screenshot(html, Path(folder) / "raw.png", width=width, height=height)
        atomic_write_bytes(png, _crop_png(raw.read_bytes()))
    print(f"{png.relative_to(ROOT)} <- {html.name}")
    return png


def attention_view(results: Path, out: Path) -> Path:
    """The reproduce run's RPE attention view (run ``--quick`` first when there is none)."""
    page = results / "attention_relative.html"
    if page.is_file():
        return shoot(page, out, 900, 1200)
    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, "-m", "tlassoc", "reproduce", "--quick", "--no-progress"]
        subprocess.run([*cmd, "--out", folder], check=True)
        return shoot(Path(folder) / "attention_relative.html", out, 900, 1200)


def notebook_figure(notebook: str, cell_id: str, out: Path) -> Path:
    """One executed cell (code and outputs) of a tutorial, rendered as a notebook page."""
    from nbconvert import HTMLExporter

    nb = nbformat.read(ROOT / "tutorials" / notebook, as_version=4)
    cells = [c for c in nb.cells if c.get("id") == cell_id]
    if len(cells) != 1 or not cells[0].get("outputs"):
        raise SystemExit(f"{notebook}: no executed cell {cell_id}; run make tutorials first")
    nb.cells = cells
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "cell.html"
        page.write_text(html, encoding="utf-8")
        return shoot(page, out, 1000, 1400)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    attention_view(args.results, args.out / "reproduce_attention_rpe.png")
    for notebook, cell_id, name in FIGURES:
        notebook_figure(notebook, cell_id, args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
