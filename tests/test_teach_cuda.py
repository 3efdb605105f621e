"""The teaching fields on a CUDA device: finite-part statistics on the real accelerator path, edge gradients.

Skipped where no CUDA device is present; run on the GPU machine with
`python3 -m pytest -m cuda tests/test_teach_cuda.py`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gradtrace
from gradtrace.recorder.stats import StatsBuffer

from .models import MLP
from .test_edges import OracleEdges, assert_edges_match
from .test_nonfinite import _finite_expected, _tensors

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("size", [5, 40, 5000, 100_000, 3_000_000])
def test_finite_part_statistics_on_cuda(size):
    tensors = [t.cuda() for t in _tensors(size)]
    buf = StatsBuffer()
    handles = [buf.add(t) for t in tensors]
    out = buf.materialize()
    for h, t in zip(handles, tensors):
        s = out[h]
        assert (s.nan, s.inf) == (int(t.isnan().sum()), int(t.isinf().sum()))
        want = _finite_expected(t.cpu())
        assert s.min == pytest.approx(want["min"], rel=1e-6) and s.max == pytest.approx(want["max"], rel=1e-6)
        for f in ("mean", "std", "norm"):
            assert math.isclose(getattr(s, f), want[f], rel_tol=1e-5, abs_tol=1e-6), (f, getattr(s, f), want[f])
    t = torch.full((size,), float("nan"), device="cuda")
    buf = StatsBuffer()
    h = buf.add(t)
    assert buf.materialize()[h].mean is None


def test_edge_gradients_on_cuda():
    torch.manual_seed(0)
    model = MLP().cuda()
    x, y = torch.randn(6, 8, device="cuda"), torch.tensor([0, 3, 1, 2, 0, 1], device="cuda")
    names = {id(p): n for n, p in model.named_parameters()}
    with gradtrace.capture(model) as cap:
        loss = F.nll_loss(model(x), y)
        oracle = OracleEdges(loss, names)
        loss.backward()
    oracle.remove()
    assert assert_edges_match(cap.trace, oracle) >= 5
    assert all(n.source for n in cap.trace.nodes if n.kind == "op")
