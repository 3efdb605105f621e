"""Finite but wrong-sized gradients: vanishing, exploding, dead units, gradients that stop.

Only batch-independent quantities are compared (see :mod:`.thresholds`): parameter
gradients against each other, and one layer's input against its own output.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

from ..records import TensorStats, TraceNode
from .finding import Finding, make, where
from .thresholds import CANCELLED, DEAD_MIN_ELEMENTS, FAR, MIN_GROUP, NORMALISING, RELU_LIKE, SCALING, SPARSE_GRAD, ZERO_DERIVATIVE

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["dead_units", "layer_gains", "parameter_extremes", "stopped_gradients"]


#: The largest norm compared: past it a tensor's norm overflows the arithmetic it was computed in (float32
#: for every dtype but float64). Its statistics are exact (computed in double precision, scaled), but a
#: signal that size has left the dtype's range: that is an overflow, not a gain to compare.
_NORM_MAX = {"float64": 1.7976931348623157e308}
_FLOAT32_MAX = 3.4028234663852886e38


def _rms(s: TensorStats | None) -> float | None:
    # (A finite tensor's norm can still overflow float32: then nothing is compared.)
    if s is None or not s.finite or s.norm is None or s.norm > _NORM_MAX.get(s.dtype, _FLOAT32_MAX):
        return None
    r = s.rms
    return r if r is not None and math.isfinite(r) else None


def _names(trace: Trace, keys: list[str], limit: int = 3) -> str:
    labels = [f"'{trace.node(k).label}'" for k in keys]
    return ", ".join(labels[:limit]) + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _zero(s: TensorStats | None) -> bool:
    return s is not None and s.finite and s.norm == 0


def stopped_gradients(trace: Trace, order: list[str]) -> tuple[list[Finding], set[str]]:
    """Parameters whose gradient is (numerically) zero while the gradient reaching them is not.

    Returns the findings and the parameters they explain (left out of the vanishing check).
    Three causes: an op with zero derivative stops it (a warning at that op); a multiplication
    by an exact zero (a dropped block, a zero-initialised gate) or a dead ReLU stops it (a note,
    or the ``dead`` finding); a sum over the batch cancels it (a bias before BatchNorm, attention's
    key bias: a note at the parameter).
    """
    g = trace.graph
    explained: set[str] = set()
    by_blocker: dict[str, list[str]] = {}
    cancelled: list[Finding] = []
    for n in trace.nodes:
        if n.kind not in ("param", "leaf") or n.grad is None or not n.grad.finite or n.grad.norm is None:
            continue
        consumers = [trace.node(c) for c in g.successors(n.key)]
        out_norm = max((c.grad.norm for c in consumers if c.grad is not None and c.grad.finite and c.grad.norm
                        and math.isfinite(c.grad.norm)), default=0.0)
        if n.grad.norm == 0:
            # Walk down the zero gradient to the first op that received a non-zero one: the blocker.
            seen, todo, blockers = {n.key}, [n.key], set()
            while todo:
                for c in g.successors(todo.pop()):
                    cn = trace.node(c)
                    if c in seen or cn.grad is None:
                        continue
                    seen.add(c)
                    if _zero(cn.grad):
                        todo.append(c)
                    elif cn.grad.finite:
                        blockers.add(c)
            for b in blockers:
                by_blocker.setdefault(b, []).append(n.key)
            if blockers:
                explained.add(n.key)
            if out_norm and blockers == {c.key for c in consumers} and len(n.grad.shape) == 1 and not any(
                    trace.node(b).grad_fn in ZERO_DERIVATIVE or trace.node(b).label in RELU_LIKE for b in blockers):
                # The op it feeds got a non-zero gradient and the sum over the batch is exactly zero.
                by_blocker = {b: [k for k in ks if k != n.key] for b, ks in by_blocker.items()}
                cancelled.append((n, out_norm))
        elif len(n.grad.shape) == 1 and out_norm and n.grad.norm < CANCELLED * out_norm:
            explained.add(n.key)
            cancelled.append((n, out_norm))
    found = []
    for b, params in sorted(by_blocker.items()):
        if not params:
            continue
        bn = trace.node(b)
        numbers = {"params": float(len(params)), "grad_rms_at_op": bn.grad.rms or 0.0}  # type: ignore[union-attr]
        if _dead(bn) or any(_dead(trace.node(p)) for p in g.predecessors(b)):
            continue  # the dead ReLU is the finding (and the layer after it sees only zeros)
        if bn.grad_fn in ZERO_DERIVATIVE:
            found.append(make(trace, "zero_grad", b, f"the backward of {where(bn)} turns a non-zero gradient into exact zeros: "
                              f"{_names(trace, params)} upstream learn{'s' if len(params) == 1 else ''} nothing", numbers, nodes=tuple(params)))
        else:
            found.append(make(trace, "structural_zero", b, f"{_names(trace, params)} get{'s' if len(params) == 1 else ''} an exactly-zero gradient: {where(bn)} "
                              f"passes none to them this step (a path multiplied by zero: a dropped block, a zero gate or mask)",
                              numbers, nodes=tuple(params)))
    if cancelled:
        found.append(_cancelled(trace, cancelled))
    return found, explained


def _cancelled(trace: Trace, params: list[tuple[TraceNode, float]]) -> Finding:
    # One note for all of them: a MobileNet has a dozen biases in front of BatchNorm, one fact.
    n, out_norm = params[0]
    assert n.grad is not None
    rest = [m.key for m, _ in params[1:]]
    also = f"; likewise {_names(trace, rest)}" if rest else ""
    return make(trace, "structural_zero", n.key,
                f"the gradient of '{n.label}' is (numerically) zero by the model's structure: the gradient reaching the op it feeds "
                f"sums to zero over the batch (‖grad‖ {n.grad.norm:.3g} vs {out_norm:.3g} at its output), as for a bias "
                f"in front of a normalisation or attention's key bias{also}",
                {"grad_norm": n.grad.norm or 0.0, "op_grad_norm": out_norm, "count": float(len(params))}, nodes=tuple(rest))


def _dead(n: TraceNode) -> bool:
    v = n.value
    return n.kind == "op" and n.label in RELU_LIKE and v is not None and v.numel >= DEAD_MIN_ELEMENTS and v.finite and v.max == 0 and v.min == 0


def parameter_extremes(trace: Trace, explained: set[str], skip: bool) -> list[Finding]:
    """Parameters whose gradient is ``FAR`` away from both the median of their group and the one nearest the loss."""
    # Like is compared with like: a weight's gradient scales with the activations it multiplies,
    # a bias's does not, so weights, biases and other parameters are judged in separate groups.
    groups: dict[str, list[TraceNode]] = {}
    g = trace.graph
    for n in trace.nodes:
        r = _rms(n.grad)
        if n.kind == "param" and r and n.key not in explained:
            if any(trace.node(c).label in SPARSE_GRAD for c in g.successors(n.key)):
                continue  # an embedding table's RMS says how many of its rows the batch used, not how the gradient flows
            role = n.label.rpartition(".")[2]
            groups.setdefault(role if role in ("weight", "bias") else "other", []).append(n)
    found: list[Finding] = []
    weights = groups.get("weight", [])
    weight_median = statistics.median(_rms(n.grad) or 0.0 for n in weights) if weights else 0.0
    for role, params in sorted(groups.items()):
        if len(params) < MIN_GROUP:
            continue
        median = statistics.median(_rms(n.grad) or 0.0 for n in params)
        # The gradient nearest the loss is what the others are meant to resemble: in a deep net whose
        # gradient dies toward the input, the last layers sit far above the median and are still healthy.
        nearest = min(params, key=lambda n: n.backward_step if n.backward_step is not None else math.inf)
        reference = _rms(nearest.grad) or 0.0
        others = {"weight": "weights", "bias": "biases"}.get(role, "other parameters")
        low = [] if skip else [n for n in params if (_rms(n.grad) or 0.0) < FAR * min(median, reference)]
        if role == "bias":
            # A gradient that vanishes on its way to a layer reaches its weight too. A bias far below
            # the others beside a healthy weight is a fact about the bias (attention's query bias at
            # initialisation sums nearly-cancelling terms), not a gradient that vanished.
            low_weights = {n.label.rpartition(".")[0] for n in groups.get("weight", []) if (_rms(n.grad) or 0.0) < FAR * weight_median}
            has_weight = {n.label.rpartition(".")[0] for n in groups.get("weight", [])}
            low = [n for n in low if n.label.rpartition(".")[0] in low_weights or n.label.rpartition(".")[0] not in has_weight]
        high = [] if skip else [n for n in params if (_rms(n.grad) or 0.0) > max(median, reference) / FAR]
        for kind, members, word in (("vanishing", low, "smaller"), ("exploding", high, "larger")):
            if not members:
                continue
            # One finding per direction and group, at the parameter furthest out, naming the others.
            members.sort(key=lambda n: n.forward_step if n.forward_step is not None else 0)
            worst = min(members, key=lambda n: _rms(n.grad) or 0.0) if kind == "vanishing" else max(members, key=lambda n: _rms(n.grad) or 0.0)
            r = _rms(worst.grad) or 0.0
            factor = median / r if kind == "vanishing" else r / median
            rest = [m.key for m in members if m is not worst]
            also = f"; also {_names(trace, rest)}" if rest else ""
            found.append(make(trace, kind, worst.key,
                              f"the gradient of '{worst.label}' is {factor:.2g}× {word} than the median of the model's {others} "
                              f"(RMS {r:.3g} vs {median:.3g}){also}",
                              {"rms": r, "median_rms": median, "nearest_loss_rms": reference, "ratio": r / median,
                               "count": float(len(members))}, nodes=tuple(rest)))
    return found


def _param_derived(trace: Trace, order: list[str]) -> set[str]:
    """Nodes computed from parameters alone (a weight's transpose): not activations."""
    g = trace.graph
    derived: set[str] = set()
    for key in order:
        n = trace.node(key)
        preds = list(g.predecessors(key))
        if n.kind in ("param", "leaf") or (n.kind == "op" and preds and all(p in derived for p in preds)):
            derived.add(key)
    return derived


def layer_gains(trace: Trace, order: list[str], skip: frozenset[str] | set[str] = frozenset()) -> list[Finding]:
    """An op that multiplies the signal by ``1/FAR`` or more in both directions (or divides it): a broken layer.

    Forward: RMS of its output over RMS of its activation input. Backward: RMS of the gradient it
    sent to that input over RMS of the gradient it received. Both ratios are per element of the same
    tensors, so the batch size and the loss's reduction cancel out of them. Ops in ``skip`` (a
    constant applied to the loss) are left out.
    """
    g = trace.graph
    derived = _param_derived(trace, order)
    found = []
    for key in order:
        n = trace.node(key)
        out_v, out_g = _rms(n.value), _rms(n.grad)
        if n.kind != "op" or not out_v or not out_g or len(n.values) != 1 or n.label in NORMALISING or key in skip:
            continue
        # Only what scales the signal by a factor of its own: a layer with weights, or a product or
        # quotient (by a constant, a gate). A softmax over 8,192 positions divides both ways by
        # thousands by design; a reduction or a normalisation rescales by what it reads.
        if n.label not in SCALING and not any(p in derived for p in g.predecessors(key)):
            continue
        for p in g.predecessors(key):
            if p in derived:
                continue
            pn = trace.node(p)
            edge = g.edges[p, key].get("grad")
            if edge is None and g.out_degree(p) == 1 and len(pn.grads) == 1:
                edge = pn.grad  # one consumer: the gradient at p is the one this op sent back
            in_v, in_g = _rms(pn.value), _rms(edge)
            if not in_v or not in_g:
                continue
            forward, backward = out_v / in_v, in_g / out_g
            for kind, hit in (("exploding", forward > 1 / FAR and backward > 1 / FAR), ("vanishing", forward < FAR and backward < FAR)):
                if hit:
                    verb = "multiplies" if kind == "exploding" else "divides"
                    f, b = (forward, backward) if kind == "exploding" else (1 / forward, 1 / backward)
                    found.append(make(trace, kind, key, f"{where(n)} {verb} the signal by {f:.2g} in the forward and the gradient by "
                                      f"{b:.2g} in the backward: this layer starts it (its weights or scale are off)",
                                      {"forward_gain": forward, "backward_gain": backward},
                                      hint="check this layer's initialisation and any constant it multiplies by"))
    return found


def dead_units(trace: Trace, order: list[str]) -> list[Finding]:
    """A ReLU-like op whose output is zero for the whole batch: no gradient passes it."""
    found = []
    for key in order:
        n = trace.node(key)
        v = n.value
        if _dead(n) and v is not None:
            found.append(make(trace, "dead", key, f"{where(n)} outputs zero for the whole batch ({v.numel} elements): no gradient passes it",
                              {"numel": float(v.numel)}))
    return found
