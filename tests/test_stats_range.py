"""Statistics of values at the edges of their dtype's range: right, and never an exception.

The reference is exact arithmetic (``fractions.Fraction``) on the tensor's values, and, for the
norm, torch's own double-precision ``vector_norm``: infinite exactly where torch says so.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtrace
from gradtrace.recorder.stats import stats_of

_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _true_moments(values: list[float]) -> tuple[float, float, float]:
    """Mean, population std and norm of finite values, exactly, rounded once (inf if too large)."""
    exact = [Fraction(v) for v in values]
    n = len(exact)
    mean = sum(exact) / n
    var = sum((v - mean) ** 2 for v in exact) / n
    sq = sum(v * v for v in exact)

    def root(q: Fraction) -> float:
        if q == 0:
            return 0.0
        # sqrt of a rational beyond the float range: scale by an even power of two first.
        e = (q.numerator.bit_length() - q.denominator.bit_length()) // 2 * 2
        if abs(e) <= 900:
            return math.sqrt(float(q))
        r = math.sqrt(float(q / Fraction(2) ** e))
        try:
            return math.ldexp(r, e // 2)
        except OverflowError:
            return math.inf

    try:
        m = float(mean)
    except OverflowError:
        m = math.copysign(math.inf, mean)
    return m, root(var), root(sq)


def _close(a: float, b: float, scale: float = 0.0, n: int = 0, rel: float = 1e-9) -> bool:
    """a is b to 1e-9, or within the rounding a float64 sum of ``n`` values of magnitude up to ``scale`` makes.

    The second bound is for cancellation: a mean of -1.1e296 taken from values of 1.8e308 and -1.8e308
    can only be right to about n·eps·1.8e308 in float64, as torch's own mean is.
    """
    if math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=4 * n * sys.float_info.epsilon * scale) or (b == 0.0 and a == 0.0)


def _check(x: torch.Tensor) -> None:
    s = stats_of(x)  # never raises
    d = x.double()
    values = d.flatten().tolist()
    assert s.nan == int(torch.isnan(d).sum()) and s.inf == int(torch.isinf(d).sum())
    # The statistics describe the finite elements (TensorStats), None when there is none.
    finite = d[torch.isfinite(d)]
    values = finite.tolist()
    if not values:
        assert (s.min, s.max, s.mean, s.std, s.norm) == (None,) * 5
        return
    assert s.min == min(values) and s.max == max(values)
    torch_norm = torch.linalg.vector_norm(finite).item()
    # float16/bfloat16/float32 tensors are reduced in float32 (by design, for speed), float64 in float64.
    rel = 1e-9 if x.dtype == torch.float64 else 1e-6
    mean, std, norm = _true_moments(values)
    if math.isinf(torch_norm):
        assert s.norm == math.inf, "inf where torch's double-precision norm is inf"
    else:
        assert _close(s.norm, norm, rel=rel), (s.norm, norm)
    scale, n = max(abs(v) for v in values), len(values)
    assert _close(s.mean, mean, scale, n, rel), (s.mean, mean)
    assert _close(s.std, std, scale, n, rel), (s.std, std)


@pytest.mark.parametrize("values", [
    [1e154, 2e154, -3e154],
    [1.5e308, 1.5e308],
    [1e300, -1e300, 5e299],
    [5e-324, 1e-310, 2e-320],
    [1e-200, 2e-200],
    [1e20, -3e20, 2e20],
])
@pytest.mark.parametrize("n", [1, 3, 40, 5000, 100_000])
def test_huge_and_tiny_values(values, n):
    """A few exact values (held, Python path), rows of many (tensor path) and large tensors."""
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor((values * n)[: max(n, len(values))], dtype=torch.float64).to(dtype)
        _check(x)


def test_trace_of_huge_float64_values_does_not_raise():
    x = torch.tensor([1e154, 2e154, -3e154], dtype=torch.float64, requires_grad=True)
    t = gradtrace.trace(lambda v: (v * 1).sum(), x)
    (mul,) = t.find("mul")
    _, std, _ = _true_moments(x.tolist())
    assert t.node(mul).value.values == tuple(x.tolist())
    assert _close(t.node(mul).value.std, std)
    assert t.node(mul).value.norm == math.inf  # torch.linalg.vector_norm(x) is inf in float64


def _floats(dtype: torch.dtype):
    info = torch.finfo(dtype)
    finite = st.floats(min_value=-info.max, max_value=info.max, allow_nan=False, allow_infinity=False, width=64)
    special = st.sampled_from([0.0, -0.0, info.max, -info.max, info.tiny, info.tiny / 4, info.eps,
                               math.nan, math.inf, -math.inf, 1e154, 1e-300])
    return st.one_of(finite, special)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(_DTYPES + [torch.int64, torch.int32, torch.bool]), st.data())
def test_any_dtype_and_magnitude(dtype, data):
    n = data.draw(st.sampled_from([1, 2, 5, 16, 17, 100, 3000]))
    if dtype == torch.bool:
        x = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    elif not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        x = torch.tensor(data.draw(st.lists(st.integers(info.min, info.max), min_size=n, max_size=n)), dtype=dtype)
    else:
        x = torch.tensor(data.draw(st.lists(_floats(dtype), min_size=n, max_size=n)), dtype=torch.float64).to(dtype)
    _check(x)
