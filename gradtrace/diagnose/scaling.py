"""A constant that multiplies the loss (AMP loss scaling, ``loss / accumulation_steps``): a note, never a gain.

Every gradient of the step is scaled by such a constant, uniformly, so it changes no comparison
between parameters; and it acts on the loss, a scalar, not on any layer's signal. The layer-gain
check leaves these ops out; a factor large or small enough to make the gradients shown look off
(or the one a GradScaler applied) is said in a note.
"""

from __future__ import annotations

import math

import networkx as nx
from typing import TYPE_CHECKING

from .finding import LOSS_SCALER_NOTE, Finding, make, where
from .thresholds import FAR, SCALING

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["loss_scale_ops", "loss_scales", "scaler_scale"]


def scaler_scale(trace: Trace) -> float | None:
    """The scale of the GradScaler capture saw in use (its trace note), if any."""
    for note in trace.notes:
        if note.startswith(LOSS_SCALER_NOTE):
            try:
                return float(note[len(LOSS_SCALER_NOTE):].split(":")[0])
            except (ValueError, IndexError):
                return None
    return None


def _one(trace: Trace, key: str) -> bool:
    v = trace.node(key).value
    return v is not None and v.numel == 1


def loss_scale_ops(trace: Trace, order: list[str]) -> list[tuple[str, float]]:
    """(op, factor) for each product or quotient of the loss by a constant, between the last reduction and the loss."""
    g = trace.graph
    if trace.loss not in g or not _one(trace, trace.loss):
        return []
    # The scalar tail: the ops between the last reduction and the loss (each value one element).
    tail, todo = {trace.loss}, [trace.loss]
    while todo:
        for p in g.predecessors(todo.pop()):
            if p not in tail and trace.node(p).kind == "op" and _one(trace, p):
                tail.add(p)
                todo.append(p)
    ops: list[tuple[str, float]] = []
    for key in order:
        n = trace.node(key)
        if key not in tail or n.label not in SCALING or n.value is None or n.value.mean is None:
            continue
        # A constant factor: the loss is the one drawn operand (the other is a number or a tensor outside the graph).
        inputs = list(g.predecessors(key))
        if len(inputs) != 1 or trace.node(inputs[0]).kind != "op" or not _one(trace, inputs[0]):
            continue
        before = trace.node(inputs[0]).value
        if before is None or not before.mean or not math.isfinite(before.mean) or not math.isfinite(n.value.mean):
            continue
        ops.append((key, n.value.mean / before.mean))
    return ops


def loss_scales(trace: Trace, ops: list[tuple[str, float]]) -> list[Finding]:
    """A note per loss scale worth reading: the GradScaler's, or one far enough from 1 to make every gradient look off.

    (A ``loss / 4`` gets none: the gradients shown are a quarter of the unscaled loss's, nothing to read.)
    """
    scale = scaler_scale(trace)
    g = trace.graph
    factors = dict(ops)
    leaves = {k for k in nx.ancestors(g, trace.loss) if trace.node(k).kind != "op"}
    found = []
    for key, own in ops:
        below, above = nx.descendants(g, key), nx.ancestors(g, key)
        if any(k in factors for k in above):
            continue  # said once, at the first scaling on the way to the loss, with the product of them all
        if not leaves <= above:
            continue  # it weights one term of the loss (a regulariser × 1e4): not every gradient is scaled by it
        factor = own * math.prod(f for k, f in factors.items() if k in below)
        gradscaler = scale is not None and any(math.isclose(abs(v), scale, rel_tol=1e-3) for v in (own, factor))
        if not gradscaler and FAR < abs(factor) < 1 / FAR:
            continue
        why = ("AMP loss scaling: the GradScaler's scale" if gradscaler else
               "a constant applied to the loss: loss scaling, or averaging over accumulation steps")
        unscaled = ("the optimizer sees them unscaled (scaler.unscale_ / scaler.step divide them back)" if gradscaler else
                    "divide them by it to read the unscaled loss's")
        found.append(make(trace, "loss_scale", key,
                          f"gradients shown are scaled by {factor:.4g} ({why}, at {where(trace.node(key))}); {unscaled}; "
                          "not a layer gain", {"factor": factor}))
    return found
