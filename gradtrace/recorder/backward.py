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
        slots = g.slots[consumer] = []
        for slot, (child, output_nr) in enumerate(node.next_functions):
            if child is None:
                continue
            key, new = key_of(child)
            g.edges.append((key, consumer, output_nr))
            slots.append((key, output_nr, slot))
            if new:
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
        # A leaf's AccumulateGrad takes its incoming gradient over as .grad without a copy only if nobody
        # else holds it; holding it (for the leaf's statistics or for the edge that sent it) would cost a
        # copy per parameter, a launch and the memory, and one op more than torch runs. Where .grad will
        # be that tensor's values, it is read from .grad after AccumulateGrad ran instead.
        self._variables = {k: n.variable for k, n in graph.nodes.items() if k[1] == "AccumulateGrad"}
        fan_in: dict[NodeKey, int] = {}
        for consumer_slots in graph.slots.values():
            for producer, _, _ in consumer_slots:
                fan_in[producer] = fan_in.get(producer, 0) + 1
        # Leaves fed by one slot of one consumer: the gradient sent along that edge is what the leaf gets.
        self._lone_leaves = {k for k in self._variables if fan_in.get(k) == 1}
        # leaf -> (consumer, edge, weak reference, version) of the gradient sent to it, not held.
        self._waiting: dict[NodeKey, tuple[NodeKey, tuple[NodeKey, int], weakref.ref[torch.Tensor], int]] = {}
        # leaf whose gradient is read from .grad once it ran -> the waiting edge that takes the same handle.
        self._deferred: dict[NodeKey, tuple[NodeKey, tuple[NodeKey, int]] | None] = {}
        self._late_variables: dict[NodeKey, Any] = {}  # leaves hooked after the walk (see add())
        #: Keep every gradient a leaf receives (a leaf reached twice, by a nested backward, shows their sum).
        self.keep_leaf_grads = False
        #: Reduce every held statistic as each leaf's gradient arrives, and read that gradient as it
        #: arrives: a distributed run's collective (DDP's all-reduce) writes the reduced average into
        #: .grad, and the tensors sharing its memory, before the backward returns.
        self.settle_at_leaves = False
        self._leaf_grads: dict[NodeKey, list[torch.Tensor]] = {}
        self._running: dict[int, NodeKey] = {}  # thread -> the node whose pre-hook ran last there
        for key, node in graph.nodes.items():
            self.handles.append(node.register_prehook(self._hook_for(key)))
            slots = graph.slots.get(key)
            if slots:
                self.handles.append(node.register_hook(self._post_hook_for(key, slots)))
            if key in self._variables:
                self.handles.append(node.register_hook(self._leaf_hook_for(key, node)))

    def _takes_over(self, key: NodeKey) -> bool:
        """Whether the leaf's .grad will hold exactly the gradient it receives: no .grad yet to add to,
        and no post-accumulate-grad hook of the user's that may change .grad before it is read. (A
        tensor hook may replace the gradient: the leaf's pre-hook, after it, sees whether it did.)"""
        v = self._variables.get(key)
        return v is not None and v.grad is None and not getattr(v, "_post_accumulate_grad_hooks", None)

    def _may_take_over(self, key: NodeKey) -> bool:
        """Whether the leaf has no .grad yet (then AccumulateGrad may take its gradient over; with one,
        it adds the gradient into it, and holding the gradient costs nothing)."""
        v = self._variables.get(key)
        if v is None:
            v = self._late_variables.get(key)
        return v is None or v.grad is None

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
                sent: dict[tuple[NodeKey, int], int | None] = {}
                self.edge_grads[key] = sent
                for e, s in groups.items():
                    if plain:
                        g = grad_inputs[s[0]]
                        if g is not None and e[0] in self._lone_leaves and self._takes_over(e[0]):
                            sent[e] = None  # (the leaf's handle once it ran: see _hook_for and _leaf_hook_for)
                            self._waiting[e[0]] = (key, e, weakref.ref(g), g._version)
                        else:
                            sent[e] = None if g is None else add(g)
                        continue
                    parts = [grad_inputs[i] for i in s if grad_inputs[i] is not None]
                    if not parts:
                        sent[e] = None
                        continue
                    total = parts[0]
                    for p in parts[1:]:
                        total = total + p  # one tensor fed several inputs: the chain rule sums them
                    sent[e] = add(total)
            return None

        return posthook

    def _add_sent(self, g: torch.Tensor) -> int:
        handle = self.stats.add(g)
        try:
            self._sent[id(g)] = (weakref.ref(g), handle, g._version)
        except (TypeError, RuntimeError):  # (a tensor without weak references or version counter)
            pass
        return handle

    def add(self, key: NodeKey, node: Any) -> None:
        """Hook a node found after the walk (in a backward run from inside this one)."""
        if key[1] == "AccumulateGrad":
            self._late_variables[key] = node.variable
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

        leaf = key[1] == "AccumulateGrad"  # (also one hooked after the walk: see add())

        def prehook(grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
            # The engine runs each device's nodes on its own thread: a graph on two devices calls
            # these hooks from two threads at once.
            with lock:
                self._running[threading.get_ident()] = key
                if key in self.grads and not leaf:
                    return None  # (a node runs once; a leaf may be reached again by a nested backward)
                if key not in self.grads:
                    self.order.append(key)
                if leaf and self.settle_at_leaves:
                    # Read what is held before this leaf's AccumulateGrad and the collective's hooks run: DDP
                    # reduces .grad in place (a bucket view), FSDP2 frees the unsharded parameter again.
                    self.stats.settle()
                if leaf and self.keep_leaf_grads and grad_outputs and grad_outputs[0] is not None:
                    self._leaf_grads.setdefault(key, []).append(grad_outputs[0])
                waiting = self._waiting.pop(key, None) if leaf else None
                edge = None
                if waiting is not None and grad_outputs and grad_outputs[0] is not None \
                        and waiting[2]() is grad_outputs[0] and waiting[3] == grad_outputs[0]._version:
                    edge = waiting[:2]  # the leaf receives the very tensor its one edge sent
                # (Not in a distributed run: its collective writes .grad in place, in its own hooks after this
                # one, or on its own thread; the gradient arriving here is read now, the rank's own.)
                if key in self._variables and self._takes_over(key) and grad_outputs and grad_outputs[0] is not None \
                        and not self.settle_at_leaves:
                    # The post-hook reads the same values from .grad (see __init__).
                    self.grads[key] = [None]
                    self._deferred[key] = edge
                    if waiting is not None and edge is None:
                        self._resolve_edge(waiting, None)
                    return None
                sent = self._sent
                handles: list[int | None] = []
                for g in grad_outputs:
                    if g is None:
                        handles.append(None)
                        continue
                    hit = sent.pop(id(g), None)
                    if hit is not None and hit[0]() is g and hit[2] == g._version:
                        handles.append(hit[1])  # the tensor its consumer sent, unchanged: the same statistics
                    elif leaf and self._may_take_over(key):
                        # Reduced at once, not held: AccumulateGrad takes this tensor over as .grad only if
                        # nobody else holds it (else it copies it: other ops than the user's would run).
                        handles.append(self.stats.add_now(g))
                    else:
                        handles.append(self.stats.add(g))
                self.grads[key] = handles
                if waiting is not None:
                    self._resolve_edge(waiting, handles[0] if edge is not None else None)
            return None

        return prehook

    def _leaf_hook_for(self, key: NodeKey, node: Any) -> Any:
        lock = self._lock

        def posthook(grad_inputs: Any, grad_outputs: Any) -> None:
            with lock:
                if key in self._deferred:
                    edge = self._deferred.pop(key)
                    g = node.variable.grad
                    if g is not None:
                        self.grads[key] = [self.stats.add(g)]
                        if edge is not None:
                            self.edge_grads[edge[0]][edge[1]] = self.grads[key][0]
            return None

        return posthook

    def _resolve_edge(self, waiting: tuple[NodeKey, tuple[NodeKey, int], weakref.ref[torch.Tensor], int],
                      handle: int | None) -> None:
        """The statistics of a gradient sent to a leaf and not held: ``handle`` when the leaf's are
        those, else read now if the tensor is still there unchanged."""
        consumer, e, ref, version = waiting
        if handle is None:
            g = ref()
            if g is not None and g._version == version:
                handle = self.stats.add(g)
        self.edge_grads[consumer][e] = handle

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._sent.clear()
        with self._lock:
            # Gradients sent to leaves that never ran (torch.autograd.grad returns them instead).
            for waiting in self._waiting.values():
                self._resolve_edge(waiting, None)
            self._waiting.clear()
