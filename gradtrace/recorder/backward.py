"""Backward recording: the autograd graph, the gradient reaching each node, and the order.

:func:`walk` visits the graph behind the roots iteratively (graphs reach tens
of thousands of nodes, so no recursion). :class:`BackwardRecorder` puts a
pre-hook on every node it found: the engine calls it with the gradient with
respect to the node's outputs, just before running the node, so the order
of the calls is the order backprop visited the graph.
"""

from __future__ import annotations

import threading
import weakref
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
    #: consumer -> its inputs as ``next_functions`` lists them: (producer, output_nr, slot), slot being
    #: the position in ``next_functions`` (and in the consumer's ``grad_inputs``); empty slots left out.
    slots: dict[NodeKey, list[tuple[NodeKey, int, int]]] = field(default_factory=dict)


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
        slots = g.slots[consumer] = []
        for slot, (child, output_nr) in enumerate(node.next_functions):
            if child is None:
                continue
            key = node_id(child)
            g.edges.append((key, consumer, output_nr))
            slots.append((key, output_nr, slot))
            if key not in g.nodes:
                g.nodes[key] = child
                queue.append(child)
    return g


class BackwardRecorder:
    """Hooks on every node of a walk: gradient statistics, visit order, and the gradient each
    node sent back along each of its input edges (``edge_grads``)."""

    def __init__(self, graph: GraphWalk, stats: StatsBuffer) -> None:
        self.stats = stats
        self.order: list[NodeKey] = []
        self.grads: dict[NodeKey, list[int | None]] = {}
        #: consumer -> (producer, output_nr) -> stats handle of the gradient sent along that edge (summed
        #: over the slots it fills, as in ``x * x``), None where the backward sent none.
        self.edge_grads: dict[NodeKey, dict[tuple[NodeKey, int], int | None]] = {}
        self.handles: list[RemovableHandle] = []
        self._lock = threading.Lock()
        # id(gradient a node sent) -> (weak reference, stats handle, version): a producer with one consumer
        # usually receives that very tensor, whose statistics are then not computed twice.
        self._sent: dict[int, tuple[weakref.ref[torch.Tensor], int, int]] = {}
        for key, node in graph.nodes.items():
            self.handles.append(node.register_prehook(self._hook_for(key)))
            slots = graph.slots.get(key)
            if slots:
                self.handles.append(node.register_hook(self._post_hook_for(key, slots)))

    def _post_hook_for(self, key: NodeKey, slots: list[tuple[NodeKey, int, int]]) -> Any:
        lock = self._lock
        groups: dict[tuple[NodeKey, int], list[int]] = {}
        for producer, output_nr, slot in slots:
            groups.setdefault((producer, output_nr), []).append(slot)
        plain = all(len(s) == 1 for s in groups.values())

        def posthook(grad_inputs: tuple[torch.Tensor | None, ...], grad_outputs: Any) -> None:
            # grad_inputs is aligned with next_functions: one gradient per input edge of this node.
            with lock:
                add = self._add_sent
                if plain:
                    self.edge_grads[key] = {e: None if grad_inputs[s[0]] is None else add(grad_inputs[s[0]])
                                            for e, s in groups.items()}
                    return None
                sent: dict[tuple[NodeKey, int], int | None] = {}
                for e, s in groups.items():
                    parts = [grad_inputs[i] for i in s if grad_inputs[i] is not None]
                    if not parts:
                        sent[e] = None
                        continue
                    total = parts[0]
                    for p in parts[1:]:
                        total = total + p  # one tensor fed several inputs: the chain rule sums them
                    sent[e] = add(total)
                self.edge_grads[key] = sent
            return None

        return posthook

    def _add_sent(self, g: torch.Tensor) -> int:
        handle = self.stats.add(g)
        try:
            self._sent[id(g)] = (weakref.ref(g), handle, g._version)
        except (TypeError, RuntimeError):  # (a tensor without weak references or version counter)
            pass
        return handle

    def _hook_for(self, key: NodeKey) -> Any:
        lock = self._lock

        def prehook(grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
            # The engine runs each device's nodes on its own thread: a graph on two devices calls
            # these hooks from two threads at once.
            with lock:
                self.order.append(key)
                sent = self._sent
                handles: list[int | None] = []
                for g in grad_outputs:
                    if g is None:
                        handles.append(None)
                        continue
                    hit = sent.pop(id(g), None)
                    if hit is not None and hit[0]() is g and hit[2] == g._version:
                        handles.append(hit[1])  # the tensor its consumer sent, unchanged: the same statistics
                    else:
                        handles.append(self.stats.add(g))
                self.grads[key] = handles
            return None

        return prehook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._sent.clear()
