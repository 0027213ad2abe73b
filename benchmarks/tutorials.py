"""Execute the tutorials, store their outputs in place and measure how long each takes.

Run ``python benchmarks/tutorials.py [NOTEBOOK ...]`` (default: every ``tutorials/*.ipynb``),
with ``MPLBACKEND`` unset so that figures are kept inline (``make tutorials`` does this). Each
notebook runs top to bottom in a fresh kernel of this environment (offline: ``HF_HUB_OFFLINE=1``)
with its folder as the working directory; then

* interactive circuitsvis views (about 1.3 MB of inlined JavaScript each) are stored as a PNG
  screenshot taken in headless Chromium, so the stored notebook stays small and shows the view
  on a repository page; running the notebook shows the interactive view again;
* the wall time and the machine are written to the notebook's metadata (``tlassoc.run``) and
  printed, for the README's table.

Example:
    $ env -u MPLBACKEND python benchmarks/tutorials.py tutorials/00_quickstart.ipynb
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
VIEW_MARKER = "CircuitsVis.render("
NOTE = "[interactive circuitsvis view, stored as a screenshot: run the cell to interact with it]"


def machine() -> str:
    """A short description of this machine (cores, CPU, OS)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.machine()} ({cpu}), {platform.system()}"


def _crop_png(png: bytes, margin: int = 12) -> bytes:
    """``png`` cropped to its non-white content plus a margin."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = np.asarray(image)
    rows, cols = np.nonzero(pixels.min(axis=-1) < 245)
    if len(rows) == 0:
        return png
    box = (
        max(0, cols.min() - margin),
        max(0, rows.min() - margin),
        min(image.width, cols.max() + margin),
        min(image.height, rows.max() + margin),
    )
    out = io.BytesIO()
    image.crop(box).save(out, format="PNG", optimize=True)
    return out.getvalue()


def view_screenshot(fragment: str, width: int = 900, height: int = 1000) -> bytes:
    """PNG of a circuitsvis fragment (a notebook output) rendered in headless Chromium."""
    from tlassoc.viz.browser import screenshot

    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><style>body { font-family: '
        f"sans-serif; }}</style></head><body>{fragment}</body></html>"
    )
    with tempfile.TemporaryDirectory() as folder:
        html = Path(folder) / "view.html"
        html.write_text(page, encoding="utf-8")
        shot = screenshot(html, Path(folder) / "view.png", width=width, height=height)
        return _crop_png(shot.read_bytes())


def store_views_as_pictures(nb: nbformat.NotebookNode) -> int:
    """Replace each circuitsvis output by its screenshot; returns how many were replaced."""
    replaced = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html", "")
            html = "".join(html) if isinstance(html, list) else html
            if VIEW_MARKER not in html:
                continue
            png = view_screenshot(html)
            output["data"] = {
                "image/png": base64.b64encode(png).decode("ascii"),
                "text/plain": NOTE,
            }
            output["metadata"] = {}
            replaced += 1
    return replaced


def run(path: Path, timeout: int) -> float:
    """Execute ``path`` in place; returns the wall seconds of the execution."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",  # the kernel of this environment
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
    views = store_views_as_pictures(nb)
    nb.metadata.setdefault("tlassoc", {})["run"] = {
        "seconds": round(seconds, 1),
        "machine": machine(),
        "python": platform.python_version(),
        "note": "wall time of a top-to-bottom run in a fresh kernel, offline",
    }
    text = nbformat.writes(nb)
    from tlassoc._io import atomic_write_text

    atomic_write_text(path, text)
    size = len(text.encode()) / 1e6
    print(f"{path.name}: {seconds:.1f} s, {views} view(s) stored as pictures, {size:.2f} MB")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    if os.environ.get("MPLBACKEND"):
        print(f"MPLBACKEND={os.environ['MPLBACKEND']} would hide the figures; unset it")
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    paths = args.notebooks or sorted((ROOT / "tutorials").glob("*.ipynb"))
    print(f"machine: {machine()}; Python {sys.version.split()[0]}")
    times = {p.name: run(p.resolve(), args.timeout) for p in paths}
    print("| notebook | seconds |")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
