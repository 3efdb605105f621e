"""Where do gradients vanish, explode or turn NaN? Answers read off a Trace (no torch here).

Thresholds, all documented and all on root-mean-square magnitudes (so tensors
of different sizes compare):

- ``vanishing`` / ``exploding`` (parameters): a parameter's gradient RMS is
  below ``FAR`` × (above ``1/FAR`` ×) both the median over its group and the
  gradient of its group's parameter nearest the loss (the first backprop
  reaches), ``FAR = 1e-3``: three orders of magnitude. Groups: weights,
  biases, other parameters (a weight's gradient scales with its input's
  activations, a bias's does not). The second condition
  keeps the healthy last layers of a net whose gradient dies toward the input
  from reading as "exploding".
- ``vanishing`` / ``exploding`` (depth trend): among three or more sibling
  modules, the gradient at the output of the one nearest the input is
  ``FAR`` × smaller (or ``1/FAR`` × larger) than at the one nearest the loss.
- ``dead``: a ReLU-like op whose output is zero for the whole batch.
- ``update_ratio``: ‖Δw‖/‖w‖ of the captured optimizer step below
  ``UPDATE_LOW`` (1e-5) or above ``UPDATE_HIGH`` (1e-1), two orders of
  magnitude from the customary 1e-3.
- ``nan_forward`` / ``inf_forward``: an op whose output holds NaN (inf) while
  none of its inputs does: the origin, not what lies downstream. An infinity
  that the very next ops absorb (a ``-inf`` attention mask under a softmax)
  is no finding.
- ``nan_backward`` / ``inf_backward``: an op whose backward turned the finite
  gradient it received into a NaN (inf) gradient for one of its inputs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .records import TensorStats, TraceNode

if TYPE_CHECKING:
    from .steptrace import Trace

__all__ = ["FAR", "Finding", "KINDS", "UPDATE_HIGH", "UPDATE_LOW", "diagnose"]

FAR = 1e-3
UPDATE_LOW, UPDATE_HIGH = 1e-5, 1e-1
RELU_LIKE = frozenset({"relu", "relu6", "hardtanh", "threshold", "leaky_relu"})

#: Finding kinds, most severe first.
KINDS = ("nan_forward", "inf_forward", "nan_backward", "inf_backward", "exploding", "vanishing", "dead", "update_ratio")
#: Kinds that mean the step's numbers are broken (``gradtrace check`` exits 1 on these).
ALARMS = frozenset(KINDS[:4])


@dataclass(frozen=True)
class Finding:
    """One thing worth a look: its kind, the node it is about, a sentence, and the numbers behind it."""

    kind: str
    node: str
    message: str
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def alarm(self) -> bool:
        return self.kind in ALARMS

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "message": self.message,
                "numbers": {k: (v if math.isfinite(v) else str(v)) for k, v in self.numbers.items()}}


def _has(stats: tuple[TensorStats | None, ...], what: str) -> bool:
    return any(s is not None and getattr(s, what) > 0 for s in stats)


def _where(n: TraceNode) -> str:
    return f"'{n.label}'" + (f" in module '{n.module}'" if n.module else " at top level")


def _forward_origins(trace: Trace, order: list[str]) -> list[Finding]:
    g = trace.graph
    found = []
    for what, kind, word in (("nan", "nan_forward", "NaN"), ("inf", "inf_forward", "inf")):
        if not any(_has(n.values, what) for n in trace.nodes):
            continue  # (the common case, checked once: a healthy step has no origin to look for)
        for key in order:
            n = trace.node(key)
            if n.kind != "op" or not _has(n.values, what):
                continue
            if any(_has(trace.node(p).values, what) for p in g.predecessors(key)):
                continue  # it came from upstream
            if what == "inf" and not _has(n.values, "nan"):
                consumers = list(g.successors(key))
                if consumers and not any(_has(trace.node(c).values, "inf") or _has(trace.node(c).values, "nan") for c in consumers):
                    continue  # absorbed at once, like a -inf mask under softmax
            count = sum(getattr(s, what) for s in n.values if s is not None)
            found.append(Finding(kind, key, f"{word} first appears in the forward output of {_where(n)}: {count} element(s); its inputs are finite",
                                 {"count": float(count), "forward_step": float(n.forward_step or 0)}))
    return found


def _backward_origins(trace: Trace, order: list[str]) -> list[Finding]:
    g = trace.graph
    found = []
    for what, kind, word in (("nan", "nan_backward", "NaN"), ("inf", "inf_backward", "inf")):
        seen: set[str] = set()
        bad = {n.key for n in trace.nodes if _has(n.grads, what)}
        for key in order:
            if not bad or not any(p in bad for p in g.predecessors(key)):
                continue  # only a node that passed a non-finite gradient on can be an origin
            n = trace.node(key)
            if n.grad is None or _has(n.grads, what) or _has(n.grads, "nan" if what == "inf" else "inf"):
                continue
            if not all(s is None or s.finite for x in [key, *g.predecessors(key)] for s in trace.node(x).values):
                continue  # a non-finite forward value explains it: that origin is a forward finding
            for p in g.predecessors(key):
                pn = trace.node(p)
                if not _has(pn.grads, what) or key in seen:
                    continue
                if any(_has(trace.node(c).grads, what) for c in g.successors(p)):
                    continue  # another consumer passed it on: not born here
                seen.add(key)
                found.append(Finding(kind, key, f"the backward of {_where(n)} received a finite gradient and passed {word} to '{pn.label}'",
                                     {"backward_step": float(n.backward_step or 0)}))
    return found


def _rms(s: TensorStats | None) -> float | None:
    return None if s is None or not s.finite else s.rms


def _parameter_extremes(trace: Trace) -> list[Finding]:
    # Like is compared with like: a weight's gradient scales with the activations it multiplies,
    # a bias's does not, so weights, biases and other parameters are judged in separate groups.
    groups: dict[str, list[TraceNode]] = {}
    for n in trace.nodes:
        if n.kind == "param" and _rms(n.grad) is not None:
            role = n.label.rpartition(".")[2]
            groups.setdefault(role if role in ("weight", "bias") else "other", []).append(n)
    found = []
    for role, params in sorted(groups.items()):
        found += _extremes_in(params, role)
    return found


def _extremes_in(params: list[TraceNode], role: str) -> list[Finding]:
    if len(params) < 3:
        return []
    median = statistics.median(_rms(n.grad) for n in params)  # type: ignore[misc]
    # The gradient nearest the loss is what the others are meant to resemble: in a deep net whose
    # gradient dies toward the input, the last layers sit far above the median and are still healthy.
    nearest = min(params, key=lambda n: n.backward_step or math.inf)
    reference = _rms(nearest.grad)
    if not median or not reference:
        return []
    found = []
    others = {"weight": "weights", "bias": "biases"}.get(role, "other parameters")
    for n in params:
        r = _rms(n.grad)
        assert r is not None
        ratio = r / median
        numbers = {"rms": r, "median_rms": median, "nearest_loss_rms": reference, "ratio": ratio}
        if ratio < FAR and r < FAR * reference:
            found.append(Finding("vanishing", n.key, f"the gradient of '{n.label}' is {1 / ratio:.2g}× smaller than the median of the model's {others} (RMS {r:.3g} vs {median:.3g})", numbers))
        elif ratio > 1 / FAR and r > reference / FAR:
            found.append(Finding("exploding", n.key, f"the gradient of '{n.label}' is {ratio:.2g}× larger than the median of the model's {others} (RMS {r:.3g} vs {median:.3g})", numbers))
    return found


def _depth_trends(trace: Trace, order: list[str]) -> list[Finding]:
    last_op: dict[str, str] = {}
    for key in order:
        n = trace.node(key)
        if n.kind == "op" and n.module:
            parts = n.module.split(".")
            for i in range(1, len(parts) + 1):
                last_op[".".join(parts[:i])] = key  # the latest op inside each enclosing module
    groups: dict[str, list[str]] = {}
    for path in sorted(last_op, key=lambda p: trace.node(last_op[p]).forward_step or 0):
        groups.setdefault(path.rpartition(".")[0], []).append(path)
    found = []
    for parent, members in sorted(groups.items()):
        seq = [(m, _rms(trace.node(last_op[m]).grad)) for m in members]
        seq = [(m, r) for m, r in seq if r is not None and r > 0]
        if len(seq) < 3:
            continue
        (first, r_in), (last, r_out) = seq[0], seq[-1]
        ratio = r_in / r_out
        if FAR <= ratio <= 1 / FAR:
            continue
        kind, verb, factor = ("vanishing", "shrinks", 1 / ratio) if ratio < FAR else ("exploding", "grows", ratio)
        where = f"across the modules of '{parent}'" if parent else "across the top-level modules"
        found.append(Finding(kind, last_op[first], f"the gradient {verb} {factor:.2g}× {where}, from {r_out:.3g} at '{last}' "
                             f"(near the loss) to {r_in:.3g} at '{first}' (near the input)",
                             {"rms_near_loss": r_out, "rms_near_input": r_in, "ratio": ratio}))
    return found


def _dead(trace: Trace, order: list[str]) -> list[Finding]:
    found = []
    for key in order:
        n = trace.node(key)
        v = n.value
        if n.kind == "op" and n.label in RELU_LIKE and v is not None and v.numel > 0 and v.finite and v.max == 0 and v.min == 0:
            found.append(Finding("dead", key, f"{_where(n)} outputs zero for the whole batch ({v.numel} elements): no gradient passes it",
                                 {"numel": float(v.numel)}))
    return found


def _update_ratios(trace: Trace, order: list[str]) -> list[Finding]:
    found = []
    for key in order:
        n = trace.node(key)
        r = n.update_ratio
        if r is None:
            continue
        if r > UPDATE_HIGH or r < UPDATE_LOW:
            side = "large" if r > UPDATE_HIGH else "small"
            found.append(Finding("update_ratio", key, f"the optimizer step changed '{n.label}' by ‖Δw‖/‖w‖ = {r:.2g}, too {side} next to the customary ~1e-3",
                                 {"update_ratio": r}))
    return found


def diagnose(trace: Trace) -> list[Finding]:
    """Findings about ``trace``, most severe first (NaN/inf origins, then exploding, vanishing, dead, update size).

    >>> [f.kind for f in diagnose(t)]                     # doctest: +SKIP
    ['nan_forward']
    """
    forward = trace.forward_order()
    backward = trace.backward_order()
    findings = (
        _forward_origins(trace, forward) + _backward_origins(trace, backward) + _parameter_extremes(trace)
        + _depth_trends(trace, forward) + _dead(trace, forward) + _update_ratios(trace, forward)
    )
    rank = {k: i for i, k in enumerate(KINDS)}
    position = {k: i for i, k in enumerate(forward)}
    return sorted(findings, key=lambda f: (rank[f.kind], position.get(f.node, 0)))
