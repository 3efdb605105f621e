"""Where NaN and infinity start: in the data, in a forward op, in a backward op (alarms),
and the infinities a model puts there on purpose (a ``-inf`` attention mask: a note)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..records import TensorStats
from .finding import NONFINITE_DATA_NOTE, Finding, make, where
from .thresholds import HUGE

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["backward_origins", "data_alarms", "forward_origins"]

_LOSS_HINT = ("a tensor this op read that is not drawn holds it — check the targets (torch.isfinite(y).all()) "
              "and any mask or buffer it reads")


def _count(stats: tuple[TensorStats | None, ...], what: str) -> int:
    return sum(getattr(s, what) for s in stats if s is not None)


def _hidden_data(trace: Trace, word: str) -> str:
    """"'y' [8, 4], which holds 1 inf": the tensors not drawn that capture found non-finite (its trace notes)."""
    found = []
    for note in trace.notes:
        if note.startswith(NONFINITE_DATA_NOTE) and " in the code" in note and " holds " in note:
            name = note[len(NONFINITE_DATA_NOTE):note.index(" in the code")]
            held = note[note.index(" holds ") + 7:].split(";")[0]
            if word in held:
                found.append(f"{name}, which holds {held}")
    return " and ".join(found)


def _magnitude(stats: tuple[TensorStats | None, ...]) -> float:
    return max((max(abs(s.min), abs(s.max)) for s in stats if s is not None and s.min is not None and s.max is not None), default=0.0)


def _nonfinite(stats: tuple[TensorStats | None, ...]) -> bool:
    return any(s is not None and not s.finite for s in stats)


def data_alarms(trace: Trace) -> list[Finding]:
    """A tensor the step starts from (an input batch, a target, a parameter, a buffer) holding NaN or inf."""
    found = []
    for n in trace.nodes:
        if n.kind == "op" or not _nonfinite(n.values):
            continue
        nan, inf = _count(n.values, "nan"), _count(n.values, "inf")
        what = {"input": "the input", "param": "the parameter", "leaf": "the tensor"}[n.kind]
        numel = sum(s.numel for s in n.values if s is not None)
        parts = ([f"{nan} NaN"] if nan else []) + ([f"{inf} inf"] if inf else [])
        found.append(make(trace, "nan_data" if nan else "inf_data", n.key,
                          f"{what} '{n.label}' holds {' and '.join(parts)} of its {numel} elements before any op ran",
                          {"nan": float(nan), "inf": float(inf), "numel": float(numel)}))
    return found


def _inf_span(trace: Trace, key: str) -> set[str]:
    """The nodes an infinity born at ``key`` reaches, following only nodes whose values hold it."""
    g = trace.graph
    span, todo = {key}, [key]
    while todo:
        for c in g.successors(todo.pop()):
            if c not in span and _nonfinite(trace.node(c).values):
                span.add(c)
                todo.append(c)
    return span


def _absorbed(trace: Trace, span: set[str]) -> bool:
    """True when an infinity stays put: no NaN comes of it, it never reaches the loss, and every
    gradient around it is finite (a -inf attention mask that softmax turns into exact zeros)."""
    if trace.loss in span:
        return False
    g = trace.graph
    rim = {c for k in span for c in g.successors(k)} | span
    return not any(_count(trace.node(k).values, "nan") for k in span) and not any(_nonfinite(trace.node(k).grads) for k in rim)


def forward_origins(trace: Trace, order: list[str]) -> list[Finding]:
    """The ops whose output holds NaN (inf) while none of their inputs does: where it starts."""
    g = trace.graph
    found = []
    masks: list[tuple[str, set[str]]] = []
    for what, kind, word in (("nan", "nan_forward", "NaN"), ("inf", "inf_forward", "inf")):
        if not any(_count(n.values, what) for n in trace.nodes):
            continue  # (the common case, checked once: a healthy step has no origin to look for)
        for key in order:
            n = trace.node(key)
            if n.kind != "op" or not _count(n.values, what):
                continue
            preds = [trace.node(p) for p in g.predecessors(key)]
            if any(_count(p.values, what) for p in preds):
                continue  # it came from upstream
            count = _count(n.values, what)
            numbers = {"count": float(count), "forward_step": float(n.forward_step or 0)}
            if what == "inf" and not _count(n.values, "nan"):
                span = _inf_span(trace, key)
                if _absorbed(trace, span):
                    masks.append((key, span))
                    continue
            # Say what the inputs really hold: a NaN born from infinities upstream is not "from finite inputs".
            other = "inf" if what == "nan" else "nan"
            upstream = sum(_count(p.values, other) for p in preds)
            if upstream:
                inputs = f"its inputs hold no {word} but {upstream} {'infinities' if other == 'inf' else 'NaN'}"
            else:
                inputs = "its inputs are finite"
                big = max((_magnitude(p.values) for p in preds), default=0.0)
                if big > HUGE:
                    inputs += f" but as large as {big:.2g}: the op overflowed float32's range (an exploded weight or learning rate)"
            big = 0.0 if upstream else max((_magnitude(p.values) for p in preds), default=0.0)
            hint = _LOSS_HINT if key == trace.loss and not upstream and not big > HUGE else None
            message = f"{word} first appears in the forward output of {where(n)}: {count} element(s); {inputs}"
            hidden = _hidden_data(trace, word)
            if hidden and not upstream and not big > HUGE:
                message = message.replace("its inputs are finite", "its drawn inputs are finite") + f"; it read {hidden}"
                hint = _LOSS_HINT
            elif key == trace.loss and not upstream and not big > HUGE:
                message += " (a target or other tensor the loss read, not drawn, may hold it)"
            found.append(make(trace, kind, key, message, numbers, hint=hint))
    if masks:
        # One note for every mask of the step (a 12-layer model masks its scores 12 times), covering
        # every node the infinities pass through, so a drawing can mark them all quietly.
        first = trace.node(masks[0][0])
        covered = sorted({k for _, span in masks for k in span} - {masks[0][0]})
        others = f"; likewise at {len(masks) - 1} more op(s)" if len(masks) > 1 else ""
        found.append(make(trace, "masked_inf", first.key,
                          f"infinities are made on purpose at {where(first)} ({_count(first.values, 'inf')} element(s), a mask){others}: "
                          f"the ops after them absorb them and every gradient stays finite",
                          {"count": float(sum(_count(trace.node(k).values, "inf") for k, _ in masks)), "masks": float(len(masks))},
                          nodes=tuple(covered)))
    return found


def backward_origins(trace: Trace, order: list[str]) -> list[Finding]:
    """The ops whose backward turned the finite gradient they received into NaN (inf) for an input."""
    g = trace.graph
    found = []
    for what, kind, word in (("nan", "nan_backward", "NaN"), ("inf", "inf_backward", "inf")):
        seen: set[str] = set()
        bad = {n.key for n in trace.nodes if _count(n.grads, what)}
        if not bad:
            continue
        for key in order:
            if not any(p in bad for p in g.predecessors(key)):
                continue  # only a node that passed a non-finite gradient on can be an origin
            n = trace.node(key)
            if n.grad is None or _nonfinite(n.grads):
                continue
            if any(_nonfinite(trace.node(x).values) for x in [key, *g.predecessors(key)]):
                continue  # a non-finite forward value explains it: that origin is a forward finding
            for p in g.predecessors(key):
                pn = trace.node(p)
                if not _count(pn.grads, what) or key in seen:
                    continue
                if any(_count(trace.node(c).grads, what) for c in g.successors(p) if c != key):
                    continue  # another consumer passed it on: not born here
                seen.add(key)
                numbers = {"backward_step": float(n.backward_step or 0), "count": float(_count(pn.grads, what))}
                reaches, absorbers = _downstream(trace, p)
                if reaches:
                    found.append(make(trace, kind, key, f"the backward of {where(n)} received a finite gradient and passed {word} to '{pn.label}'",
                                      numbers))
                    continue
                # Every parameter's gradient is finite: the step's numbers are sound, but only because an op
                # further back (a ReLU's backward at 0) zeroed the infinity. One input nudged the other way breaks it.
                names = ", ".join(f"'{trace.node(a).label}'" for a in absorbers[:3]) or f"'{pn.label}'"
                found.append(make(trace, "absorbed_backward", key,
                                  f"the backward of {where(n)} received a finite gradient and made {word} ({int(numbers['count'])} element(s), "
                                  f"passed to '{pn.label}'; its derivative is infinite there, as sqrt's at 0); the backward of {names} "
                                  f"absorbed it, so every parameter gradient is finite: fragile, the next batch may let it through",
                                  numbers))
    return found


def _downstream(trace: Trace, start: str) -> tuple[bool, list[str]]:
    """Follow a non-finite gradient from ``start`` toward the inputs: does it reach a parameter (or another
    leaf), and which ops' backward absorbed it (received it and passed only finite gradients on)?"""
    g = trace.graph
    seen, todo, absorbers, reaches = {start}, [start], [], False
    while todo:
        k = todo.pop()
        n = trace.node(k)
        if n.kind != "op":
            reaches = True
            continue
        bad = [p for p in g.predecessors(k) if _nonfinite(trace.node(p).grads)]
        if not bad:
            absorbers.append(k)
        for p in bad:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return reaches, absorbers
