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
    finite = t[3:].double()  # the numbers describe the finite elements (tests/test_nonfinite.py has more)
    assert math.isclose(s.mean, finite.mean().item(), rel_tol=1e-5, abs_tol=1e-6) and not s.finite
    u = torch.randn(size)
    u[3] = float("inf")
    buf = StatsBuffer(accelerator_path=accelerator_path)
    h = buf.add(u)
    s = buf.materialize()[h]
    finite = torch.cat((u[:3], u[4:])).double()
    assert (s.nan, s.inf) == (0, 1) and s.max == finite.max().item() and math.isclose(s.norm, finite.norm().item(), rel_tol=1e-5)


def test_empty_tensor():
    s = stats_of(torch.empty(0, 3))
    assert s.numel == 0 and s.shape == (0, 3) and s.min is None and s.values == ()


def test_held_tensors_are_bounded_and_read_at_settle(monkeypatch):
    monkeypatch.setattr(stats_module, "STAGE_ELEMENTS", 10_000)
    buf = StatsBuffer()
    t = torch.ones(2000)
    handles = [buf.add(t)]
    buf.settle()  # what the recorder does before an op writes in place
    t.mul_(3)
    handles.append(buf.add(t))
    for _ in range(10):
        buf.add(torch.randn(2000))
        assert buf.held_elements < 10_000, "held tensors are reduced once they pass the bound"
    out = buf.materialize()
    assert out[handles[0]].mean == 1.0 and out[handles[1]].mean == 3.0
    assert buf.changed_after_add == 0


def test_a_write_after_add_is_counted_not_hidden():
    buf = StatsBuffer()
    t = torch.ones(100)
    h = buf.add(t)
    t.mul_(3)  # nobody settled first: the value read is the new one, and the buffer says so
    assert buf.materialize()[h].mean == 3.0
    assert buf.changed_after_add == 1


@pytest.mark.parametrize("held", [False, True], ids=["reduced at once", "held"])
@pytest.mark.parametrize("accelerator_path", [False, True], ids=["cpu path", "accelerator path"])
def test_same_elements_are_reduced_once(monkeypatch, accelerator_path, held):
    """A transpose, a reshape, a detached alias: the statistics of the block already reduced, with their own shape."""
    monkeypatch.setattr(stats_module, "SAME_CHECK_MIN", 16)
    if not held:
        monkeypatch.setattr(stats_module, "STAGE_MAX", {"cpu": 16})
        monkeypatch.setattr(stats_module, "STAGE_MAX_DEFAULT", 16)
    calls = []
    original = torch.aminmax
    monkeypatch.setattr(stats_module.torch, "aminmax", lambda *a, **k: calls.append(1) or original(*a, **k))
    w = torch.randn(30, 40)
    buf = StatsBuffer(accelerator_path=accelerator_path)
    hs = [buf.add(w), buf.add(w.t()), buf.add(w.reshape(40, 30)), buf.add(w.detach().permute(1, 0).unsqueeze(0))]
    if held:
        assert len(buf._held) == 1 and buf.held_elements == w.numel()
    else:
        assert len(calls) == 1
    out = buf.materialize()
    assert [out[h].shape for h in hs] == [(30, 40), (40, 30), (40, 30), (1, 40, 30)]
    want = expected(w)
    for h in hs:
        assert out[h].min == want["min"] and out[h].max == want["max"]
        assert math.isclose(out[h].norm, want["norm"], rel_tol=2e-6)


