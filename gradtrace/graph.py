"""Records -> networkx: the graph a Trace exposes, and the orders it is read in.

No torch here: a trace loaded from JSON is ordered exactly like a live one.
"""

from __future__ import annotations

import math
from typing import Iterable

import networkx as nx

from .records import TraceEdge, TraceNode

__all__ = ["build_graph", "backward_order", "forward_order"]


def build_graph(nodes: Iterable[TraceNode], edges: Iterable[TraceEdge]) -> nx.DiGraph:
    """A DiGraph whose edges run the way data flows (input/parameter -> op -> ... -> loss).

    Node attributes are the contract's: kind, label, grad_fn, module, value,
    grad, values, grads, forward_step, backward_step, update, update_ratio, source, args, scope, sgd_update,
    reduced (a data-parallel parameter's gradient after the collective, else None).
    Edge attributes: ``output`` (which output of the source), ``shape``
    (that output's shape, when its value was recorded), ``grad`` (the gradient
    sent back along the edge) and ``uses`` (inputs of the target it fed).
    """
    g = nx.DiGraph()
    shapes: dict[tuple[str, int], tuple[int, ...]] = {}
    for n in nodes:
        g.add_node(
            n.key, kind=n.kind, label=n.label, grad_fn=n.grad_fn, module=n.module, value=n.value, grad=n.grad,
            values=n.values, grads=n.grads, forward_step=n.forward_step, backward_step=n.backward_step,
            update=n.update, update_ratio=n.update_ratio, source=n.source, args=n.args, scope=n.scope or n.module,
            sgd_update=n.sgd_update, reduced=n.reduced,
        )
        for i, v in enumerate(n.values):
            if v is not None:
                shapes[(n.key, i)] = v.shape
    for e in edges:
        g.add_edge(e.src, e.dst, output=e.output, shape=shapes.get((e.src, e.output)), grad=e.grad, uses=e.uses)
    return g


def _sort_key(g: nx.DiGraph) -> dict[str, tuple[float, int, str]]:
    kinds = {"input": 0, "leaf": 1, "param": 2, "op": 3}
    keys = {}
    for node, data in g.nodes(data=True):
        step = data["forward_step"]
        if step is None:
            # A parameter or input sits just before the first op that reads it.
            later = [g.nodes[s]["forward_step"] for s in g.successors(node) if g.nodes[s]["forward_step"] is not None]
            rank = min(later) - 0.5 if later else math.inf
        else:
            rank = float(step)
        keys[node] = (rank, kinds[data["kind"]], node)
    return keys


def forward_order(g: nx.DiGraph) -> list[str]:
    """Topological order of ``g``, ties broken by forward step, so it is the same on every run."""
    keys = _sort_key(g)
    order = sorted(g.nodes, key=keys.__getitem__)
    # Every edge of a captured step runs from an earlier forward step to a later one, so the sorted
    # keys are already the lexicographic topological order; checked, else computed the long way.
    position = {k: i for i, k in enumerate(order)}
    if all(position[u] < position[v] for u, v in g.edges):
        return order
    return list(nx.lexicographical_topological_sort(g, key=keys.__getitem__))


def backward_order(g: nx.DiGraph) -> list[str]:
    """Keys of the nodes backprop visited, in the order the autograd engine ran them."""
    visited = [(d["backward_step"], n) for n, d in g.nodes(data=True) if d["backward_step"] is not None]
    return [n for _, n in sorted(visited)]
