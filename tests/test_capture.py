"""Capture against torch: every value, every gradient, every node count."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace
from gradtrace.recorder.stats import stats_of

from .leave_no_trace import assert_untouched, snapshot
from .models import GPT, MLP, Block, LSTMTagger, SmallCNN
from .oracle import assert_ops_match, reference_step, same



def _cases():
    torch.manual_seed(0)
    y4 = torch.tensor([0, 3, 1, 2, 0, 1])
    yield "mlp", MLP(), (torch.randn(6, 8),), lambda out: F.nll_loss(out, y4)
    y3 = torch.tensor([0, 2, 1, 1])
    yield "cnn", SmallCNN(), (torch.randn(4, 1, 8, 8),), lambda out: F.nll_loss(out, y3)
    target = torch.randn(2, 5, 16)
    yield "transformer_block", Block(16, 2), (torch.randn(2, 5, 16),), lambda out: F.mse_loss(out, target)
    tokens = torch.randint(0, 64, (2, 6))
    yield "gpt", GPT(layers=2), (tokens,), lambda out: F.cross_entropy(out.flatten(0, 1), tokens.flatten())
    yield "lstm", LSTMTagger(), (torch.randn(3, 4, 5),), lambda out: F.nll_loss(out, torch.tensor([0, 2, 1]))


CASES = list(_cases())


@pytest.mark.parametrize("name,model,inputs,loss", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_equal_torch(name, model, inputs, loss):
    ref = reference_step(copy.deepcopy(model), inputs, loss)
    t = gradtrace.trace(model, *inputs, loss=loss)

    assert_ops_match(t, ref)
    assert len([n for n in t.nodes if n.kind in ("param", "leaf")]) == ref.n_leaves
    assert t.node(t.loss).value.values == (ref.loss.item(),)
    params = {n.label: n for n in t.nodes if n.kind == "param"}
    assert set(params) == set(ref.param_grads)
    for pname, grad in ref.param_grads.items():
        assert same(params[pname].grad, stats_of(grad)), pname
        assert same(params[pname].value, stats_of(dict(model.named_parameters())[pname]))


@pytest.mark.parametrize("name,model,inputs,loss", CASES, ids=[c[0] for c in CASES])
def test_gradients_under_capture_are_bit_identical(name, model, inputs, loss):
    plain = copy.deepcopy(model)
    loss(plain(*inputs)).backward()
    with gradtrace.capture(model) as cap:
        loss(model(*inputs)).backward()
    for (pname, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.equal(p.grad, q.grad), pname
    assert cap.trace.node(cap.trace.loss).backward_step == 1


def test_every_node_has_its_records():
    torch.manual_seed(0)
    net, x, y = MLP(), torch.randn(6, 8), torch.tensor([0, 3, 1, 2, 0, 1])
    t = gradtrace.trace(net, x, loss=lambda out: F.nll_loss(out, y))
    for n in t.nodes:
        assert n.value is not None, n.key
        if n.kind == "op":
            assert n.forward_step is not None and n.grad_fn
        if n.kind != "input":
            assert n.grad is not None and n.backward_step is not None, n.key
    assert sorted(n.forward_step for n in t.nodes if n.kind == "op") == list(range(1, 1 + sum(n.kind == "op" for n in t.nodes)))
    modules = {t.node(k).module for k in t.find("addmm")}
    assert modules == {"fc1", "fc2"}
    assert t.modules["fc1"] == "Linear"
    inputs = [n for n in t.nodes if n.kind == "input"]
    assert [n.label for n in inputs] == ["x"]  # named after forward's argument
    assert t.graph.has_edge(inputs[0].key, t.find("addmm", module="fc1")[0])


def test_gradient_descent_step_is_exact():
    """f(x, y) = x² + 2y² at (300, -200): value 170000, gradient (600, -800), as the course works it out."""
    point = torch.tensor([300.0, -200.0], requires_grad=True)
    t = gradtrace.trace(lambda p: p[0] ** 2 + 2 * p[1] ** 2, point)
    assert t.node(t.loss).value.values == (170000.0,)
    (leaf,) = [n for n in t.nodes if n.kind == "leaf"]
    assert leaf.label == "p"
    assert leaf.grad.values == (600.0, -800.0)
    assert point.grad is None, "trace() leaves .grad as it found it"

    x = torch.tensor(300.0, requires_grad=True)
    y = torch.tensor(-200.0, requires_grad=True)
    t2 = gradtrace.trace(lambda x, y: x * x + 2 * y * y, x, y)
    grads = {n.label: n.grad.values for n in t2.nodes if n.kind == "leaf"}
    assert grads == {"x": (600.0,), "y": (-800.0,)}
    source = t2.to_dot().source
    for text in ("170000", "grad 600", "grad -800"):
        assert text in source


def test_backward_order_is_the_engines():
    """The order of the trace is the order the engine ran nodes in a plain run (hooks of the test's own)."""
    from .oracle import autograd_walk

    def f(v, w):
        a = v * w
        return (a.exp() + a.sin() * w).sum() + (w ** 2).mean()

    v, w = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    root = f(v, w)
    ops, leaves = autograd_walk(root)
    engine = []
    for node in ops + leaves:
        node.register_prehook(lambda g, node=node: engine.append(type(node).__name__))
    root.backward()

    t = gradtrace.trace(f, v.detach().requires_grad_(), w.detach().requires_grad_())
    order = t.backward_order()
    assert [t.node(k).grad_fn or "AccumulateGrad" for k in order] == engine
    assert [t.node(k).backward_step for k in order] == list(range(1, len(engine) + 1))
    assert order[0] == t.loss


def test_forward_order_is_topological_and_stable():
    net, x = MLP(), torch.randn(3, 8)
    t = gradtrace.trace(net, x)
    order = t.forward_order()
    pos = {k: i for i, k in enumerate(order)}
    assert all(pos[a] < pos[b] for a, b in t.graph.edges)
    assert order == t.forward_order()
    assert set(order) == set(t.graph.nodes)


@pytest.mark.parametrize("name,model,inputs,loss", CASES, ids=[c[0] for c in CASES])
def test_forward_order_is_networkx_lexicographic_order(name, model, inputs, loss):
    """The sorted-keys shortcut gives exactly the order networkx's lexicographic topological sort gives."""
    import networkx as nx

    from gradtrace.graph import _sort_key, forward_order

    g = gradtrace.trace(model, *inputs, loss=loss).graph
    keys = _sort_key(g)
    assert forward_order(g) == list(nx.lexicographical_topological_sort(g, key=keys.__getitem__))
    # A graph whose steps do not increase along an edge (not a captured step) takes the long way.
    g = g.copy()
    first, last = min(keys, key=keys.__getitem__), max(keys, key=keys.__getitem__)
    g.nodes[last]["forward_step"], g.nodes[first]["forward_step"] = -1, 10**9
    keys = _sort_key(g)
    order = forward_order(g)
    assert order == list(nx.lexicographical_topological_sort(g, key=keys.__getitem__))
    assert order != sorted(g.nodes, key=keys.__getitem__)


def test_default_loss_sums_outputs():
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    t = gradtrace.trace(lin, x)
    assert t.node(t.loss).label == "sum"
    (w,) = [n for n in t.nodes if n.label == "weight"]
    expected = torch.ones(4, 2).t() @ x  # d sum(xWᵀ+b) / dW
    assert same(w.grad, stats_of(expected))

    def two_heads(v):
        return {"a": v * 2, "b": (v ** 2).sum(), "label": v.argmax()}

    v = torch.tensor([1.0, 2.0], requires_grad=True)
    t2 = gradtrace.trace(two_heads, v)
    (leaf,) = [n for n in t2.nodes if n.kind == "leaf"]
    assert leaf.grad.values == (4.0, 6.0)  # 2 + 2v


def test_params_keep_their_grad_and_training_flag():
    net, x = MLP(), torch.randn(2, 8)
    net.eval()
    net.fc1.weight.grad = torch.full_like(net.fc1.weight, 7.0)
    before = snapshot(net)
    gradtrace.trace(net, x)
    assert_untouched(before, net)
    assert not net.training


class Boom(Exception):
    pass


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        self.fc(x)
        raise Boom("raised by the user's model")


def test_model_raising_leaves_nothing_behind():
    net, x = Exploding(), torch.randn(2, 3)
    before = snapshot(net)
    with pytest.raises(Boom) as info:
        gradtrace.trace(net, x)
    assert any(entry.name == "forward" for entry in info.traceback), "the user's own frame is in the traceback"
    assert_untouched(before, net)

    def bad_loss(out):
        raise KeyError("loss failed")

    net2 = MLP()
    before = snapshot(net2)
    with pytest.raises(KeyError):
        gradtrace.trace(net2, torch.randn(2, 8), loss=bad_loss)
    assert_untouched(before, net2)


def test_capture_block_raising_leaves_nothing_behind():
    net = MLP()
    before = snapshot(net)
    with pytest.raises(Boom):
        with gradtrace.capture(net):
            net(torch.randn(2, 8)).sum().backward()
            raise Boom()
    assert_untouched(before, net, grads=False)


def test_no_tensor_is_held_for_statistics_once_a_block_ends():
    """Values are held for batched statistics while recording; whatever ends the block, none stays held."""
    net = MLP()
    with pytest.raises(Boom):
        with gradtrace.capture(net) as cap:
            net(torch.randn(2, 8))  # a forward recorded, no backward: its values are held
            raise Boom()
    assert cap._session.stats.held_elements == 0 and cap._session.stats._held == []
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradtrace.capture(net) as cap:
        net(torch.randn(2, 8)).sum().backward()
        opt.step()  # its updates are added after the backward, and read when the block ends
    assert all(n.update is not None for n in cap.trace.nodes if n.kind == "param")


def test_no_node_hook_survives(monkeypatch):
    """Run backward again over a graph capture() hooked: none of gradtrace's code may run."""
    from gradtrace.recorder import stats as stats_module

    net = MLP()
    with gradtrace.capture(net):
        loss = net(torch.randn(2, 8)).sum()
        loss.backward(retain_graph=True)
    calls = []
    original = stats_module.StatsBuffer.add
    monkeypatch.setattr(stats_module.StatsBuffer, "add", lambda self, t: calls.append(1) or original(self, t))
    loss.backward()
    assert calls == []


def test_capture_records_the_asked_step():
    net = MLP()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(6, 8), torch.tensor([0, 3, 1, 2, 0, 1])
    losses = []
    with gradtrace.capture(net, step=3) as cap:
        for _ in range(4):
            opt.zero_grad()
            loss = F.nll_loss(net(x), y)
            losses.append(loss.item())
            loss.backward()
            opt.step()
    t = cap.trace
    assert t.node(t.loss).value.values == (losses[2],)
    assert t.optimizer is not None and t.optimizer.name == "SGD" and t.optimizer.lr == 0.1


def test_capture_without_backward_says_so():
    net = MLP()
    with gradtrace.capture(net) as cap:
        with pytest.raises(gradtrace.CaptureError, match="after the"):
            cap.trace
        net(torch.randn(2, 8))
    with pytest.raises(gradtrace.CaptureError, match="0 backward"):
        cap.trace


def test_optimizer_update_equals_the_weight_change():
    net = MLP()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(6, 8), torch.tensor([0, 3, 1, 2, 0, 1])
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with gradtrace.capture(net) as cap:
        opt.zero_grad()
        F.nll_loss(net(x), y).backward()
        opt.step()
    for n, p in net.named_parameters():
        (node,) = [m for m in cap.trace.nodes if m.label == n]
        delta = p.detach() - before[n]
        assert same(node.update, stats_of(delta))
        assert node.update_ratio == pytest.approx((delta.norm() / before[n].norm()).item(), rel=1e-5)
    assert ("momentum", "0.9") in cap.trace.optimizer.hyperparameters


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: gradtrace.trace(nn.Linear(2, 1).requires_grad_(False), torch.randn(3, 2)), "does not require grad"),
        (lambda: gradtrace.trace(nn.Linear(2, 3), torch.randn(3, 2), loss=lambda out: out * 2), r"scalar tensor, got shape \(3, 3\)"),
        (lambda: gradtrace.trace(nn.Linear(2, 3), torch.randn(3, 2), loss=lambda out: 1.0), "scalar tensor, got float"),
        (lambda: gradtrace.trace(lambda v: v.argmax(), torch.randn(3)), "no real floating-point tensor"),
        (lambda: gradtrace.trace("not a model", torch.randn(3)), "nn.Module or a callable"),
        (lambda: gradtrace.trace(nn.Linear(2, 1), torch.randn(3, 2), loss="mse"), "loss must be a callable"),
        (lambda: gradtrace.capture(step=0).__enter__(), "positive integer"),
    ],
)
def test_clear_errors(call, message):
    with pytest.raises(gradtrace.CaptureError, match=message):
        call()


