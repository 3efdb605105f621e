"""The replay page's groups for loops: every call of one cell folds into one ×K group, and building them ends.

An unrolled GRUCell (one module called at every time step) sent the hierarchy's search for folds inside
folds into an endless loop: the calls are one module, so "inside" all of them was the same set again.
"""

from __future__ import annotations

import signal

import torch
from torch import nn

import gradtrace
from gradtrace.render.hierarchy import build_hierarchy
from gradtrace.render.html import to_html


def _hung(signum, frame):
    raise TimeoutError("building the page's groups did not end within 60 s")


class _Recurrent(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell
        self.out = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[1], 16)
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
        return self.out(h)


def test_an_unrolled_cell_folds_into_one_group_and_the_page_is_written():
    for cell in (nn.GRUCell(8, 16), nn.RNNCell(8, 16)):
        torch.manual_seed(0)
        steps = 40
        t = gradtrace.trace(_Recurrent(cell), torch.randn(steps, 2, 8), loss=lambda o: o.pow(2).mean())
        old = signal.signal(signal.SIGALRM, _hung)
        signal.alarm(60)  # (it looped forever: a hang must fail the test, not stall the suite)
        try:
            h = build_hierarchy(t, t.forward_order())
            page = to_html(t)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        folds = [g for g in h.groups if g.kind == "fold"]
        assert folds, "the 40 calls of the cell fold"
        # Every call but the first (which reads the zero state, made by no op) is in one fold.
        assert max(g.repeat for g in folds) >= steps - 1
        assert "gradtrace-data" in page
