"""Attention views are complete pages that draw offline: checked in headless Chromium."""

from __future__ import annotations

import re

import pytest
import torch
from _browser import non_white_fraction, require_browser

from tlassoc import AssocTransformer, presets
from tlassoc.viz.attention import AttentionView, attention_html, save_attention_html
from tlassoc.viz.browser import dump_dom, rendered_text, screenshot

PROMPT = "First Citizen: hear me speak."


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    model = AssocTransformer(presets.rpe(d_model=32, n_ctx=64)).eval()
    path = tmp_path_factory.mktemp("view") / "attention.html"
    save_attention_html(model, PROMPT, path)
    return path


def test_page_is_complete_and_needs_no_network(page):
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "var CircuitsVis" in text  # the bundle is inlined
    assert not re.search(r"""(src|href)=["']https?://""", text)
    assert "unpkg.com" not in text and "esm.js" not in text
    # only one closing tag per script element: the bundle's own "</script>" string is escaped
    assert len(re.findall(r"</script", text, flags=re.IGNORECASE)) == 2


def test_str_of_the_view_is_the_page():
    model = AssocTransformer(presets.rpe(d_model=16, n_ctx=32))
    view = attention_html(model, "abcab")
    assert str(view) == view.page() and view.page().startswith("<!DOCTYPE html>")
    assert view._repr_html_() == view.fragment() and "<html" not in view.fragment()
    assert view.tokens == ["a", "b", "c", "a", "b"] and view.head_names == ["L0H0", "L1H0"]


def test_props_cannot_close_the_script():
    view = AttentionView(["</script><b>", "x"], ["L0H0"], torch.tensor([[[1.0, 0], [0.5, 0.5]]]))
    assert "</script><b>" not in view.page()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected \\[head, 2, 2\\]"):
        AttentionView(["a", "b"], ["L0H0"], torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="head_names"):
        AttentionView(["a", "b"], ["L0H0", "L1H0"], torch.ones(1, 2, 2))


def test_page_draws_in_headless_chromium(page, tmp_path):
    require_browser()
    dom = dump_dom(page)
    seen = rendered_text(dom)  # scripts removed: only what circuitsvis drew is left
    assert "L0H0" in seen and "L1H0" in seen and "Head Selector" in seen
    assert "<canvas" in dom
    png = screenshot(page, tmp_path / "view.png", width=900, height=1100)
    assert non_white_fraction(png) > 0.05
