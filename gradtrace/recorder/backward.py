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
    #: node_id -> every key given to distinct nodes sharing it (made on different threads: sequence
    #: numbers count per thread), only where there are several.
    collided: dict[NodeKey, list[NodeKey]] = field(default_factory=dict)


def walk(root_nodes: Iterable[Any]) -> GraphWalk:
    """Every node reachable from ``root_nodes`` through ``next_functions``, without recursion.

    >>> x = torch.ones(2, requires_grad=True)
    >>> len(walk([(x * 2).sum().grad_fn]).nodes)   # SumBackward0, MulBackward0, AccumulateGrad
    3
    """
    g = GraphWalk()
    queue: deque[Any] = deque()
    # Nodes are told apart by the Python object: g.nodes holds each one, so its wrapper (and id) lives
    # as long as the walk. node_id alone is not enough across threads (each counts its own sequence).
    keys: dict[int, NodeKey] = {}

    def key_of(node: Any) -> tuple[NodeKey, bool]:
        key = keys.get(id(node))
        if key is not None:
            return key, False
        key = node_id(node)
        if key in g.nodes and key[1] == "AccumulateGrad":
            keys[id(node)] = key  # (a leaf's accumulator: the variable is the identity)
            return key, False
        if key in g.nodes:  # another node with the same identity: made on another thread
            same = g.collided.setdefault(key, [key])
            key = (key[0], f"{key[1]}#{len(same) + 1}")
            same.append(key)
        keys[id(node)] = key
        g.nodes[key] = node
        return key, True

    for node in root_nodes:
        key, new = key_of(node)
        if new:
            g.roots.append(key)
            queue.append(node)
    while queue:
        node = queue.popleft()
        consumer = keys[id(node)]
        for child, output_nr in node.next_functions:
            if child is None:
                continue
            key, new = key_of(child)
            g.edges.append((key, consumer, output_nr))
            if new:
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
        #: Keep every gradient a leaf receives (a leaf reached twice, by a nested backward, shows their sum).
        self.keep_leaf_grads = False
        self._leaf_grads: dict[NodeKey, list[torch.Tensor]] = {}
        self._running: dict[int, NodeKey] = {}  # thread -> the node whose pre-hook ran last there
        for key, node in graph.nodes.items():
            self.handles.append(node.register_prehook(self._hook_for(key)))

    def add(self, key: NodeKey, node: Any) -> None:
        """Hook a node found after the walk (in a backward run from inside this one)."""
        self.handles.append(node.register_prehook(self._hook_for(key)))

    def running(self) -> NodeKey | None:
        """The node the engine is running on this thread (the last whose pre-hook ran here)."""
        return self._running.get(threading.get_ident())

    def sum_repeated(self, stats: StatsBuffer) -> None:
        """Leaves that received gradients more than once: their statistics become the sum, added in
        the order AccumulateGrad added them."""
        for key, grads in self._leaf_grads.items():
            if len(grads) > 1:
                total = grads[0].clone()
                for g in grads[1:]:
                    total += g
                self.grads[key] = [stats.add(total)]
        self._leaf_grads.clear()

    def _hook_for(self, key: NodeKey) -> Any:
        lock = self._lock

        def prehook(grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
            # The engine runs each device's nodes on its own thread: a graph on two devices calls
            # these hooks from two threads at once.
            with lock:
                self._running[threading.get_ident()] = key
                if key in self.grads and key[1] != "AccumulateGrad":
                    return None  # (a node runs once; a leaf may be reached again by a nested backward)
                if key not in self.grads:
                    self.order.append(key)
                if key[1] == "AccumulateGrad":
                    # Reduced at once, not held: AccumulateGrad takes this tensor over as .grad only if
                    # nobody else holds it (else it copies it: other ops than the user's run would run).
                    self.grads[key] = [None if g is None else self.stats.add_now(g) for g in grad_outputs]
                else:
                    self.grads[key] = [None if g is None else self.stats.add(g) for g in grad_outputs]
                if self.keep_leaf_grads and key[1] == "AccumulateGrad" and grad_outputs and grad_outputs[0] is not None:
                    self._leaf_grads.setdefault(key, []).append(grad_outputs[0])
            return None

        return prehook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
