"""Trace -> ``graphviz.Digraph``: the static diagram. Builds DOT source, runs nothing.

Every string that came from user code (module and parameter names, class
names) is escaped before it reaches an HTML-like label or a tooltip.
Nodes, clusters and edges are emitted in a fixed order, so the same trace
always gives the same DOT text, byte for byte.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import graphviz

from ..diagnose import Finding
from ..records import TraceNode
from . import fmt
from .options import RenderOptions
from .style import ALARM, BANDS, FINDING, NO_GRAD, THEME_COLORS, ZERO_GRAD, band_for, text_color

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["escape_tooltip", "node_tooltip", "to_dot"]

FONT = "Helvetica"
MAX_LEGEND_FINDINGS = 8
_KIND_STYLE = {
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff", "color": "#4d4d4d"},
    "param": {"shape": "box", "style": "filled", "fillcolor": "#fbf3dc", "color": "#8c6d1f"},
    "leaf": {"shape": "box", "style": "filled", "fillcolor": "#e6eefb", "color": "#2f5597"},
    "input": {"shape": "box", "style": "dashed,filled", "fillcolor": "#f2f2f2", "color": "#4d4d4d"},
}


def h(text: str) -> str:
    """Escape text for an HTML-like Graphviz label."""
    return html.escape(text, quote=True)


def escape_tooltip(text: str) -> str:
    """Escape text for a Graphviz escString attribute (tooltip): backslashes are escapes there."""
    return text.replace("\\", "\\\\")


def _outputs_lines(prefix: str, items: tuple, limit: int = 3) -> list[str]:
    present = [(i, s) for i, s in enumerate(items) if s is not None]
    if len(items) <= 1:
        return [f"{prefix} {fmt.summary(items[0] if items else None)}"]
    lines = [f"{prefix}[{i}] {fmt.summary(s)}" for i, s in present[:limit]]
    if len(present) > limit:
        lines.append(f"… {len(present) - limit} more outputs")
    return lines or [f"{prefix} -"]


_BADGES = {
    "nan_forward": "NaN starts here", "inf_forward": "inf starts here", "nan_backward": "NaN gradient starts here",
    "inf_backward": "inf gradient starts here", "vanishing": "vanishing gradient", "exploding": "exploding gradient",
    "dead": "dead: all zero", "update_ratio": "update size off",
}


def node_label(n: TraceNode, options: RenderOptions, is_loss: bool, findings: list[Finding] = []) -> str:  # noqa: B006 (never mutated)
    color, _ = band_for(n.grad)
    if any(s is not None and not s.finite for s in n.values + n.grads):
        color = ALARM
    ink = text_color(color)
    title = h(n.label) + (" · loss" if is_loss else "")
    step = "" if n.backward_step is None else f'<FONT COLOR="{ink}">#{n.backward_step}</FONT>'
    rows = [
        f'<TR><TD BGCOLOR="{color}" ALIGN="LEFT"><FONT COLOR="{ink}"><B>{title}</B></FONT></TD>'
        f'<TD BGCOLOR="{color}" ALIGN="RIGHT">{step}</TD></TR>'
    ]
    first = n.value
    if first is not None:
        shapes = fmt.shape(first) if len(n.values) <= 1 else " ".join(fmt.shape(s) for s in n.values if s is not None)
        rows.append(f'<TR><TD COLSPAN="2" ALIGN="LEFT"><FONT POINT-SIZE="9">{h(shapes)} {h(first.dtype)}</FONT></TD></TR>')
    lines: list[str] = []
    if options.show_values:
        lines += _outputs_lines("value", n.values)
    if options.show_grads and n.kind != "input":
        lines += _outputs_lines("grad", n.grads)
    if n.update is not None:
        lines.append(f"Δw {fmt.summary(n.update)}")
        if n.update_ratio is not None:
            lines.append(f"‖Δw‖/‖w‖ {fmt.num(n.update_ratio, 3)}")
    for line in lines:
        rows.append(f'<TR><TD COLSPAN="2" ALIGN="LEFT"><FONT POINT-SIZE="10">{h(line)}</FONT></TD></TR>')
    for f in findings:
        badge = ALARM if f.alarm else FINDING
        rows.append(f'<TR><TD COLSPAN="2" ALIGN="LEFT" BGCOLOR="{badge}"><FONT COLOR="{text_color(badge)}" POINT-SIZE="10"><B>⚠ {h(_BADGES[f.kind])}</B></FONT></TD></TR>')
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">' + "".join(rows) + "</TABLE>>"


def node_tooltip(n: TraceNode) -> str:
    """Everything known about a node, one fact per line (hover text in the SVG)."""
    lines = [f"{n.label} ({n.kind})"]
    if n.grad_fn:
        lines.append(f"grad_fn {n.grad_fn}")
    lines.append(f"module {n.module or '(top level)'}")
    lines.append(f"forward step {n.forward_step if n.forward_step is not None else '-'}, backward step {n.backward_step if n.backward_step is not None else '-'}")
    for i, s in enumerate(n.values):
        lines.append(f"value{'' if len(n.values) == 1 else f'[{i}]'}:")
        lines += ["  " + x for x in fmt.stats_lines(s)]
    if n.kind != "input":
        for i, s in enumerate(n.grads):
            lines.append(f"grad{'' if len(n.grads) == 1 else f'[{i}]'}:")
            lines += ["  " + x for x in fmt.stats_lines(s)]
    if n.update is not None:
        lines.append("update Δw:")
        lines += ["  " + x for x in fmt.stats_lines(n.update)]
        if n.update_ratio is not None:
            lines.append(f"  ‖Δw‖/‖w‖ {fmt.num(n.update_ratio, 6)}")
    return escape_tooltip("\n".join(lines))


def _legend(theme: dict[str, str], findings: list[Finding]) -> str:
    cells = []
    for b in BANDS:
        cells.append(f'<TD BGCOLOR="{b.color}"><FONT COLOR="{text_color(b.color)}" POINT-SIZE="9">{h(b.label)}</FONT></TD>')
    extra = [
        (ALARM, "NaN / inf"),
        (ZERO_GRAD, "zero"),
        (NO_GRAD, "none"),
    ]
    for color, text in extra:
        cells.append(f'<TD BGCOLOR="{color}"><FONT COLOR="{text_color(color)}" POINT-SIZE="9">{h(text)}</FONT></TD>')
    n = len(cells)
    return (
        f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3" COLOR="{theme["cluster"]}">'
        f'<TR><TD COLSPAN="{n}"><FONT COLOR="{theme["text"]}">gradient magnitude (RMS, log scale) · #n = order in backprop</FONT></TD></TR>'
        f"<TR>{''.join(cells)}</TR>"
        f'<TR><TD COLSPAN="{n}"><FONT COLOR="{theme["text"]}" POINT-SIZE="9">'
        "rounded box: op · tan box: parameter · blue box: other tensor requiring grad · dashed box: input"
        "</FONT></TD></TR>" + "".join(
            f'<TR><TD COLSPAN="{n}" ALIGN="LEFT" BGCOLOR="{ALARM if f.alarm else FINDING}">'
            f'<FONT COLOR="{text_color(ALARM if f.alarm else FINDING)}" POINT-SIZE="10">⚠ {h(f.kind)}: {h(f.message)}</FONT></TD></TR>'
            for f in findings[:MAX_LEGEND_FINDINGS]
        ) + (
            f'<TR><TD COLSPAN="{n}" ALIGN="LEFT"><FONT COLOR="{theme["text"]}" POINT-SIZE="10">… and {len(findings) - MAX_LEGEND_FINDINGS} more findings (Trace.diagnose())</FONT></TD></TR>'
            if len(findings) > MAX_LEGEND_FINDINGS else ""
        ) + "</TABLE>>"
    )


def _caption(trace: Trace) -> str:
    loss = trace.node(trace.loss)
    parts = [f"loss {loss.label} = {fmt.summary(loss.value)}"]
    if trace.optimizer is not None:
        o = trace.optimizer
        settings = " ".join(f"{k}={v}" for k, v in o.hyperparameters)
        parts.append(f"then {o.name}.step() with lr={fmt.num(o.lr, 6)}" + (f" {settings}" if settings else ""))
    return " · ".join(parts)


def to_dot(trace: Trace, options: RenderOptions) -> graphviz.Digraph:
    """Build the diagram of ``trace``.

    >>> to_dot(t, RenderOptions()).source.startswith("digraph")   # doctest: +SKIP
    True
    """
    theme = THEME_COLORS[options.theme]
    g = graphviz.Digraph(
        "gradtrace",
        graph_attr={
            "rankdir": options.rankdir, "bgcolor": theme["bg"], "fontname": FONT, "fontcolor": theme["text"],
            "fontsize": "11", "labelloc": "b", "label": escape_tooltip(_caption(trace)),
            "nodesep": "0.25", "ranksep": "0.35",
        },
        node_attr={"fontname": FONT, "fontsize": "11", "margin": "0.05,0.03", "penwidth": "1"},
        edge_attr={"color": theme["edge"], "arrowsize": "0.6", "fontname": FONT, "fontsize": "9"},
    )
    findings = trace.diagnose() if options.show_findings else []
    by_node: dict[str, list[Finding]] = {}
    for f in findings:
        by_node.setdefault(f.node, []).append(f)
    order = trace.forward_order()
    by_module: dict[str, list[str]] = {}
    for key in order:
        by_module.setdefault(trace.node(key).module, []).append(key)
    paths = set()
    for path in by_module:
        parts = path.split(".") if path else []
        for i in range(1, len(parts) + 1):
            paths.add(".".join(parts[:i]))
    children: dict[str, list[str]] = {}
    for path in sorted(paths):
        parent = path.rpartition(".")[0]
        while parent and parent not in paths:
            parent = parent.rpartition(".")[0]
        children.setdefault(parent, []).append(path)
    cluster_ids = {path: i for i, path in enumerate(sorted(paths))}

    def emit_nodes(graph: graphviz.Digraph, path: str) -> None:
        for key in by_module.get(path, []):
            n = trace.node(key)
            attrs = dict(_KIND_STYLE[n.kind])
            if key == trace.loss:
                attrs.update(peripheries="2", penwidth="1.5")
            if any(s is not None and not s.finite for s in n.values + n.grads):
                attrs.update(color=ALARM, penwidth="2.5")
            mine = by_node.get(key, [])
            if any(f.alarm for f in mine):
                attrs.update(color=ALARM, penwidth="4")
            elif mine:
                attrs.update(color=FINDING, penwidth="3")
            tip = node_tooltip(n) + "".join(escape_tooltip(f"\n⚠ {f.kind}: {f.message}") for f in mine)
            graph.node(key, node_label(n, options, key == trace.loss, mine), tooltip=tip, **attrs)

    def emit_cluster(parent: graphviz.Digraph, path: str) -> None:
        cls = trace.modules.get(path, "")
        label = f"<<B>{h(path)}</B>" + (f" <I>{h(cls)}</I>" if cls else "") + ">"
        with parent.subgraph(name=f"cluster_{cluster_ids[path]}") as sub:
            sub.attr(label=label, labeljust="l", style="rounded,filled", color=theme["cluster"], fillcolor=theme["cluster_bg"],
                     fontcolor=theme["text"], tooltip=escape_tooltip(f"{path} ({cls})" if cls else path))
            emit_nodes(sub, path)
            for child in children.get(path, []):
                emit_cluster(sub, child)

    emit_nodes(g, "")
    for top in children.get("", []):
        emit_cluster(g, top)
    for e in trace.edges:
        shape = trace.graph.edges[e.src, e.dst].get("shape")
        tip = f"{trace.node(e.src).label} → {trace.node(e.dst).label}" + (f" {fmt.shape_of(shape)}" if shape is not None else "")
        g.edge(e.src, e.dst, tooltip=escape_tooltip(tip))
    g.node("legend", _legend(theme, findings), shape="plain", tooltip="legend")
    return g
