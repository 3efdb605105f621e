"""Edges on the replay page do not pass through boxes they do not connect.

Every drawn edge is read back as the points its curves pass (the page draws a cubic through each
pair, vertical at both ends); each curve is sampled and every piece tested against the boxes on
show (nodes, closed groups) other than the edge's two ends, and against the frames of open groups
that hold neither end. Over the six model shapes of test_html_layout and a transformer block with
residuals, expanded and at opening. The edges themselves are the trace's, checked against torch's
autograd graph in test_html_layout.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtrace

from .browser import chromium_page
from .test_html_layout import CASES as LAYOUT_CASES
from .test_html_replay import open_page

INSET = 1.0  # (a curve that only grazes a box's border, where edges meet boxes, is no crossing)
SAMPLES = 24


class ResidualBlock(nn.Module):
    """A pre-norm transformer block: attention and MLP, each added back onto the residual stream."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


CASES = dict(LAYOUT_CASES, **{"transformer-block-residual": (ResidualBlock, (2, 3, 8))})


def _curve(p: list[float], q: list[float]) -> list[tuple[float, float]]:
    """The page's curve from p to q (control points at mid height, vertical at both ends), sampled."""
    my = (p[1] + q[1]) / 2
    out = []
    for k in range(SAMPLES + 1):
        t = k / SAMPLES
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t ** 3
        out.append((a * p[0] + b * p[0] + c * q[0] + d * q[0], a * p[1] + b * my + c * my + d * q[1]))
    return out


def _hits(p: tuple[float, float], q: tuple[float, float], box: list[float]) -> bool:
    """Whether segment pq passes through the inside of box (x, y, w, h) shrunk by INSET (Liang-Barsky)."""
    x0, y0, x1, y1 = box[0] + INSET, box[1] + INSET, box[0] + box[2] - INSET, box[1] + box[3] - INSET
    if x1 <= x0 or y1 <= y0:
        return False
    t0, t1, dx, dy = 0.0, 1.0, q[0] - p[0], q[1] - p[1]
    for a, b in ((-dx, p[0] - x0), (dx, x1 - p[0]), (-dy, p[1] - y0), (dy, y1 - p[1])):
        if a == 0:
            if b < 0:
                return False
        else:
            r = b / a
            if a < 0:
                t0 = max(t0, r)
            else:
                t1 = min(t1, r)
    return t0 < t1


def crossings(layout: dict) -> list[str]:
    """Each (edge, box) pair where the drawn edge passes through a box that is not one of its ends."""
    bad = []
    frames = layout["frameBoxes"]
    for a, b, pts in layout["routes"]:
        ends = {a, b}
        around = set(layout["ups"][a]) | set(layout["ups"][b])
        others = [(k, v) for k, v in layout["box"].items() if k not in ends]
        others += [(k, f["box"]) for k, f in frames.items() if k not in around]
        samples = [s for p, q in zip(pts, pts[1:]) for s in _curve(p, q)]
        for k, box in others:
            if any(_hits(s, t, box) for s, t in zip(samples, samples[1:])):
                bad.append(f"{a} -> {b} crosses {k}")
    return bad


@pytest.mark.parametrize("name", list(CASES))
def test_edges_cross_no_box_they_do_not_connect(name: str, tmp_path) -> None:
    make, shape = CASES[name]
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    t = gradtrace.trace(model, x, loss=lambda out: out.sum())
    with chromium_page() as page:
        errors, _ = open_page(page, t.render(tmp_path / f"{name}.html").as_uri())
        page.click("#expandall")
        expanded = page.evaluate("() => window.gradtraceLayout()")
        assert len(expanded["routes"]) == len({(e.src, e.dst) for e in t.edges})
        page.click("#collapseall")
        opening = page.evaluate("() => window.gradtraceLayout()")
        top = page.evaluate("() => window.gradtraceLayout(0)")
        assert crossings(expanded) == [], f"{name}, expanded"
        assert crossings(opening) == [], f"{name}, opening view"
        assert crossings(top) == [], f"{name}, only the root open"
        assert errors == []
