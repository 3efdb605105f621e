"""Every autograd corner case: traced with torch's values and gradients, or refused clearly; nothing left behind."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradtrace
from gradtrace.recorder.stats import stats_of

from .leave_no_trace import assert_untouched, snapshot
from .oracle import autograd_walk, same


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    """After every case here, success or failure: no hook, mode or patch of gradtrace's remains."""
    before = snapshot()
    yield
    assert_untouched(before)


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return 2 * a * g


@dataclass
class Output:
    logits: torch.Tensor
    label: int = 0


def _inplace_view(v):
    h = v * 1
    h[0].mul_(2)
    return h.sum()


def _iadd(v):
    h = v * 2
    h += 1
    return h.sum()


def _no_grad_inside(v):
    with torch.no_grad():
        c = v * 2
    return (v * c).sum()


def _inference_inside(v):
    with torch.inference_mode():
        c = torch.ones(4, 3) * 2
    return (v * c.clone()).sum()


LIN = nn.Linear(3, 3)

# name -> function of one input tensor (4×3, requires grad)
FUNCTIONS = {
    "relu_ in place": lambda v: (v * 2).relu_().sum(),
    "+= in place": _iadd,
    "masked_fill_": lambda v: (v * 1).masked_fill_(v > 0, 0.0).sum(),
    "in-place op on a view": _inplace_view,
    "chain of views": lambda v: v.view(12).view(3, 4).t().reshape(-1)[2:].sum(),
    "as_strided": lambda v: v.as_strided((2, 2), (1, 2)).sum(),
    "expand": lambda v: (v[:, :1].expand(4, 5) * torch.arange(5.0)).sum(),
    "custom autograd.Function": lambda v: Square.apply(v * 1).sum(),
    "checkpoint": lambda v: checkpoint(LIN, v, use_reentrant=False).sum(),
    "checkpoint (reentrant)": lambda v: checkpoint(LIN, v * 1, use_reentrant=True).sum(),
    "no_grad inside": _no_grad_inside,
    "inference_mode inside": _inference_inside,
    "detach inside": lambda v: (v * v.detach()).sum(),
    "split": lambda v: sum(p.sum() * (i + 1) for i, p in enumerate(v.split(2))),
    "unbind": lambda v: sum(p.sum() * (i + 1) for i, p in enumerate(v.unbind(0))),
    "dict output": lambda v: {"a": v * 2, "b": v.sum(), "n": 3},
    "dataclass output": lambda v: Output(v * 3),
    "argmax beside floats": lambda v: (v * 2, v.argmax()),
    "int and bool tensors": lambda v: (v * (v > 0).float() + torch.arange(3)).sum(),
    "complex": lambda v: torch.view_as_complex(torch.stack([v, v * 2], -1)).abs().sum(),
    "float16": lambda v: (v.half() * 2).float().sum(),
    "bfloat16": lambda v: (v.bfloat16() * 2).float().sum(),
    "zero-size tensor": lambda v: (v[:0] * 2).sum() + v.sum(),
    "0-d intermediate": lambda v: (v.sum() * 3).exp(),
    "nan in the forward": lambda v: (v - 10).log().sum(),
    "inf in the backward": lambda v: torch.sqrt(torch.relu(v) * 0).sum(),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_corner_case_matches_torch(name):
    fn = FUNCTIONS[name]
    torch.manual_seed(0)
    base = torch.randn(4, 3)
    x_plain = base.clone().requires_grad_()
    out = fn(x_plain)
    loss = out if isinstance(out, torch.Tensor) and out.numel() == 1 else None
    if loss is None:
        from gradtrace.recorder.api import _loss_tensor

        loss = _loss_tensor(out, None)
    ops, leaves = autograd_walk(loss)
    loss.backward()

    x = base.clone().requires_grad_()
    before = snapshot(None, x)
    t = gradtrace.trace(fn, x)
    assert_untouched(before, None, x)
    (leaf,) = [n for n in t.nodes if n.kind == "leaf"]
    assert same(leaf.grad, stats_of(x_plain.grad)), "the input's gradient is x.grad"
    assert sum(n.kind == "op" for n in t.nodes) == len(ops)
    # A reentrant checkpoint's block parameters are outside the graph autograd shows before backward
    # (torch builds it again during backward): the trace adds them, fed into the checkpoint's node.
    hidden = len(list(LIN.parameters())) if name == "checkpoint (reentrant)" else 0
    assert sum(n.kind in ("param", "leaf") for n in t.nodes) == len(leaves) + hidden
    missing = [n.label for n in t.nodes if n.kind == "op" and n.value is None]
    assert missing == [], f"ops drawn without a forward value: {missing}"
    assert t.node(t.loss).value.values == (loss.item(),) or loss.item() != loss.item()


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, v):
        return self.b(self.a(v)).sum()


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, v):
        return self.a(torch.tanh(self.a(v))).sum()


