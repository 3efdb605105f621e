"""Torch as the oracle: what the trace of a step must say, computed without gradtrace's capture.

`reference_step` runs the model plainly and records every tensor an op
produced together with its autograd node (a dispatch mode written here, not
gradtrace's), then asks ``torch.autograd.grad`` for the gradient of the loss
with respect to each of them. `autograd_walk` walks the graph breadth-first.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def same(a: Any, b: Any) -> bool:
    """Two TensorStats describe the same tensor: equal where the order of a reduction cannot matter
    (shape, dtype, extremes, NaN and infinity counts, exact values), equal up to float32 rounding
    where it can (mean, std, norm: gradtrace may read a tensor through a transposed view of its
    memory, or many rows at once, and a float32 sum taken in another order differs in its last
    bits, by up to about 1e-6 of the tensor's root mean square). NaN equals NaN."""
    if a is None or b is None:
        return False
    da, db = a.to_dict(), b.to_dict()
    rms = b.norm / math.sqrt(b.numel) if b.numel and b.norm is not None and math.isfinite(b.norm) else 0.0
    for f in ("mean", "std", "norm"):
        x, y = da.pop(f), db.pop(f)
        if isinstance(x, str) or isinstance(y, str) or x is None or y is None:  # nan/inf spelt out, or empty
            if x != y:
                return False
        elif not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6 * rms):
            return False
    return da == db


@dataclass
class RefNode:
    grad_fn: str
    position: int = -1  # its place among all op nodes reachable from the loss, in creation order
    values: dict[int, torch.Tensor] = field(default_factory=dict)  # output_nr -> what the op produced
    grads: dict[int, torch.Tensor | None] = field(default_factory=dict)  # output_nr -> d loss / d output


@dataclass
class Reference:
    loss: torch.Tensor
    # Nodes reachable from the loss whose output tensor still had them as grad_fn after the forward, in
    # creation order (a node whose output was then changed in place, `h += x`, cannot be observed here).
    ops: list[RefNode]
    param_grads: dict[str, torch.Tensor]
    n_ops: int
    n_leaves: int


class _Outputs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.tensors.append(t)
        return out


def autograd_walk(root: torch.Tensor) -> tuple[list[Any], list[Any]]:
    """(op nodes, AccumulateGrad nodes) reachable from ``root.grad_fn``, by a plain breadth-first walk."""
    start = root.grad_fn
    seen, queue = {id(start)}, deque([start])
    ops, leaves = [], []
    while queue:
        node = queue.popleft()
        (leaves if type(node).__name__ == "AccumulateGrad" else ops).append(node)
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                queue.append(child)
    return ops, leaves


def assert_ops_match(trace: Any, ref: Reference, unobservable: int = 0) -> list[Any]:
    """Every op node of ``trace`` is one of the autograd nodes ``ref`` found, in creation order, and every
    value and gradient the oracle observed equals the trace's (``same``). ``unobservable``: how many
    nodes the oracle cannot see (their output was changed in place later). Returns the op nodes."""
    from gradtrace.recorder.stats import stats_of

    ops = sorted((n for n in trace.nodes if n.kind == "op"), key=lambda n: n.forward_step)
    assert len(ops) == ref.n_ops, "one op node per autograd node reachable from the loss"
    assert len(ref.ops) == len(ops) - unobservable
    for expected in ref.ops:
        node = ops[expected.position]
        assert node.grad_fn == expected.grad_fn
        for nr, value in expected.values.items():
            assert same(node.values[nr], stats_of(value)), f"forward value of {node.key} ({node.grad_fn}) output {nr}"
            grad = expected.grads[nr]
            if grad is not None:
                assert same(node.grads[nr], stats_of(grad)), f"gradient at {node.key} ({node.grad_fn}) output {nr}"
    return ops


def reference_step(model: Callable[..., Any], inputs: tuple, loss: Callable[[Any], torch.Tensor]) -> Reference:
    """Run ``loss(model(*inputs))`` plainly and take every gradient from ``torch.autograd.grad``."""
    mode = _Outputs()
    with mode:
        root = loss(model(*inputs))
    ops, leaves = autograd_walk(root)
    reachable = {n._sequence_nr() for n in ops}
    firsts: dict[tuple[int, int], torch.Tensor] = {}
    for t in mode.tensors:
        gf = t.grad_fn if t.requires_grad else None
        if gf is not None and gf._sequence_nr() in reachable:
            firsts.setdefault((gf._sequence_nr(), t.output_nr), t)  # the op that made it saw it first
    keys = sorted(firsts)
    tensors = [firsts[k] for k in keys]
    values = [t.detach().clone() for t in tensors]
    grads = torch.autograd.grad(root, tensors, allow_unused=True, retain_graph=True)
    by_seq: dict[int, RefNode] = {}
    position = {s: i for i, s in enumerate(sorted(reachable))}
    for (seq, nr), t, v, g in zip(keys, tensors, values, grads):
        node = by_seq.setdefault(seq, RefNode(type(t.grad_fn).__name__, position[seq]))
        node.values[nr] = v
        node.grads[nr] = g
    root.backward()
    params = {}
    if isinstance(model, torch.nn.Module):
        params = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return Reference(root.detach(), [by_seq[s] for s in sorted(by_seq)], params, len(ops), len(leaves))
