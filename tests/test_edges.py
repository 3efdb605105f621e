"""Gradients per edge: what each consumer's backward sent back along each edge, against torch.

The oracle registers its own post-hooks on every autograd node (independently
of gradtrace's), sums what a node sent along the slots one tensor fed (``x * x``),
and names nodes the way the trace does (ops by creation order, parameters by name).
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace
from gradtrace.recorder.stats import stats_of

from .models import MLP, BasicBlock
from .oracle import autograd_walk, same

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CourseCNN(nn.Module):
    """The course's CNN: one MaxPool2d module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.fc1 = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return F.log_softmax(self.fc1(torch.flatten(x, 1)), dim=1)


class Tied(nn.Module):
    """One Linear applied twice: its weight and bias have two consumers each."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.lin(x)))


class OracleEdges:
    """Post-hooks of the test's own on every node behind ``root``: (producer, consumer, output_nr) -> gradient."""

    def __init__(self, root: torch.Tensor, leaf_names: dict[int, str]) -> None:
        ops, leaves = autograd_walk(root)
        order = {n._sequence_nr(): i for i, n in enumerate(sorted(ops, key=lambda n: n._sequence_nr()))}
        self.sent: dict[tuple[str, str, int], torch.Tensor] = {}
        self.uses: dict[tuple[str, str, int], int] = {}

        def name(node) -> str:
            if type(node).__name__ == "AccumulateGrad":
                return leaf_names[id(node.variable)]
            return f"op{order[node._sequence_nr()]}"

        self.handles = []
        for node in ops:
            consumer = name(node)
            inputs = [(i, name(child), nr) for i, (child, nr) in enumerate(node.next_functions) if child is not None]
            for _, producer, nr in inputs:
                self.uses[(producer, consumer, nr)] = self.uses.get((producer, consumer, nr), 0) + 1

            def hook(grad_inputs, grad_outputs, inputs=inputs, consumer=consumer):
                for i, producer, nr in inputs:
                    g = grad_inputs[i]
                    if g is None:
                        continue
                    k = (producer, consumer, nr)
                    g = g.detach().clone()
                    self.sent[k] = self.sent[k] + g if k in self.sent else g

            self.handles.append(node.register_hook(hook))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _label_key(trace) -> dict[str, str]:
    """Trace key -> the oracle's name (ops keep their key; parameters and leaves go by label)."""
    return {n.key: (n.key if n.kind == "op" else n.label) for n in trace.nodes}


def run_case(model, inputs, loss_fn, leaves: dict[str, torch.Tensor] | None = None):
    names = {id(p): n for n, p in model.named_parameters()} if isinstance(model, nn.Module) else {}
    if not isinstance(model, nn.Module):
        names.update({id(t): k for k, t in (leaves or {}).items()})
    names.update({id(t): n for n, t in (leaves or {}).items()})
    with gradtrace.capture(model if isinstance(model, nn.Module) else None) as cap:
        loss = loss_fn(model(*inputs))
        oracle = OracleEdges(loss, names)
        loss.backward()
    oracle.remove()
    return cap.trace, oracle


def assert_edges_match(trace, oracle: OracleEdges) -> int:
    name = _label_key(trace)
    kinds = {n.key: n.kind for n in trace.nodes}
    checked = 0
    for e in trace.edges:
        if kinds[e.src] == "input":
            assert e.grad is None, f"input edge {e.src}->{e.dst}: an input without grad receives none"
            continue
        k = (name[e.src], name[e.dst], e.output)
        assert e.uses == oracle.uses[k], f"uses of {k}"
        if k not in oracle.sent:
            assert e.grad is None, f"{k}: torch sent no gradient"
            continue
        assert same(e.grad, stats_of(oracle.sent[k])), f"gradient along {k}"
        checked += 1
    assert checked, "no edge was compared"
    assert len({(e.src, e.dst, e.output) for e in trace.edges}) == len(trace.edges)
    return checked


def _assert_node_is_sum_of_out_edges(trace, min_consumers: int = 2) -> int:
    """The chain rule: a node's gradient is the sum of what its consumers sent (compared on exact values)."""
    checked = 0
    for n in trace.nodes:
        outs = [e for e in trace.edges if e.src == n.key and e.output == 0]
        if len(outs) < min_consumers or n.grad is None or n.grad.values is None:
            continue
        total = [0.0] * n.grad.numel
        for e in outs:
            assert e.grad is not None and e.grad.values is not None
            total = [a + b for a, b in zip(total, e.grad.values)]
        for a, b in zip(total, n.grad.values):
            assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{n.key}: sum of out-edges {total} != {n.grad.values}"
        checked += 1
    return checked


def _cases():
    torch.manual_seed(0)
    y = torch.tensor([0, 3, 1, 2, 0, 1])
    yield "mlp", MLP(), (torch.randn(6, 8),), lambda out: F.nll_loss(out, y)
    yield "course_cnn", CourseCNN(), (torch.randn(2, 1, 14, 14),), lambda out: F.nll_loss(out, torch.tensor([1, 4]))
    block = nn.Sequential(nn.Conv2d(3, 3, 1), BasicBlock(3, 3))  # the block's input has a gradient
    yield "residual", block, (torch.randn(2, 3, 5, 5),), lambda out: out.pow(2).mean()
    yield "tied_weight", Tied(), (torch.randn(3, 5),), lambda out: out.pow(2).sum()


CASES = list(_cases())