@pytest.mark.parametrize("model_cls", [Tied, Twice])
def test_shared_parameters_and_repeated_calls(model_cls):
    torch.manual_seed(0)
    model, v = model_cls(), torch.randn(2, 3)
    plain = copy.deepcopy(model)
    plain(v).backward()
    t = gradtrace.trace(model, v)
    params = {n.label: n for n in t.nodes if n.kind == "param"}
    assert set(params) == {name for name, _ in model.named_parameters()}, "one node per parameter tensor"
    for name, p in plain.named_parameters():
        assert same(params[name].grad, stats_of(p.grad)), name
    if model_cls is Twice:
        calls = [k for k in t.find("addmm")]
        assert len(calls) == 2 and {t.node(k).module for k in calls} == {"a"}, "both calls are visible"
        (w,) = t.find("a.weight")
        assert len(list(t.graph.successors(w))) == 2, "one weight node feeds both calls"


def test_lstm_tuple_output():
    torch.manual_seed(0)
    lstm, v = nn.LSTM(3, 5, batch_first=True), torch.randn(2, 4, 3)
    plain = copy.deepcopy(lstm)
    out, (h, c) = plain(v)
    (out.sum() + h.sum() + c.sum()).backward()
    t = gradtrace.trace(lstm, v)
    for name, p in plain.named_parameters():
        (k,) = t.find(name)
        assert same(t.node(k).grad, stats_of(p.grad)), name


def test_retain_graph_and_two_backwards():
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    w_plain = w.detach().clone().requires_grad_()
    lp = (w_plain * w_plain).sum()
    lp.backward(retain_graph=True)
    lp.backward()
    with gradtrace.capture() as cap:
        loss = (w * w).sum()
        loss.backward(retain_graph=True)
        loss.backward()
    assert torch.equal(w.grad, w_plain.grad), "the second backward ran normally"
    (leaf,) = [n for n in cap.trace.nodes if n.kind == "leaf"]
    assert same(leaf.grad, stats_of(2 * w.detach())), "the first backward is the one traced"


def test_double_backward_is_named():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    with gradtrace.capture() as cap:
        loss = (w ** 3).sum()
        loss.backward(create_graph=True)
        g = w.grad.clone()
        w.grad = None
        g.sum().backward()
    assert torch.equal(w.grad, 6 * w.detach()), "second-order gradient as torch computes it"
    assert any("create_graph=True" in n for n in cap.trace.notes)
    (leaf,) = [n for n in cap.trace.nodes if n.kind == "leaf"]
    assert leaf.grad.values == (3.0, 12.0)
    assert "create_graph=True" in cap.trace.to_dot().source


def test_user_hooks_fire_once_with_the_same_values():
    def run(traced: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        seen = {"fwd": [], "tensor": [], "node": []}
        model[1].register_forward_hook(lambda m, i, o: seen["fwd"].append(o.detach().clone()))

        def forward(v):
            h = model[0](v)
            h.register_hook(lambda g: seen["tensor"].append(g.clone()))
            h.grad_fn.register_prehook(lambda go: seen["node"].append(go[0].clone()))
            return model[2](model[1](h)).sum()

        v = torch.randn(2, 3)
        if traced:
            gradtrace.trace(forward, v)
        else:
            forward(v).backward()
        return seen

    plain, traced = run(False), run(True)
    for kind in plain:
        assert len(traced[kind]) == len(plain[kind]) == 1, kind
        assert torch.equal(traced[kind][0], plain[kind][0]), kind


def test_torch_compile_is_traced_eagerly_and_says_so():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    compiled = torch.compile(lin)
    v = torch.randn(4, 3)
    t = gradtrace.trace(compiled, v)
    labels = {n.label for n in t.nodes if n.kind == "param"}
    assert labels == {"weight", "bias"}, "named as the module it wraps, without _orig_mod"
    assert any("torch.compile" in n for n in t.notes)
    ref = copy.deepcopy(lin)
    ref(v).sum().backward()
    (w,) = t.find("weight")
    assert same(t.node(w).grad, stats_of(ref.weight.grad))


class Interrupting(nn.Module):
    def __init__(self, where):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.where = where

    def forward(self, v):
        h = self.fc(v)
        if self.where == "forward":
            raise KeyboardInterrupt
        h.register_hook(self._interrupt)
        return h.sum()

    def _interrupt(self, g):
        raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_keyboard_interrupt_leaves_nothing(where):
    model = Interrupting(where)
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        gradtrace.trace(model, torch.randn(2, 3))
    assert_untouched(before, model)
    gradtrace.trace(nn.Linear(3, 1), torch.randn(2, 3))  # and the next trace works


def test_large_tensor_keeps_statistics_only():
    big = torch.randn(2_000_000, requires_grad=True)
    t = gradtrace.trace(lambda v: (v * 2).tanh().sum(), big)
    for n in t.nodes:
        for s in n.values + n.grads:
            assert s is None or s.numel <= 16 or s.values is None, "no element of a large tensor is kept"
    assert t.node(t.find("tanh")[0]).value.numel == 2_000_000


# -- property-based: random programs --------------------------------------------------

UNARY = [torch.tanh, torch.sigmoid, torch.exp, lambda z: z * 0.5, torch.relu, lambda z: z ** 2, torch.sin]


@st.composite
def programs(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    steps = draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, len(UNARY) - 1)), min_size=1, max_size=8))
    return shape, steps


