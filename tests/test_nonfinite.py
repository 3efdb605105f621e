"""NaN and infinity: the counts, and the statistics of the finite part beside them, on both stats paths."""

from __future__ import annotations

import math

import pytest
import torch

from gradtrace.recorder.stats import StatsBuffer


def _finite_expected(t: torch.Tensor) -> dict[str, float]:
    f = t[torch.isfinite(t)].double()
    return {"min": f.min().item(), "max": f.max().item(), "mean": f.mean().item(),
            "std": f.std(correction=0).item(), "norm": f.norm().item()}


def _tensors(size: int) -> list[torch.Tensor]:
    torch.manual_seed(size)
    a = torch.randn(size) * 3 + 1
    a[0], a[size // 2] = float("nan"), float("inf")
    b = torch.randn(size)
    b[1] = float("-inf")
    c = torch.randn(size)
    c[-1] = float("nan")
    d = torch.randn(size)
    d[0], d[1], d[2] = float("inf"), float("-inf"), float("nan")
    return [a, b, c, d]


@pytest.mark.parametrize("accelerator_path", [False, True], ids=["cpu path", "accelerator path"])
@pytest.mark.parametrize("size", [5, 40, 5000, 100_000], ids=["exact", "held", "held large", "large"])
def test_stats_of_the_finite_part_match_torch(size, accelerator_path):
    tensors = _tensors(size)
    buf = StatsBuffer(accelerator_path=accelerator_path)
    handles = [buf.add(t) for t in tensors]
    out = buf.materialize()
    for h, t in zip(handles, tensors):
        s = out[h]
        assert (s.nan, s.inf) == (int(t.isnan().sum()), int(t.isinf().sum()))
        assert s.numel == t.numel() and not s.finite
        want = _finite_expected(t)
        assert s.min == pytest.approx(want["min"], rel=1e-6) and s.max == pytest.approx(want["max"], rel=1e-6)
        for f in ("mean", "std", "norm"):
            assert math.isclose(getattr(s, f), want[f], rel_tol=1e-5, abs_tol=1e-6), (f, getattr(s, f), want[f])
        if size <= 16:
            assert [v for v in s.values if not math.isnan(v)] == [v for v in t.tolist() if not math.isnan(v)]


@pytest.mark.parametrize("accelerator_path", [False, True], ids=["cpu path", "accelerator path"])
@pytest.mark.parametrize("size", [3, 40, 100_000])
def test_no_finite_element_gives_no_numbers(size, accelerator_path):
    t = torch.full((size,), float("nan"))
    t[0] = float("inf")
    buf = StatsBuffer(accelerator_path=accelerator_path)
    h = buf.add(t)
    s = buf.materialize()[h]
    assert (s.nan, s.inf) == (size - 1, 1)
    assert (s.min, s.max, s.mean, s.std, s.norm) == (None, None, None, None, None)


def test_nan_in_a_trace_keeps_the_finite_statistics():
    import gradtrace

    w = torch.tensor([1.0, -2.0, 0.0, 4.0], requires_grad=True)
    t = gradtrace.trace(lambda x: (x.log() * 2).sum(), w)  # log(-2) is NaN, log(0) is -inf
    log = next(n for n in t.nodes if n.label == "log")
    expected = _finite_expected(torch.tensor([1.0, -2.0, 0.0, 4.0]).log())
    assert (log.value.nan, log.value.inf) == (1, 1)
    assert log.value.mean == pytest.approx(expected["mean"]) and log.value.max == pytest.approx(expected["max"])
    back = gradtrace.Trace.from_json(t.to_json())
    assert back.node(log.key).value.to_dict() == log.value.to_dict()