@pytest.mark.parametrize("name,model,inputs,loss", CASES, ids=[c[0] for c in CASES])
def test_edge_gradients_equal_torch(name, model, inputs, loss):
    trace, oracle = run_case(model, inputs, loss)
    assert_edges_match(trace, oracle)
    g = trace.graph
    for u, v in g.edges:
        assert "grad" in g.edges[u, v] and "uses" in g.edges[u, v]


def test_x_times_x_sums_both_slots():
    w = torch.tensor([1.5, -2.0, 0.5], requires_grad=True)
    trace, oracle = run_case(lambda t: (t * t * 3.0).sum(), (w,), lambda out: out, {"w": w})
    assert_edges_match(trace, oracle)
    square = next(e for e in trace.edges if e.uses == 2)
    assert square.grad.values == pytest.approx([6.0 * v for v in (1.5, -2.0, 0.5)])  # d(3w²)/dw = 6w


def test_three_consumers_and_the_chain_rule_identity():
    torch.manual_seed(1)
    w = torch.randn(4, requires_grad=True)

    def f(t):
        h = t.tanh()  # three consumers
        return (h.exp() + h * 2.0 + h.sin()).sum()

    trace, oracle = run_case(f, (w,), lambda out: out, {"w": w})
    assert_edges_match(trace, oracle)
    tanh = next(n for n in trace.nodes if n.label == "tanh")
    assert len(trace.graph.out_edges(tanh.key)) == 3
    assert _assert_node_is_sum_of_out_edges(trace, 3) == 1


@pytest.mark.parametrize("how", ["split", "unbind", "chunk"])
def test_ops_with_several_outputs(how):
    torch.manual_seed(2)
    w = torch.randn(6, 3, requires_grad=True)

    def f(t):
        parts = {"split": lambda: t.split(2), "unbind": lambda: t.unbind(0), "chunk": lambda: t.chunk(3)}[how]()
        return sum((p * (i + 1.0)).pow(2).sum() for i, p in enumerate(parts))

    trace, oracle = run_case(f, (w,), lambda out: out, {"w": w})
    assert assert_edges_match(trace, oracle) >= 6
    outputs = {e.output for e in trace.edges if trace.node(e.src).grad_fn and trace.node(e.src).label in ("split", "unbind")}
    assert len(outputs) >= 3


def test_gradient_descent_example_shows_the_lesson():
    """f(x, y) = x² + 2y² at (300, -200): both edges out of `select y` carry -400, the node -800."""
    from gradtrace.script import run_script

    trace = run_script(os.path.join(ROOT, "examples", "gradient_descent.py"), ["--max-iters", "1"])
    selects = [n for n in trace.nodes if n.label == "select"]
    y = next(n for n in selects if n.value.values == (-200.0,))
    outs = [e for e in trace.edges if e.src == y.key]
    assert sorted(e.grad.values for e in outs) == [(-400.0,), (-400.0,)]
    assert y.grad.values == (-800.0,)
    x = next(n for n in selects if n.value.values == (300.0,))
    (xx,) = [e for e in trace.edges if e.src == x.key]
    assert xx.uses == 2 and xx.grad.values == (600.0,)
    assert _assert_node_is_sum_of_out_edges(trace) >= 1


@pytest.mark.parametrize("case", [2, 3], ids=["residual", "tied_weight"])
def test_node_grad_is_the_sum_of_its_out_edges(case):
    """At every node with several consumers, its gradient equals the sum of what torch sent along its edges."""
    model, inputs, loss = CASES[case][1:]
    trace, oracle = run_case(model, inputs, loss)
    name = _label_key(trace)
    checked = 0
    for n in trace.nodes:
        outs = [e for e in trace.edges if e.src == n.key and e.output == 0]
        if len(outs) < 2 or n.kind == "input":
            continue
        total = sum(oracle.sent[(name[e.src], name[e.dst], 0)] for e in outs)
        assert same(n.grad, stats_of(total)), f"{n.key}: its gradient is the sum of its out-edges'"
        assert all(e.grad is not None for e in outs)
        checked += 1
    assert checked


def test_edge_grads_round_trip_json():
    trace, _ = run_case(*CASES[0][1:])
    back = gradtrace.Trace.from_json(trace.to_json())
    assert [e.to_dict() for e in back.edges] == [e.to_dict() for e in trace.edges]
    assert any(e.grad is not None for e in back.edges)


def test_every_new_field_round_trips_json():
    """edge grad/uses, node source/args/scope, sgd_update, finite-part statistics: a captured trace survives JSON."""
    from gradtrace.script import run_script

    trace = run_script(os.path.join(ROOT, "tests", "scripts", "course_cnn.py"), step=2)
    assert any(n.source for n in trace.nodes) and any(n.args for n in trace.nodes)
    assert any("#2" in n.scope for n in trace.nodes) and any(n.sgd_update is not None for n in trace.nodes)
    assert any(e.grad is not None for e in trace.edges)
    back = gradtrace.Trace.from_json(trace.to_json())
    assert [n.to_dict() for n in back.nodes] == [n.to_dict() for n in trace.nodes]
    assert [e.to_dict() for e in back.edges] == [e.to_dict() for e in trace.edges]
    assert back.to_json() == trace.to_json()
    g, h = trace.graph, back.graph
    for k in g.nodes:
        for attr in ("source", "args", "scope"):
            assert g.nodes[k][attr] == h.nodes[k][attr]
    for u, v in g.edges:
        assert g.edges[u, v]["uses"] == h.edges[u, v]["uses"]