def _build(shape, steps):
    def program(x, w):
        h = x
        for kind, u in steps:
            if kind == 0:
                h = UNARY[u](h)
            elif kind == 1:
                h = h + w[u % 4, : h.shape[-1]] if h.dim() >= 1 and h.shape[-1] <= w.shape[-1] else h + w[0, 0]
            elif kind == 2 and h.dim() >= 1:
                h = h @ w[: h.shape[-1], : h.shape[-1]] if h.shape[-1] <= w.shape[0] else h * 2
            elif kind == 3 and h.dim() >= 2:
                h = h.transpose(0, -1)
            elif kind == 4 and h.dim() >= 1:
                h = h.sum(dim=-1, keepdim=True)
            elif kind == 5:
                h = h.reshape(-1)
            elif kind == 6 and h.dim() >= 1:
                h = h.unsqueeze(0).expand(2, *h.shape)
            else:
                h = h * w.mean()
        return h.sum()

    return program


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.integers(0, 10_000))
def test_random_programs_match_torch(program_spec, seed):
    shape, steps = program_spec
    fn = _build(shape, steps)
    g = torch.Generator().manual_seed(seed)
    xb, wb = torch.randn(shape, generator=g), torch.randn(4, 4, generator=g) * 0.5
    x1, w1 = xb.clone().requires_grad_(), wb.clone().requires_grad_()
    loss = fn(x1, w1)
    ops, leaves = autograd_walk(loss)
    loss.backward()
    x2, w2 = xb.clone().requires_grad_(), wb.clone().requires_grad_()
    t = gradtrace.trace(fn, x2, w2)
    assert sum(n.kind == "op" for n in t.nodes) == len(ops)
    assert sum(n.kind == "leaf" for n in t.nodes) == len(leaves)
    grads = {n.label: n.grad for n in t.nodes if n.kind == "leaf"}
    for name, plain in (("x", x1.grad), ("w", w1.grad)):
        if plain is None:
            assert name not in grads, f"{name} is unused, so it is no node"
        else:
            assert same(grads[name], stats_of(plain)), name
    assert x2.grad is None and w2.grad is None


def test_meta_device_is_refused_clearly():
    """A meta tensor has a shape but no values: a CaptureError says so, in trace() and in capture()."""
    lin = nn.Linear(3, 2, device="meta")
    before = snapshot(lin)
    with pytest.raises(gradtrace.CaptureError, match="meta"):
        gradtrace.trace(lin, torch.randn(2, 3, device="meta"))
    with pytest.raises(gradtrace.CaptureError, match="meta"):
        with gradtrace.capture(lin):
            lin(torch.randn(2, 3, device="meta")).sum().backward()
    assert_untouched(before, lin)


WRITES_TORCH_MAY_NOT_COUNT = {
    ".data.mul_": lambda h: h.data.mul_(2),
    ".data[:] =": lambda h: h.data.__setitem__(slice(None), h.data * 2),
    ".data.copy_": lambda h: h.data.copy_(h.detach() * 2),
    "detach().mul_ under no_grad": lambda h: _under_no_grad(lambda: h.detach().mul_(2)),
    "out= into .data": lambda h: torch.mul(h.data, 2, out=h.data),
}


