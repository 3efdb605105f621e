"""Capture on a CUDA device: torch is still the oracle, and nothing syncs per op.

Skipped where no CUDA device is present (CI has none); run on the GPU machine
with `python3 -m pytest -m cuda tests/test_cuda.py`.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import gradtrace
from gradtrace.recorder.stats import stats_of

from .models import GPT, MLP, Block
from .oracle import reference_step

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DEV = torch.device("cuda")


def close(a, b, rel=1e-5):
    """Equal where a reduction's order cannot matter (shape, extremes, counts, exact values); close elsewhere."""
    assert a is not None and b is not None
    assert (a.shape, a.dtype, a.numel, a.nan, a.inf) == (b.shape, b.dtype, b.numel, b.nan, b.inf)
    assert a.min == b.min and a.max == b.max and a.values == b.values
    for f in ("mean", "std", "norm"):
        x, y = getattr(a, f), getattr(b, f)
        if math.isnan(y):
            assert math.isnan(x), (f, x, y)
            continue
        assert math.isclose(x, y, rel_tol=rel, abs_tol=1e-6 * (b.norm or 1) / math.sqrt(max(b.numel, 1))), (f, x, y)


def torch_close(s, t: torch.Tensor, rel: float = 1e-5) -> None:
    """``s`` describes ``t``: compared with torch's own reductions in double precision on the CPU
    (not with gradtrace's statistics of it, which would share the code under test)."""
    x = t.detach().double().cpu()
    assert s is not None and s.shape == tuple(t.shape) and s.numel == t.numel()
    assert (s.nan, s.inf) == (int(x.isnan().sum()), int(x.isinf().sum()))
    if t.numel() <= 16:
        assert [str(v) for v in s.values] == [str(v) for v in x.reshape(-1).tolist()]  # (str: nan equals nan)
    x = x[x.isfinite()]  # the statistics describe the finite elements (TensorStats)
    if x.numel() == 0:
        assert (s.min, s.max, s.mean, s.std, s.norm) == (None,) * 5
        return
    assert s.min == x.min().item() and s.max == x.max().item()
    want = {"mean": x.mean().item(), "std": x.std(correction=0).item(), "norm": torch.linalg.vector_norm(x).item()}
    rms = want["norm"] / math.sqrt(max(x.numel(), 1))
    for f, y in want.items():
        assert math.isclose(getattr(s, f), y, rel_tol=rel, abs_tol=1e-6 * rms + 1e-12), (f, getattr(s, f), y)


def _cases():
    torch.manual_seed(0)
    y = torch.randint(0, 4, (6,), device=DEV)
    yield MLP().to(DEV), (torch.randn(6, 8, device=DEV),), lambda out: F.nll_loss(out, y)
    target = torch.randn(2, 5, 16, device=DEV)
    yield Block(16, 2).to(DEV), (torch.randn(2, 5, 16, device=DEV),), lambda out: F.mse_loss(out, target)


@pytest.mark.parametrize("case", range(2))
def test_values_and_gradients_equal_torch_on_cuda(case):
    model, inputs, loss = list(_cases())[case]
    ref = reference_step(copy.deepcopy(model), inputs, loss)
    t = gradtrace.trace(model, *inputs, loss=loss)
    ops = sorted((n for n in t.nodes if n.kind == "op"), key=lambda n: n.forward_step)
    assert len(ops) == ref.n_ops == len(ref.ops)
    for node, expected in zip(ops, ref.ops):
        assert node.grad_fn == expected.grad_fn
        for nr, value in expected.values.items():
            torch_close(node.values[nr], value)
            if expected.grads[nr] is not None:
                torch_close(node.grads[nr], expected.grads[nr])
    assert all(n.value.device.startswith("cuda") for n in t.nodes if n.value is not None)


def test_bit_identical_gradients_on_cuda():
    model, inputs, loss = list(_cases())[1]
    plain = copy.deepcopy(model)
    loss(plain(*inputs)).backward()
    with gradtrace.capture(model):
        loss(model(*inputs)).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.equal(p.grad, q.grad), name


def _syncs(layers: int) -> int:
    torch.manual_seed(0)
    tok = torch.randint(0, 64, (2, 8), device=DEV)
    model = GPT(vocab=64, dim=32, layers=layers, heads=2, context=8).to(DEV)
    lf = lambda out: F.cross_entropy(out.flatten(0, 1), tok.flatten())  # noqa: E731
    gradtrace.trace(model, tok, loss=lf)  # warm-up
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            gradtrace.trace(model, tok, loss=lf)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_no_sync_per_op():
    # The copies to the host at the end are a few; none happens per op, so 6x the layers adds none.
    small, large = _syncs(2), _syncs(12)
    assert small <= 4 and large <= 4, f"host syncs: {small} for 2 layers, {large} for 12"


def test_trace_keeps_no_device_memory():
    torch.manual_seed(0)
    model = MLP(256, 512, 10).to(DEV)
    x, y = torch.randn(512, 256, device=DEV), torch.randint(0, 10, (512,), device=DEV)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    t = gradtrace.trace(model, x, loss=lambda out: F.nll_loss(out, y))
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before <= 4096, "the trace holds statistics, not tensors"
    assert len(t.nodes) > 5


def test_packed_statistics_match_torch_on_cuda():
    """The accelerator path's kernels on a real device (cat of many inputs, pinned copies, where into itself):
    every kind of tensor, many shapes in one packed buffer, each against torch."""
    from gradtrace.recorder.stats import StatsBuffer

    from .test_stats import _assorted_tensors

    ts = {k: v.to(DEV) for k, v in _assorted_tensors().items()}
    ts["big"] = torch.randn(4100, 1200, device=DEV)  # reduced alone
    ts["big bf16 transposed"] = torch.randn(3000, 2000, device=DEV).bfloat16().t()
    buf = StatsBuffer()
    handles = {k: buf.add(t) for k, t in ts.items()}
    out = buf.materialize()
    for k, t in ts.items():
        torch_close(out[handles[k]], t)
        assert out[handles[k]].device.startswith("cuda"), k


def test_bf16_autocast_trace_equals_torch_on_cuda():
    """A bfloat16 autocast step: values and gradients in bfloat16 and float32, each against torch."""
    torch.manual_seed(0)
    block = Block(64, 4).to(DEV)
    x, target = torch.randn(4, 16, 64, device=DEV), torch.randn(4, 16, 64, device=DEV)

    def model(v):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return block(v)

    loss = lambda out: F.mse_loss(out.float(), target)  # noqa: E731
    ref = reference_step(model, (x,), loss)
    t = gradtrace.trace(model, x, loss=loss)
    ops = sorted((n for n in t.nodes if n.kind == "op"), key=lambda n: n.forward_step)
    assert any(n.value is not None and n.value.dtype == "bfloat16" for n in ops)
    for expected in ref.ops:
        node = ops[expected.position]
        for nr, value in expected.values.items():
            torch_close(node.values[nr], value, rel=1e-4)
            if expected.grads[nr] is not None:
                torch_close(node.grads[nr], expected.grads[nr], rel=1e-4)
