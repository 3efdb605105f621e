"""A trace as a table for the terminal: one row per node, in backprop order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import fmt
from .inert import inert_trace
from .options import RenderOptions

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["to_text"]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def to_text(trace: Trace, options: RenderOptions | None = None) -> str:
    """Rows of step, label, module, shape, value and gradient; nodes backprop did not visit come last.

    >>> print(to_text(t))                           # doctest: +SKIP
    step  node      module  shape    value            grad
    1     nll_loss          ()       2.303            1
    """
    options = options or RenderOptions()
    # Names from a model or a trace file reach a terminal: no escape sequence may act there.
    trace = inert_trace(trace)
    order = trace.backward_order()
    visited = set(order)  # once: a set built per node made 100k nodes take ten minutes
    forward = trace.forward_order()
    rest = [k for k in forward if k not in visited]
    header = ["step", "node", "module", "shape"]
    if options.show_values:
        header.append("value")
    if options.show_grads:
        header.append("grad")
    rows = [header]
    for key in order + rest:
        n = trace.node(key)
        label = n.label + (" (loss)" if key == trace.loss else "")
        row = [str(n.backward_step) if n.backward_step is not None else "-", _clip(label, 40), _clip(n.module, 32),
               fmt.shape(n.value) if n.value is not None else "-"]
        if options.show_values:
            row.append(fmt.summary(n.value))
        if options.show_grads:
            row.append(fmt.summary(n.grad) if n.kind != "input" else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    if trace.optimizer is not None:
        o = trace.optimizer
        settings = "".join(f" {k}={v}" for k, v in o.hyperparameters)
        lines.append(f"optimizer step: {o.name} lr={fmt.num(o.lr, 6)}{settings}")
        for key in forward:
            n = trace.node(key)
            if n.update is not None:
                ratio = "" if n.update_ratio is None else f"  ‖Δw‖/‖w‖ {fmt.num(n.update_ratio, 3)}"
                lines.append(f"  Δ {n.label}: {fmt.summary(n.update)}{ratio}")
    lines += [f"note: {n}" for n in trace.notes]
    return "\n".join(lines) + "\n"