def _under_no_grad(fn):
    with torch.no_grad():
        fn()


@pytest.mark.parametrize("n", [3, 1000, 100_000])
@pytest.mark.parametrize("write", list(WRITES_TORCH_MAY_NOT_COUNT))
def test_values_read_after_writes_the_version_counter_misses(write, n):
    """``.data`` writes share the memory but not the version counter: a value shown after one is the new one."""
    torch.manual_seed(0)
    base = torch.randn(n)
    do = WRITES_TORCH_MAY_NOT_COUNT[write]

    def fn(v):
        h = v * 1
        do(h)
        return h.t().sum() + h.view(-1)[: n // 2 + 1].sum()

    xp = base.clone().requires_grad_()
    hp = xp * 1
    made = hp.detach().clone()
    do(hp)
    ops, _ = autograd_walk(hp.t().sum() + hp.view(-1)[: n // 2 + 1].sum())
    x = base.clone().requires_grad_()
    t = gradtrace.trace(fn, x)
    assert sum(n_.kind == "op" for n_ in t.nodes) == len(ops)
    (mul,) = t.find("mul")
    assert same(t.node(mul).value, stats_of(made)), "the value the op made, before the write"
    (tk,) = t.find("t")
    assert same(t.node(tk).value, stats_of(hp.detach().t())), "read after the write: the new values"
    (sl,) = t.find("slice")
    assert same(t.node(sl).value, stats_of(hp.detach().view(-1)[: n // 2 + 1]))


class TwoOutputs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        return a * 2, a * 3

    @staticmethod
    def backward(ctx, g1, g2):
        return 2 * g1 + 3 * g2


class DirtyThenMore(torch.autograd.Function):
    """Marks its input dirty, and runs another op after the write (the write is not the last op)."""

    @staticmethod
    def forward(ctx, a):
        a.mul_(2)
        ctx.mark_dirty(a)
        ctx.scale = float(a.detach().abs().sum() * 0 + 2)
        return a

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale


class ReturnsInputAndNew(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        out = a + b
        return b, out, a.sum()

    @staticmethod
    def backward(ctx, gb, gout, gs):
        return gout + gs, gb + gout


class SquaredNorm(torch.autograd.Function):
    """Its output is the loss: no op runs after it."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return (a * a).sum()

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return 2 * a * g


CUSTOM = {
    "the loss itself": lambda v: SquaredNorm.apply(v * 1),
    "two outputs": lambda v: sum(o.sum() * (i + 1) for i, o in enumerate(TwoOutputs.apply(v * 1))),
    "mark_dirty, then another op": lambda v: DirtyThenMore.apply(v * 1).pow(2).sum(),
    "an input handed back": lambda v: sum(o.sum() * (i + 1) for i, o in enumerate(ReturnsInputAndNew.apply(v * 1, v.exp()))),
}


@pytest.mark.parametrize("name", list(CUSTOM))
def test_custom_function_outputs_have_forward_values(name):
    from .oracle import assert_ops_match, reference_step

    fn = CUSTOM[name]
    torch.manual_seed(0)
    base = torch.randn(4, 3)
    ref = reference_step(fn, (base.clone().requires_grad_(),), lambda out: out)
    t = gradtrace.trace(fn, base.clone().requires_grad_())
    # (the input a Function marks dirty is changed in place: the oracle cannot observe its maker)
    ops = assert_ops_match(t, ref, unobservable=1 if "dirty" in name else 0)
    missing = [(n.grad_fn, i) for n in ops for i, v in enumerate(n.values) if v is None]
    assert missing == [], f"outputs without a forward value: {missing}"


def test_a_parameter_written_through_a_no_grad_view_is_traced_like_torch_runs_it():
    """``with no_grad(): w[0, 0] = v`` makes a view whose grad_fn torch refuses to read afterwards;
    plain user code never reads it, so capture must not crash where torch runs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight[0, 0] = 0.5
    x = torch.randn(4, 3)
    plain = copy.deepcopy(net)
    plain(x).sum().backward()
    with gradtrace.capture(net) as cap:
        with torch.no_grad():
            net[0].weight[0, 1] = 0.25  # inside the recorded step too
        net(x).sum().backward()
    with torch.no_grad():
        plain[0].weight[0, 1] = 0.25
    plain.zero_grad()
    plain(x).sum().backward()
    t = cap.trace
    (w,) = t.find("0.weight")
    assert torch.equal(net[0].weight.grad, plain[0].weight.grad)
    assert same(t.node(w).grad, stats_of(plain[0].weight.grad))
