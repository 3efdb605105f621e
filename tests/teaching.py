"""Traces for the teaching views, with torch as the oracle for what flowed along each edge.

Capture fills ``TraceEdge.grad``/``uses``, ``TraceNode.scope`` and ``sgd_update``.
These helpers compute the same from torch independently (each autograd node's
backward called by hand): where capture filled a field, they check capture's
value against that oracle; where it is empty (a trace built by hand), they fill it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import gradtrace
from gradtrace import Trace
from gradtrace.records import TensorStats


def course_f(point):
    """f(x, y) = x² + 2y², written as examples/gradient_descent.py writes it."""
    x, y = point[0], point[1]
    return x * x + 2 * y * y


def edge_oracle(root: torch.Tensor) -> dict[tuple[int, int], tuple[torch.Tensor, int]]:
    """(id of producer node, id of consumer node) -> (gradient the consumer's backward sent back, uses).

    Calls every autograd node's backward by hand in topological order: what
    ``engine.backward`` does, without the engine, so it checks capture's hooks.
    """
    order, seen, stack = [], set(), [(root.grad_fn, False)]
    while stack:  # iterative post-order: consumers before producers once reversed
        fn, done = stack.pop()
        if done:
            order.append(fn)
            continue
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        stack.append((fn, True))
        stack += [(nxt, False) for nxt, _ in fn.next_functions if nxt is not None]
    order.reverse()
    incoming: dict[int, torch.Tensor] = {id(root.grad_fn): torch.ones_like(root)}
    out: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}
    for fn in order:
        if type(fn).__name__ == "AccumulateGrad":
            continue
        grads = fn(incoming[id(fn)])
        grads = grads if isinstance(grads, tuple) else (grads,)
        for (nxt, _), g in zip(fn.next_functions, grads):
            if nxt is None or g is None:
                continue
            key = (id(nxt), id(fn))
            prev, uses = out.get(key, (None, 0))
            out[key] = (g.detach() if prev is None else prev + g.detach(), uses + 1)
            incoming[id(nxt)] = g.detach() if id(nxt) not in incoming else incoming[id(nxt)] + g.detach()
    return out


def stats_of(t: torch.Tensor) -> TensorStats:
    """Stats of a small tensor, computed here (not by gradtrace's recorder)."""
    t = t.detach().float()
    return TensorStats(tuple(t.shape), "float32", "cpu", t.numel(), t.min().item(), t.max().item(), t.mean().item(),
                       t.std().item() if t.numel() > 1 else 0.0, t.norm().item(), 0, 0, tuple(t.flatten().tolist()))


def course_step() -> tuple[Trace, dict[tuple[str, str], tuple[torch.Tensor, int]], torch.Tensor]:
    """The first step of the course's gradient descent, captured with its SGD step.

    Returns the trace, the oracle per (src key, dst key), and −lr·grad from torch.
    """
    point = torch.tensor([300.0, -200.0], requires_grad=True)
    opt = torch.optim.SGD([point], lr=0.2)
    with gradtrace.capture() as cap:
        opt.zero_grad()
        value = course_f(point)
        value.backward()
        opt.step()
    # The same computation again, untraced, for the oracle; torch nodes match trace nodes
    # by (autograd class, forward value), unique in this example.
    p2 = torch.tensor([300.0, -200.0], requires_grad=True)
    x, y = p2[0], p2[1]
    xx, y2 = x * x, 2 * y
    y2y = y2 * y
    f = xx + y2y
    tensors = {"x": x, "y": y, "xx": xx, "y2": y2, "y2y": y2y, "f": f}
    oracle = edge_oracle(f)
    t = cap.trace
    keys: dict[int, str] = {}
    for n in t.nodes:
        if n.kind == "op":
            (match,) = [v for v in tensors.values() if type(v.grad_fn).__name__ == n.grad_fn and v.item() == n.value.values[0]]
            keys[id(match.grad_fn)] = n.key
        else:
            acc = x.grad_fn.next_functions[0][0]
            keys[id(acc)] = n.key
    by_key = {(keys[a], keys[b]): v for (a, b), v in oracle.items()}
    sgd = -0.2 * torch.tensor([600.0, -800.0])
    return t, by_key, sgd


def filled(t: Trace, oracle: dict[tuple[str, str], tuple[torch.Tensor, int]], sgd: torch.Tensor | None = None) -> Trace:
    """``t`` with empty edge gradients (and sgd_update) filled from the oracle; filled ones are checked against it."""
    if all(e.grad is None for e in t.edges):
        edges = tuple(dataclasses.replace(e, grad=stats_of(oracle[e.src, e.dst][0]), uses=oracle[e.src, e.dst][1]) for e in t.edges)
        t = dataclasses.replace(t, edges=edges)
    else:
        for e in t.edges:
            if (e.src, e.dst) not in oracle:
                continue
            want, uses = oracle[e.src, e.dst]
            assert e.grad is not None and e.uses == uses, (e.src, e.dst, e.uses, uses)
            assert e.grad.norm is not None and abs(e.grad.norm - float(want.double().norm())) <= 1e-6 * max(1.0, e.grad.norm), (e.src, e.dst)
    if sgd is not None:
        nodes = tuple(dataclasses.replace(n, sgd_update=stats_of(sgd)) if n.update is not None and n.sgd_update is None else n
                      for n in t.nodes)
        t = dataclasses.replace(t, nodes=nodes)
    return t


class PoolTwice(nn.Module):
    """The course Net's shape: one pooling module called after each convolution."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


def pool_twice_trace() -> Trace:
    """PoolTwice traced; scopes numbered by hand (``pool``, ``pool#2``) where capture left them plain."""
    torch.manual_seed(0)
    t = gradtrace.trace(PoolTwice(), torch.randn(1, 1, 10, 10), loss=lambda out: out.sum())
    if any("#" in n.scope for n in t.nodes):
        return t
    conv2 = min(n.forward_step for n in t.nodes if n.module == "conv2" and n.forward_step is not None)
    nodes = tuple(dataclasses.replace(n, scope="pool#2") if n.module == "pool" and (n.forward_step or 0) > conv2 else n
                  for n in t.nodes)
    return dataclasses.replace(t, nodes=nodes)
