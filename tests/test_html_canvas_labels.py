"""Zoomed out, the replay page paints its boxes on a canvas: they still say what they are while text can be read.

A wide model (many parallel chains) puts more than the SVG's 500 boxes in view at a scale where a
label of a few characters is still 7 px or more on screen: there the canvas must paint each box's
label; further out, where no label would be readable, it paints none.
"""

from __future__ import annotations

import torch
from torch import nn

import gradtrace

from .browser import chromium_page
from .test_html_replay import open_page

# Every fillText the page's canvas makes, with the font it used, recorded before the page's script runs.
SPY = """(() => { window.__texts = []; const f = CanvasRenderingContext2D.prototype.fillText;
 CanvasRenderingContext2D.prototype.fillText = function (t, x, y) {
   window.__texts.push([String(t), this.font, this.getTransform().a]); return f.apply(this, arguments); }; })();"""
# The largest label font (graph units) a box holds: 6 characters across its 230 units (draw.js's LABEL_MAX).
LARGEST = 56
WIDTH = "() => document.getElementById('canvas').clientWidth"
VIEW = "() => { const v = document.getElementById('graph').getAttribute('viewBox').split(' ').map(Number); return v; }"


class Branch(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.w
        for _ in range(self.depth):
            h = torch.sin(h)
        return h


class Wide(nn.Module):
    """Many parallel chains side by side: a dense grid of boxes when every group is open."""

    def __init__(self, branches: int = 100, depth: int = 30) -> None:
        super().__init__()
        self.branches = nn.ModuleList([Branch(depth) for _ in range(branches)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([b(x) for b in self.branches]).sum()


def test_canvas_boxes_carry_their_labels_while_readable(tmp_path) -> None:
    t = gradtrace.trace(Wide(), torch.randn(3), loss=lambda out: out)
    # (what was recorded: one sin per step of every branch)
    assert len(t.find("sin")) == 100 * 30
    with chromium_page(1400, 900) as page:
        page.add_init_script(SPY)
        errors, _ = open_page(page, t.render(tmp_path / "wide.html").as_uri())
        page.click("#expandall")
        painted, unreadable, seen = 0, 0, []
        for _ in range(16):
            page.evaluate("window.__texts = []")
            page.click("#zoomin")
            page.wait_for_timeout(60)
            scale = page.evaluate(WIDTH) / page.evaluate(VIEW)[2]  # screen pixels per graph unit
            svg_boxes = page.evaluate("document.querySelectorAll('#graph .node').length")
            texts = page.evaluate("window.__texts")
            labels = [(s, font, a) for s, font, a in texts if s == "sin"]
            seen.append((round(scale, 3), svg_boxes, len(labels)))
            if svg_boxes:
                break  # (few enough boxes in view: they are SVG with their full text)
            if labels:
                painted += 1
                dpr = page.evaluate("window.devicePixelRatio || 1")
                for _, font, a in labels:  # font size in graph units times the transform's scale: screen pixels
                    px = float(font.split("px")[0]) * a / dpr
                    assert px >= 7 - 1e-3, (font, a)  # (the font string keeps 4 decimals)
            else:
                unreadable += 1
                assert LARGEST * scale < 7, f"canvas boxes at scale {scale:.3f} (a 7 px label fits) carry no label: {seen}"
        assert painted, f"no zoom level painted box labels on the canvas: {seen}"
        assert unreadable, f"every zoom level painted labels, even where they cannot be read: {seen}"
        assert errors == []
