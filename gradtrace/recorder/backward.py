"""Backward recording: the autograd graph, the gradient reaching each node, and the order.

:func:`walk` visits the graph behind the roots iteratively (graphs reach tens
of thousands of nodes, so no recursion). :class:`BackwardRecorder` puts a
pre-hook on every node it found: the engine calls it with the gradient with
respect to the node's outputs, just before running the node, so the order
of the calls is the order backprop visited the graph.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch.utils.hooks import RemovableHandle

from .forward import node_id
from .stats import StatsBuffer

__all__ = ["BackwardRecorder", "GraphWalk", "walk"]

NodeKey = tuple[int, str]


@dataclass
class GraphWalk:
    """The autograd graph behind some roots, in a deterministic breadth-first order."""

    nodes: dict[NodeKey, Any] = field(default_factory=dict)  # key -> autograd node, in visit order
    edges: list[tuple[NodeKey, NodeKey, int]] = field(default_factory=list)  # (producer, consumer, output_nr)
    roots: list[NodeKey] = field(default_factory=list)


def walk(root_nodes: Iterable[Any]) -> GraphWalk:
    """Every node reachable from ``root_nodes`` through ``next_functions``, without recursion.

    >>> x = torch.ones(2, requires_grad=True)
    >>> len(walk([(x * 2).sum().grad_fn]).nodes)   # SumBackward0, MulBackward0, AccumulateGrad
    3
    """
    g = GraphWalk()
    queue: deque[Any] = deque()
    for node in root_nodes:
        key = node_id(node)
        if key not in g.nodes:
            g.nodes[key] = node
            g.roots.append(key)
            queue.append(node)
    while queue:
        node = queue.popleft()
        consumer = node_id(node)
        for child, output_nr in node.next_functions:
            if child is None:
                continue
            key = node_id(child)
            g.edges.append((key, consumer, output_nr))
            if key not in g.nodes:
                g.nodes[key] = child
                queue.append(child)
    return g


class BackwardRecorder:
    """Pre-hooks on every node of a walk: gradient statistics and visit order."""

    def __init__(self, graph: GraphWalk, stats: StatsBuffer) -> None:
        self.stats = stats
        self.order: list[NodeKey] = []
        self.grads: dict[NodeKey, list[int | None]] = {}
        self.handles: list[RemovableHandle] = []
        self._lock = threading.Lock()
        self._deferred: set[NodeKey] = set()  # AccumulateGrad nodes whose gradient is read after they ran
        self._variables = {k: n.variable for k, n in graph.nodes.items() if k[1] == "AccumulateGrad"}
        for key, node in graph.nodes.items():
            self.handles.append(node.register_prehook(self._hook_for(key)))
            if key[1] == "AccumulateGrad":
                self.handles.append(node.register_hook(self._leaf_hook_for(key, node)))

    def _hook_for(self, key: NodeKey) -> Any:
        lock = self._lock

        leaf = key[1] == "AccumulateGrad"
        variable = self._variables.get(key)

        def prehook(grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
            # The engine runs each device's nodes on its own thread: a graph on two devices calls
            # these hooks from two threads at once.
            with lock:
                self.order.append(key)
                if leaf and variable is not None and variable.grad is None:
                    # AccumulateGrad takes the incoming gradient as .grad without a copy only if nobody
                    # else holds it; holding it here would cost a copy (a launch and the memory) per
                    # parameter. The post-hook reads the same values from .grad instead.
                    self.grads[key] = [None]
                    self._deferred.add(key)
                    return None
                self.grads[key] = [None if g is None else self.stats.add(g) for g in grad_outputs]
            return None

        return prehook

    def _leaf_hook_for(self, key: NodeKey, node: Any) -> Any:
        lock = self._lock

        def posthook(grad_inputs: Any, grad_outputs: Any) -> None:
            with lock:
                if key in self._deferred:
                    self._deferred.discard(key)
                    g = node.variable.grad
                    if g is not None:
                        self.grads[key] = [self.stats.add(g)]
            return None

        return posthook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
