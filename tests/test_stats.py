"""TensorStats against plain torch reductions, on every code path of the statistics buffer."""

from __future__ import annotations

import math

import pytest
import torch

from gradtrace.recorder import stats as stats_module
from gradtrace.recorder.stats import StatsBuffer, stats_of


def expected(t: torch.Tensor):
    x = t.detach().abs().double() if t.is_complex() else t.detach().double()
    return {
        "min": x.min().item(), "max": x.max().item(), "mean": x.mean().item(),
        "std": x.std(correction=0).item(), "norm": torch.linalg.vector_norm(x).item(),
    }


TENSORS = {
    "scalar": torch.tensor(3.5),
    "small": torch.tensor([1.0, -2.0, 4.0]),
    "staged": torch.randn(40, 50),
    "transposed view": torch.randn(300, 400).t(),
    "large": torch.randn(300, 400),
    "near constant": 1000.0 + 1e-3 * torch.randn(5000),
    "all equal": torch.full((70_000,), 0.25),
    "zeros": torch.zeros(100),
    "half": torch.randn(64, 64).half(),
    "bfloat16": torch.randn(100).bfloat16(),
    "float64": torch.randn(1000, dtype=torch.float64),
    "int": torch.arange(-50, 50),
    "bool": torch.tensor([True, False, True] * 10),
    "complex": torch.randn(30, dtype=torch.complex64),
}


@pytest.mark.parametrize("accelerator_path", [False, True], ids=["cpu path", "accelerator path"])
@pytest.mark.parametrize("name", list(TENSORS))
def test_stats_match_torch(name, accelerator_path):
    t = TENSORS[name]
    buf = StatsBuffer(accelerator_path=accelerator_path)
    h = buf.add(t)
    s = buf.materialize()[h]
    assert s.shape == tuple(t.shape) and s.numel == t.numel() and s.dtype == str(t.dtype).removeprefix("torch.")
    assert s.nan == 0 and s.inf == 0
    want = expected(t)
    assert s.min == want["min"] and s.max == want["max"]
    for f in ("mean", "std", "norm"):
        assert math.isclose(getattr(s, f), want[f], rel_tol=2e-6, abs_tol=1e-6), (f, getattr(s, f), want[f])
    if t.numel() <= 16 and not t.is_complex():
        assert s.values == tuple(float(v) for v in t.reshape(-1).double().tolist())
    else:
        assert s.values is None


@pytest.mark.parametrize("accelerator_path", [False, True], ids=["cpu path", "accelerator path"])
@pytest.mark.parametrize("size", [5, 5000, 100_000])
def test_nan_and_inf_counts(size, accelerator_path):
    t = torch.randn(size)
    t[0], t[1], t[2] = float("nan"), float("inf"), float("-inf")
    buf = StatsBuffer(accelerator_path=accelerator_path)
    h = buf.add(t)
    s = buf.materialize()[h]
    assert (s.nan, s.inf) == (1, 2)
    assert math.isnan(s.mean) and math.isnan(s.norm) and not s.finite
    u = torch.randn(size)
    u[3] = float("inf")
    buf = StatsBuffer(accelerator_path=accelerator_path)
    h = buf.add(u)
    s = buf.materialize()[h]
    assert (s.nan, s.inf) == (0, 1) and s.max == math.inf and s.norm == math.inf and math.isnan(s.std)


def test_empty_tensor():
    s = stats_of(torch.empty(0, 3))
    assert s.numel == 0 and s.shape == (0, 3) and s.min is None and s.values == ()


def test_staged_copies_are_private_and_bounded(monkeypatch):
    monkeypatch.setattr(stats_module, "STAGE_ELEMENTS", 10_000)
    buf = StatsBuffer()
    t = torch.ones(2000)
    handles = [buf.add(t)]
    t.mul_(3)  # changed in place after it was recorded: the statistic keeps the old value
    handles.append(buf.add(t))
    for _ in range(10):
        buf.add(torch.randn(2000))
    assert buf._staged < 10_000, "staged copies are reduced once they pass the bound"
    out = buf.materialize()
    assert out[handles[0]].mean == 1.0 and out[handles[1]].mean == 3.0