def test_long_chain_has_no_recursion_limit():
    x = torch.tensor([1.0, 2.0], requires_grad=True)

    def chain(v):
        for _ in range(5000):
            v = v * 1.0001
        return v.sum()

    t = gradtrace.trace(chain, x)
    assert sum(n.kind == "op" for n in t.nodes) == 5001
    assert len(t.backward_order()) == 5002
    source = t.to_dot(max_nodes=None).source  # every node: a module-less graph otherwise folds to fit max_nodes
    assert len(re.findall(r"^\s*\S+ -> \S+", source, flags=re.M)) == 5001


def test_trace_holds_no_tensor():
    import gc
    import weakref

    net = MLP()
    x = torch.randn(64, 8)
    refs = []

    class Keep(torch.nn.Module):
        def forward(self, v):
            h = net(v)
            refs.append(weakref.ref(h))
            return h

    t = gradtrace.trace(Keep(), x)
    gc.collect()
    assert refs and refs[0]() is None, "no activation outlives trace()"
    import dataclasses

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            raise AssertionError("a tensor is stored in the trace")
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))
        elif isinstance(obj, (tuple, list)):
            for o in obj:
                walk(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                walk(o)

    walk(t)


def test_values_written_in_place_later_keep_what_the_op_produced():
    """gradtrace reads small values late (batched): an in-place write after an op must not leak into its value."""
    base = torch.randn(6)

    def f(w):
        y = w * 2  # recorded as [w * 2], whatever happens to y later
        y.add_(1)
        y[1:3].zero_()  # through a view: the base's new value is a CopySlices node
        z = y.sin()
        z.mul_(3)
        return z.sum()

    w = base.clone().requires_grad_()
    t = gradtrace.trace(f, w)
    ops = sorted((n for n in t.nodes if n.kind == "op"), key=lambda n: n.forward_step)
    first = {}
    for n in ops:
        first.setdefault(n.grad_fn, n.value)
    y = base * 2
    assert first["MulBackward0"].values == tuple(y.tolist())
    y = y + 1
    assert first["AddBackward0"].values == tuple(y.tolist())
    y[1:3] = 0
    assert first["CopySlices"].values == tuple(y.tolist())
    assert first["SinBackward0"].values == tuple(y.sin().tolist())
    assert ops[-2].grad_fn == "MulBackward0" and ops[-2].value.values == tuple((y.sin() * 3).tolist())


def test_writes_into_other_memory_do_not_force_early_reads(monkeypatch):
    """A BatchNorm's running statistics are written in place on every call; they share no memory with
    anything recorded, so they must not make the recorder read its held tensors early."""
    from gradtrace.recorder import stats as stats_module

    settles = []
    original = stats_module.StatsBuffer.settle
    monkeypatch.setattr(stats_module.StatsBuffer, "settle", lambda self: settles.append(len(self._held)) or original(self))
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4), nn.BatchNorm1d(4))
    gradtrace.trace(net, torch.randn(8, 4))
    assert len([n for n in settles if n]) == 1, "held tensors are read once, at the end of the backward"