def test_views_of_a_slice_are_reduced_once(monkeypatch):
    """q, k, v cut from one projection and split into heads: strided views with gaps, each reduced once."""
    monkeypatch.setattr(stats_module, "SAME_CHECK_MIN", 16)
    monkeypatch.setattr(stats_module, "STAGE_MAX", {"cpu": 16})
    qkv = torch.randn(2, 5, 3 * 8)
    q, k, _ = qkv.split(8, dim=-1)
    buf = StatsBuffer()
    heads = q.reshape(2, 5, 2, 4).transpose(1, 2)  # the same elements as q, read in another order
    hs = [buf.add(q), buf.add(heads), buf.add(k)]
    assert len(buf._same_as) == 1, "heads reuses q's statistics; k is other memory"
    out = buf.materialize()
    for h, t in zip(hs, (q, heads, k)):
        want = expected(t)
        assert out[h].shape == tuple(t.shape) and out[h].min == want["min"] and out[h].max == want["max"]
        assert math.isclose(out[h].mean, want["mean"], rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(out[h].norm, want["norm"], rel_tol=1e-6)


def test_same_memory_is_not_same_elements(monkeypatch):
    """Reuse needs the same block, the same version, and the first tensor alive (so its memory was not reused)."""
    monkeypatch.setattr(stats_module, "SAME_CHECK_MIN", 16)
    w = torch.randn(30, 40)
    buf = StatsBuffer()
    h_full = buf.add(w)
    h_rows = buf.add(w[:10])  # a part of the block: its own statistics
    buf.settle()
    w.add_(1.0)  # a new version: its own statistics
    h_after = buf.add(w)
    h_strided = buf.add(w[:, ::2])  # every other element: its own statistics
    out = buf.materialize()
    assert math.isclose(out[h_rows].mean, w[:10].mean().item() - 1.0, rel_tol=1e-5)
    assert math.isclose(out[h_after].mean, out[h_full].mean + 1.0, rel_tol=1e-5)
    assert math.isclose(out[h_strided].norm, torch.linalg.vector_norm(w[:, ::2]).item(), rel_tol=1e-5)

    buf = StatsBuffer()
    a = torch.randn(30, 40)
    h_a = buf.add(a)
    del a  # its memory may go to the next tensor of that size: b must be reduced on its own either way
    b = torch.randn(30, 40) + 5.0
    h_b = buf.add(b)
    out = buf.materialize()
    assert math.isclose(out[h_b].mean, b.mean().item(), rel_tol=1e-5) and out[h_a].mean < 1.0


@pytest.mark.parametrize("rows", [3, 80], ids=["few rows (finished in Python)", "many rows (tensor arithmetic)"])
def test_a_group_of_held_tensors_matches_torch_row_by_row(rows):
    """Held tensors of one shape are reduced together; every row must still be its own tensor's statistics,
    the awkward ones too (NaN, infinity, all equal, a spread that Σx²/n − mean² would cancel)."""
    torch.manual_seed(1)
    tensors = [torch.randn(7, 9) * (i + 1) for i in range(rows)]
    tensors[0][0, 0] = float("nan")
    tensors[1][2, 3] = float("inf")
    tensors[2] = torch.full((7, 9), 0.5)
    if rows > 3:
        tensors[3] = 1000.0 + 1e-4 * torch.randn(7, 9)
    buf = StatsBuffer()
    handles = [buf.add(t) for t in tensors]
    assert buf.held_elements == rows * 63
    out = buf.materialize()
    for h, t in zip(handles, tensors):
        s = out[h]
        assert (s.nan, s.inf) == (int(t.isnan().sum()), int(t.isinf().sum()))
        if not s.finite:
            continue
        want = expected(t)
        assert s.min == want["min"] and s.max == want["max"]
        for f in ("mean", "std", "norm"):
            assert math.isclose(getattr(s, f), want[f], rel_tol=2e-6, abs_tol=1e-6), (f, getattr(s, f), want[f])


def _assorted_tensors():
    """Every kind of tensor the packed accelerator path must get right, many shapes in one buffer."""
    torch.manual_seed(2)
    ts = {
        "tiny": torch.tensor([1.5, -2.0, 0.25]),
        "one row, padded": torch.randn(3, 100),
        "bias": torch.randn(768),
        "several rows, padded tail": torch.randn(70_001) * 3 + 1,
        "rows exactly": torch.randn(2, 1 << 16),
        "near constant, padded": 1000.0 + 1e-3 * torch.randn(5000),
        "near constant, outlier first": torch.cat((torch.tensor([1e4]), 1000.0 + 1e-3 * torch.randn(70_000))),
        "all equal": torch.full((300,), 0.25),
        "transposed": torch.randn(50, 300).t(),
        "strided slice": torch.randn(200, 40)[:, ::3],
        "expanded": torch.randn(1, 500).expand(20, 500),
        "bfloat16": torch.randn(3000).bfloat16(),
        "float64": torch.randn(5000, dtype=torch.float64),
        "int": torch.arange(-600, 600),
        "nan": torch.randn(9000),
        "+inf": torch.randn(9000),
        "-inf tail": torch.randn(70_000),
        "both infs": torch.randn(100),
    }
    ts["nan"][4000] = float("nan")
    ts["+inf"][10] = float("inf")
    ts["-inf tail"][69_999] = float("-inf")
    ts["both infs"][0], ts["both infs"][99] = float("inf"), float("-inf")
    return ts


def test_packed_accelerator_path_matches_torch_tensor_by_tensor():
    """The accelerator packs tensors of every shape into rows of a few widths, pads the last row of each and
    combines rows on the host: every tensor's statistics must still be its own (torch in double precision)."""
    ts = _assorted_tensors()
    buf = StatsBuffer(accelerator_path=True)
    handles = {name: buf.add(t) for name, t in ts.items()}
    out = buf.materialize()
    for name, t in ts.items():
        s = out[handles[name]]
        x = t.double()
        assert s.shape == tuple(t.shape) and s.numel == t.numel(), name
        assert (s.nan, s.inf) == (int(x.isnan().sum()), int(x.isinf().sum())), name
        if s.nan or s.inf:
            # The statistics of the finite elements (TensorStats' rule), as torch computes them on those.
            f = x[x.isfinite()]
            assert s.min == f.min().item() and s.max == f.max().item(), name
            want = {"mean": f.mean().item(), "std": f.std(correction=0).item(), "norm": f.norm().item()}
            for k in ("mean", "std", "norm"):
                assert math.isclose(getattr(s, k), want[k], rel_tol=2e-6, abs_tol=1e-6), (name, k, getattr(s, k), want[k])
            continue
        assert s.min == x.min().item() and s.max == x.max().item(), name
        want = expected(t)
        for f in ("mean", "std", "norm"):
            assert math.isclose(getattr(s, f), want[f], rel_tol=2e-6, abs_tol=1e-6), (name, f, getattr(s, f), want[f])
        if t.numel() <= 16:
            assert s.values == tuple(x.reshape(-1).tolist()), name


def _launches(fn) -> int:
    """How many ATen kernels ``fn`` ran on the CPU: a proxy for kernel launches on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    # Kernels, not the views and metadata ops that launch nothing.
    free = {"aten::view", "aten::reshape", "aten::as_strided", "aten::slice", "aten::select", "aten::unbind",
            "aten::empty", "aten::empty_strided", "aten::unsqueeze", "aten::detach", "aten::alias", "aten::t",
            "aten::_reshape_alias", "aten::lift_fresh", "aten::resize_", "aten::expand", "aten::narrow",
            "aten::transpose", "aten::permute", "aten::squeeze", "aten::result_type", "aten::_unsafe_view",
            "aten::as_strided_", "aten::squeeze_", "aten::unsqueeze_", "aten::detach_", "aten::to", "aten::_to_copy"}
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::") and e.key not in free)


def test_accelerator_launches_do_not_grow_with_the_number_of_tensors():
    """On a GPU each kernel launch costs microseconds of host time: statistics of many tensors of many shapes
    must take a few launches per buffer, not a dozen per tensor (nor per shape)."""
    torch.manual_seed(3)

    def run(count: int) -> int:
        # Every row width of the packed buffer, and shapes that differ from tensor to tensor.
        ts = [t for i in range(count) for t in (torch.randn(3 + i % 5), torch.randn(7 + i, 9), torch.randn(30 + i, 20),
                                                 torch.randn(5000 + i))]
        buf = StatsBuffer(accelerator_path=True)

        def work() -> None:
            for t in ts:
                buf.add(t)
            buf.settle()

        n = _launches(work)
        buf.materialize()
        return n

    few, many = run(5), run(50)
    assert many <= 150, f"{many} kernels for 200 tensors"
    assert many - few <= 10, f"{few} kernels for 20 tensors, {many} for 200: launches grow with the tensors"


@pytest.mark.parametrize("case", ["mlp", "cnn", "gpt", "lstm"])
def test_a_whole_trace_on_the_accelerator_path_equals_torch(monkeypatch, case):
    """Capture with the accelerator's statistics (packed rows, settled in the middle of the step, one copy at
    the end): every value and gradient of every op still equals torch's."""
    import copy
    import functools

    import gradtrace
    from gradtrace.recorder import session

    from .oracle import assert_ops_match, reference_step
    from .test_capture import CASES

    monkeypatch.setattr(session, "StatsBuffer", functools.partial(StatsBuffer, accelerator_path=True))
    monkeypatch.setattr(stats_module, "ACCELERATOR_STAGE_ELEMENTS", 1 << 14)  # settle many times per step
    name, model, inputs, loss = next(c for c in CASES if c[0] == case)
    ref = reference_step(copy.deepcopy(model), inputs, loss)
    assert_ops_match(gradtrace.trace(model, *inputs, loss=loss), ref)


