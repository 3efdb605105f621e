"""A trace as a table for the terminal: one row per node, in backprop order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..collapse import module_nodes
from . import fmt
from .flow import edge_grad_text, grad_sum_lines, scope_title, sent_back
from .inert import inert_text, inert_trace
from .options import RenderOptions

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["to_text"]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def to_text(trace: Trace, options: RenderOptions | None = None) -> str:
    """Rows of step, label, module, shape, value, gradient (and source line); nodes backprop did not visit come last.

    With gradients shown, a second section lists what each consumer sent back
    along each edge, and how the gradient of a node with several consumers
    adds up (``grad = -400 + -400 = -800``). ``options.module`` keeps only that
    module's rows (a first line says so); other drawing options do not apply to a table.

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
    heading: list[str] = []
    if options.module is not None:  # only the module's rows, as the diagram draws only the module
        module = inert_text(options.module)
        inside = module_nodes(trace, module)
        order, rest, forward = ([k for k in keys if k in inside] for keys in (order, rest, forward))
        heading.append(f"module {module} only: {len(inside)} of {len(trace.nodes)} nodes")
    header = ["step", "node", "module", "shape"]
    if options.show_values:
        header.append("value")
    if options.show_grads:
        header.append("grad")
    with_source = any(n.source for n in trace.nodes)
    if with_source:
        header.append("source")
    rows = [header]
    for key in order + rest:
        n = trace.node(key)
        label = n.label + (" (loss)" if key == trace.loss else "") + (f" {n.args}" if n.args else "")
        row = [str(n.backward_step) if n.backward_step is not None else "-", _clip(label, 40),
               _clip(scope_title(n.scope or n.module), 32), fmt.shape(n.value) if n.value is not None else "-"]
        if options.show_values:
            row.append(fmt.summary(n.value))
        if options.show_grads:
            row.append(fmt.summary(n.grad) if n.kind != "input" else "-")
        if with_source:
            row.append(n.source or "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = heading + ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    if options.show_grads:
        lines += _edges_section(trace, order + rest)
    if trace.optimizer is not None:
        o = trace.optimizer
        settings = "".join(f" {k}={v}" for k, v in o.hyperparameters)
        lines.append(f"optimizer step: {o.name} lr={fmt.num(o.lr, 6)}{settings}")
        for key in forward:
            n = trace.node(key)
            if n.update is not None:
                ratio = "" if n.update_ratio is None else f"  ‖Δw‖/‖w‖ {fmt.num(n.update_ratio, 3)}"
                sgd = "" if n.sgd_update is None else f"; −lr·grad {fmt.summary(n.sgd_update)}"
                applied = "applied " if n.sgd_update is not None else ""
                lines.append(f"  Δ {n.label}: {applied}{fmt.summary(n.update)}{sgd}{ratio}")
    lines += [f"note: {n}" for n in trace.notes]
    return "\n".join(lines) + "\n"


def _edges_section(trace: Trace, keys: list[str]) -> list[str]:
    """What each consumer sent back along each edge, producers in table order; sums at fan-out nodes."""
    lines: list[str] = []
    for key in keys:
        n = trace.node(key)
        sent = [(dst, edge_grad_text(grad, uses)) for dst, _, grad, uses in sent_back(trace, key) if grad is not None]
        if not sent:
            continue
        step = f"#{n.backward_step} " if n.backward_step is not None else ""
        for dst, text in sent:
            d = trace.node(dst)
            dstep = f"#{d.backward_step} " if d.backward_step is not None else ""
            lines.append(f"  {step}{n.label} ← {dstep}{d.label}: {text}")
        lines += [f"    {n.label}: {line}" for line in grad_sum_lines(trace, key)]
    return ["gradient sent back along each edge (producer ← consumer):", *lines] if lines else []
