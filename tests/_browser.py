"""Test set-up for headless Chromium: find it, or install Debian's ``chromium`` once."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tlassoc.viz.browser import find_browser

_tried: list[bool] = []


def require_browser() -> str:
    """The browser's path; installs Debian's chromium when missing and allowed (root with
    apt-get), else skips the calling test with the reason."""
    found = find_browser()
    if found or _tried:
        if found:
            return found
        pytest.skip("no Chromium and it could not be installed here (see the first attempt)")
    _tried.append(True)
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("no Chromium, and apt-get as root is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired):
            break
    found = find_browser()
    if found is None:
        pytest.skip("no Chromium: `apt-get install -y chromium` did not provide one")
    return found


def non_white_fraction(png_path) -> float:
    """Share of pixels that are not (near-)white in a PNG."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png_path).convert("RGB"), dtype=np.int16)
    return float((pixels.min(axis=-1) < 235).mean())