def test_a_huge_expand_is_reduced_where_it_lies(monkeypatch):
    """Too large to pack, and repeats in memory: statistics through the strides, with no copy of its elements."""
    monkeypatch.setattr(stats_module, "STAGE_MAX_DEFAULT", 1000)
    row = torch.randn(1, 3000)
    big = row.expand(5000, 3000)  # 15 M elements in 3,000 of memory
    seen = []
    original = torch.Tensor.reshape
    monkeypatch.setattr(torch.Tensor, "reshape", lambda self, *a: seen.append(self.numel()) or original(self, *a))
    buf = StatsBuffer(accelerator_path=True)
    h = buf.add(big)
    s = buf.materialize()[h]
    assert not [n for n in seen if n >= big.numel()], "the expand was copied"
    want = expected(row)
    assert s.min == want["min"] and s.max == want["max"] and s.numel == big.numel()
    assert math.isclose(s.mean, want["mean"], rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(s.std, want["std"], rel_tol=1e-5)


def test_a_parameters_gradient_is_not_copied_for_its_statistics():
    """AccumulateGrad makes the incoming gradient the parameter's .grad without a copy when nobody else
    holds it. Holding it for statistics cost a copy (a kernel and the memory) per parameter on every step."""
    import gradtrace

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(32, 8)
    arrived: dict[str, int] = {}
    for name, p in net.named_parameters():
        p.register_hook(lambda g, name=name: arrived.__setitem__(name, g.data_ptr()))
    with gradtrace.capture(net) as cap:
        net(x).pow(2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad.data_ptr() == arrived[name], f"{name}: its gradient was copied"
    grads = {n.label: n.grad for n in cap.trace.nodes if n.kind == "param"}
    for name, p in net.named_parameters():
        want = expected(p.grad)
        assert grads[name].min == want["min"] and grads[name].max == want["max"], name
        assert math.isclose(grads[name].norm, want["norm"], rel_tol=2e-6), name


def test_small_tensors_wait_for_more_of_their_kind(monkeypatch):
    """Every packed reduction costs a dozen launches: a bias or a scalar must not take one of its own each
    time the large tensors fill a buffer. Small ones are reduced together, later; all still equal torch."""
    from gradtrace.recorder import packed

    monkeypatch.setattr(stats_module, "ACCELERATOR_STAGE_ELEMENTS", 1 << 17)  # a large buffer per 2 tensors
    widths = []
    original = packed.PackedRows._reduce_rows
    monkeypatch.setattr(packed.PackedRows, "_reduce_rows", lambda self, w, g: widths.append(w) or original(self, w, g))
    torch.manual_seed(4)
    ts = [t for i in range(20) for t in (torch.randn(70_000), torch.randn(64 + i), torch.tensor(float(i)))]
    buf = StatsBuffer(accelerator_path=True)
    handles = [buf.add(t) for t in ts]
    assert buf.held_elements < 1 << 18, "large tensors were reduced as they came"
    out = buf.materialize()
    small = [w for w in widths if w <= 4096]
    assert len(small) <= 3, f"small tensors reduced {len(small)} times: {widths}"
    for h, t in zip(handles, ts):
        want = expected(t)
        assert out[h].min == want["min"] and out[h].max == want["max"]
        assert math.isclose(out[h].mean, want["mean"], rel_tol=2e-6, abs_tol=1e-6)
        assert math.isclose(out[h].std, want["std"], rel_tol=2e-6, abs_tol=1e-6)


def test_edges_into_parameters_carry_their_gradient_without_a_copy():
    """The gradient a node sends along its edge into a parameter is recorded on the edge, and holding it
    for that must not make AccumulateGrad copy it either (the edge takes the statistics read from .grad)."""
    import gradtrace

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(32, 8)
    arrived: dict[str, int] = {}
    for name, p in net.named_parameters():
        p.register_hook(lambda g, name=name: arrived.__setitem__(name, g.data_ptr()))
    with gradtrace.capture(net) as cap:
        net(x).pow(2).mean().backward()
    t = cap.trace
    for name, p in net.named_parameters():
        assert p.grad.data_ptr() == arrived[name], f"{name}: its gradient was copied"
        (node,) = [n for n in t.nodes if n.kind == "param" and n.label == name]
        (edge,) = [e for e in t.edges if e.src == node.key]
        want = expected(p.grad)
        assert edge.grad is not None, f"{name}: the gradient sent to it is missing"
        assert edge.grad.min == want["min"] and edge.grad.max == want["max"], name
        assert math.isclose(edge.grad.norm, want["norm"], rel_tol=2e-6), name


@pytest.mark.parametrize("values", [[1e154, 2e154, -3e154], [1.5e308, 1.5e308, -1e308], [1e-200, 2e-200, -5e-201],
                                    [1e20, -3e20, 2e20, 1e19]])
@pytest.mark.parametrize("n", [40, 5000, 200_000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_path_huge_and_tiny_values(monkeypatch, values, n, dtype):
    """Rows of huge or tiny values (squares out of the dtype's range), beside a NaN and an infinity: the
    accelerator path's finite-part statistics are those torch computes in double precision, scaled."""
    monkeypatch.setattr(stats_module, "STAGE_MAX_DEFAULT", 100_000)  # 200,000 elements: reduced alone
    v = torch.tensor((values * n)[:n], dtype=torch.float64)
    if dtype == torch.float32 and v.abs().max() > 1e38:
        return
    x = v.to(dtype)
    x[7] = math.nan
    x[n // 2] = -math.inf
    buf = StatsBuffer(accelerator_path=True)
    h = buf.add(x)
    s = buf.materialize()[h]
    f = x.double()[x.isfinite()]
    assert (s.nan, s.inf) == (1, 1)
    assert s.min == f.min().item() and s.max == f.max().item()
    scale = f.abs().max().item()
    if scale == 0.0:  # (float32 flushed the tiny values to zero)
        assert s.mean == 0.0 and s.std == 0.0 and s.norm == 0.0
        return
    y = f / scale  # torch in double precision, on values scaled into range
    mean, std, sq = y.mean().item() * scale, y.std(correction=0).item() * scale, y.square().sum().item()
    norm = math.inf if math.isinf(sq * scale * scale) else math.sqrt(sq) * scale
    # float32 is reduced in float32: its sums are good to its precision, relative to the largest value.
    close = {"rel_tol": 1e-9 if dtype == torch.float64 else 1e-5, "abs_tol": 0.0 if dtype == torch.float64 else 1e-6 * scale}
    assert math.isclose(s.mean, mean, **close), (s.mean, mean)
    assert math.isclose(s.std, std, **close), (s.std, std)
    assert s.norm == norm if math.isinf(norm) else math.isclose(s.norm, norm, **close), (s.norm, norm)


def test_a_gradient_added_into_an_existing_grad_is_not_copied(monkeypatch):
    """With a .grad already there, AccumulateGrad adds into it and never takes the incoming gradient
    over: that gradient is held like any other, not copied at once (a launch per tensor on a GPU)."""
    import gradtrace

    copied = []
    original = StatsBuffer.add_now
    monkeypatch.setattr(StatsBuffer, "add_now", lambda self, t: copied.append(t.shape) or original(self, t))
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 4))

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = w

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return ((x @ self.w).tanh() @ self.w).sum()  # w feeds two nodes: the engine sums its gradients

    m, x = Tied(), torch.randn(3, 4)
    m(x).backward()
    (incoming,) = torch.autograd.grad(m(x), w)  # torch's gradient of this step, .grad untouched
    with gradtrace.capture(m) as cap:
        m(x).backward()
    assert not copied
    (leaf,) = [n for n in cap.trace.nodes if n.kind == "param"]
    want = expected(incoming)
    assert leaf.grad.min == want["min"] and leaf.grad.max == want["max"]
