"""What changed at one matched node: gradient norm, value RMS, NaN/inf, shape, dtype, update size.

Ratios are B over A, given as log2 (0: the same, +1: twice as large in B, -1: half): a log
reads the same for growth and shrinkage, and sorts "10× smaller" beside "10× larger".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..records import TensorStats, TraceNode, _float_to_json

__all__ = ["NodeChange", "compare_nodes", "grad_norm", "log2_ratio", "value_rms"]


def grad_norm(n: TraceNode) -> float | None:
    """The L2 norm of every recorded gradient of ``n`` together (one output: its ``grad.norm``),
    over finite elements; ``None`` where no gradient was recorded."""
    return _joint_norm(n.grads)


def value_rms(n: TraceNode) -> float | None:
    """Root mean square of every recorded forward output of ``n`` together (one output: its
    ``value.rms``), over finite elements; ``None`` where no value was recorded or it is empty."""
    present = [s for s in n.values if s is not None and s.norm is not None]
    count = sum(s.numel - s.nan - s.inf for s in present)
    if not present or count <= 0:
        return None
    return math.sqrt(sum(s.norm**2 for s in present) / count)


def _joint_norm(items: tuple[TensorStats | None, ...]) -> float | None:
    present = [s.norm for s in items if s is not None and s.norm is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else math.sqrt(sum(x * x for x in present))


def log2_ratio(a: float | None, b: float | None) -> float | None:
    """``log2(b / a)``: 0 when both are 0, ±inf when only one is, None when either is missing.

    >>> log2_ratio(1.0, 4.0), log2_ratio(0.0, 0.0), log2_ratio(0.0, 1.0), log2_ratio(None, 1.0)
    (2.0, 0.0, inf, None)
    """
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    if a == 0 and b == 0:
        return 0.0
    if a == 0:
        return math.inf
    if b == 0:
        return -math.inf
    return math.log2(b) - math.log2(a)  # not log2(b / a): the quotient of two extremes can overflow


def _nonfinite(items: tuple[TensorStats | None, ...]) -> str:
    nan = sum(s.nan for s in items if s is not None)
    inf = sum(s.inf for s in items if s is not None)
    return " and ".join(w for w, c in (("NaN", nan), ("inf", inf)) if c)


@dataclass(frozen=True)
class NodeChange:
    """One matched node: its keys in A and B, what it is, and its numbers on each side.

    ``grad_log2`` and ``rms_log2`` are ``log2(B / A)`` of the gradient norm and the value RMS
    (see :func:`log2_ratio`). ``nonfinite`` says where NaN or inf appear in one trace only
    (``"NaN in B's gradient"``), empty when none does. ``grad_only_in`` is ``"A"`` or ``"B"`` when
    backprop reached the node in that trace only (a ``detach()`` added, a branch not taken), else
    ``""``. For parameters, ``update_log2`` compares the optimizer's update ratios ``‖Δw‖ / ‖w‖``.
    """

    a: str
    b: str
    kind: str
    label: str
    scope: str
    grad_a: float | None
    grad_b: float | None
    rms_a: float | None
    rms_b: float | None
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    dtype_a: str | None
    dtype_b: str | None
    nonfinite: tuple[str, ...] = ()
    update_a: float | None = None
    update_b: float | None = None
    grad_only_in: str = ""

    @property
    def grad_log2(self) -> float | None:
        return log2_ratio(self.grad_a, self.grad_b)

    @property
    def rms_log2(self) -> float | None:
        return log2_ratio(self.rms_a, self.rms_b)

    @property
    def update_log2(self) -> float | None:
        return log2_ratio(self.update_a, self.update_b)

    @property
    def size(self) -> float:
        """How large the change is, for sorting: NaN/inf or a gradient in one trace only first, then
        the largest |log2| ratio."""
        if self.nonfinite or self.grad_only_in:
            return math.inf
        logs = [abs(x) for x in (self.grad_log2, self.rms_log2, self.update_log2) if x is not None]
        return max(logs, default=0.0)

    @property
    def reshaped(self) -> bool:
        """The node's (first) output changed shape or dtype."""
        return (self.shape_a, self.dtype_a) != (self.shape_b, self.dtype_b)

    def to_dict(self) -> dict[str, Any]:
        f = _float_to_json
        return {
            "a": self.a, "b": self.b, "kind": self.kind, "label": self.label, "scope": self.scope,
            "grad_norm": [f(self.grad_a), f(self.grad_b)], "grad_log2": f(self.grad_log2),
            "value_rms": [f(self.rms_a), f(self.rms_b)], "value_log2": f(self.rms_log2),
            "shape": [None if self.shape_a is None else list(self.shape_a), None if self.shape_b is None else list(self.shape_b)],
            "dtype": [self.dtype_a, self.dtype_b], "nonfinite": list(self.nonfinite),
            "update_ratio": [f(self.update_a), f(self.update_b)], "update_log2": f(self.update_log2),
            "grad_only_in": self.grad_only_in,
        }


def compare_nodes(a: TraceNode, b: TraceNode) -> NodeChange:
    """The change from ``a`` to ``b``, two records of the same node in two traces."""
    flags = []
    for what, xa, xb in (("value", a.values, b.values), ("gradient", a.grads, b.grads), ("update", (a.update,), (b.update,))):
        fa, fb = _nonfinite(xa), _nonfinite(xb)
        if fa and not fb:
            flags.append(f"{fa} in A's {what} only")
        elif fb and not fa:
            flags.append(f"{fb} in B's {what} only")
    has_a, has_b = any(g is not None for g in a.grads), any(g is not None for g in b.grads)
    return NodeChange(
        a=a.key, b=b.key, kind=b.kind, label=b.label, scope=b.scope or b.module,
        grad_a=grad_norm(a), grad_b=grad_norm(b), rms_a=value_rms(a), rms_b=value_rms(b),
        shape_a=a.value.shape if a.value is not None else None, shape_b=b.value.shape if b.value is not None else None,
        dtype_a=a.value.dtype if a.value is not None else None, dtype_b=b.value.dtype if b.value is not None else None,
        nonfinite=tuple(flags), update_a=a.update_ratio, update_b=b.update_ratio,
        grad_only_in="A" if has_a and not has_b else "B" if has_b and not has_a else "",
    )
