"""A comparison drawn with Graphviz: B's graph, each node coloured by how much it changed from A.

Nodes only in B have a green dashed outline; nodes only in A are drawn as grey dotted ghosts
where they were, wired to their matched neighbours; NaN or inf in one trace only gets the alarm
outline. Builds DOT source and runs nothing; every string from a trace is made inert first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import graphviz

from .diff_style import DIFF_BANDS, GONE, NEW, NO_CHANGE_DATA, NONFINITE, band_of
from .diff_text import factor
from .flow import scope_module, scope_title
from .inert import dot_id, inert_text
from .labels import cap_text, escape_text, escape_tooltip, h
from .style import text_color

if TYPE_CHECKING:
    from ..diff import NodeChange, TraceDiff
    from ..steptrace import Trace

__all__ = ["BY", "diff_dot", "node_id"]

#: What a node's colour can show: the change of its gradient norm or of its value RMS.
BY = ("grad", "value")
FONT = "Helvetica"
LINE = 60  # characters of one label line


def node_id(key: str, side: str = "b") -> str:
    """The SVG id of a node: ``n_<name>`` for B's nodes, ``g_<name>`` for A's ghosts (plain identifiers;
    Graphviz itself names the link around a node with a tooltip ``a_`` and the node's id)."""
    return ("n_" if side == "b" else "g_") + dot_id(key)


def _ghost_name(key: str) -> str:
    return "A_" + dot_id(key)  # dot_id() never has "_" second, so never collides with a B node


def _line(text: str) -> str:
    return escape_text(cap_text(inert_text(text), LINE))


def _label(lines: list[str]) -> str:
    return graphviz.nohtml("\\n".join(_line(x) for x in lines))


def check_by(by: str) -> str:
    """``by`` if it is one of :data:`BY`, else a clear error."""
    from ..errors import RenderError

    if by not in BY:
        raise RenderError(f"unknown colouring {by!r} (must be one of {list(BY)}: the change of the gradient norm or the value RMS)")
    return by


def change_of(c: NodeChange, by: str) -> float | None:
    return c.grad_log2 if by == "grad" else c.rms_log2


def _tooltip(c: NodeChange, names: tuple[str, str]) -> str:
    na, nb = names
    parts = [f"{inert_text(c.label)}" + (f" in {inert_text(scope_title(c.scope))}" if c.scope else ""),
             f"‖grad‖ {na}: {_num(c.grad_a)}, {nb}: {_num(c.grad_b)} ({factor(c.grad_log2)})",
             f"value rms {na}: {_num(c.rms_a)}, {nb}: {_num(c.rms_b)} ({factor(c.rms_log2)})"]
    if c.kind == "param" and (c.update_a is not None or c.update_b is not None):
        parts.append(f"update ratio {na}: {_num(c.update_a)}, {nb}: {_num(c.update_b)} ({factor(c.update_log2)})")
    parts += list(c.nonfinite)
    if c.grad_only_in:
        parts.append(f"backprop reached this node in {c.grad_only_in} only")
    if c.reshaped:
        parts.append(f"output {c.shape_a} {inert_text(c.dtype_a or '')} → {c.shape_b} {inert_text(c.dtype_b or '')}")
    return escape_tooltip("\n".join(parts))


def _num(x: float | None) -> str:
    from . import fmt

    return fmt.num(x)


def _legend(by: str, names: tuple[str, str]) -> str:
    """An HTML-like table: the colour bands and the marks (all text here is gradtrace's own, escaped anyway)."""
    what = "‖grad‖" if by == "grad" else "value rms"
    rows = [f'<TR><TD COLSPAN="2"><B>{h(what)} {h(inert_text(names[1]), 60)} / {h(inert_text(names[0]), 60)}</B></TD></TR>']
    for b in reversed(DIFF_BANDS):
        rows.append(f'<TR><TD BGCOLOR="{b.color}" WIDTH="18"> </TD><TD ALIGN="LEFT">{h(b.label)}</TD></TR>')
    rows.append(f'<TR><TD BGCOLOR="{NO_CHANGE_DATA}" WIDTH="18"> </TD><TD ALIGN="LEFT">nothing to compare</TD></TR>')
    for color, text in ((NEW, f"dashed green: only in {names[1]}"), (GONE, f"dotted grey: only in {names[0]}"),
                        (NONFINITE, "red outline: NaN/inf or a gradient in one trace only")):
        rows.append(f'<TR><TD COLOR="{color}" BORDER="2" WIDTH="18"> </TD><TD ALIGN="LEFT">{h(inert_text(text), 120)}</TD></TR>')
    return "<" + '<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3">' + "".join(rows) + "</TABLE>>"


def diff_dot(d: TraceDiff, by: str = "grad") -> graphviz.Digraph:
    """The comparison as a ``graphviz.Digraph`` (B's graph, coloured by ``by``'s change); runs nothing."""
    by = check_by(by)
    b, a = d.b, d.a
    changes = {c.b: c for c in d.changes}
    only_b, only_a = set(d.only_b), set(d.only_a)
    g = graphviz.Digraph("gradtrace_diff")
    g.attr("graph", rankdir="TB", fontname=FONT, fontsize="11", newrank="true", nodesep="0.25", ranksep="0.35",
           label=_label([f"gradtrace diff: {d.names[1]} compared with {d.names[0]}"]), labelloc="t")
    g.attr("node", shape="box", style="rounded,filled", fontname=FONT, fontsize="10", margin="0.08,0.04")
    g.attr("edge", color="#555555", arrowsize="0.6")

    # (scope, drawn for A only) -> the items in that cluster; scope "" is the top level, no cluster.
    clusters: dict[tuple[str, bool], list[tuple[str, dict[str, str]]]] = {}
    for key in b.forward_order():
        n = b.node(key)
        scope = n.scope or n.module if n.kind == "op" else ""
        clusters.setdefault((scope, False), []).append((dot_id(key), _b_node(b, key, changes.get(key), key in only_b, by, d.names)))
    module_to_b = dict(d.module_pairs)
    b_scopes = {scope for scope, _ in clusters}
    for key in a.forward_order():
        if key not in only_a:
            continue
        n = a.node(key)
        scope = n.scope or n.module if n.kind == "op" else ""
        mapped = module_to_b.get(scope_module(scope), None) if scope else ""
        home = (mapped, False) if mapped is not None and mapped in b_scopes else (scope, bool(scope))
        label = [f"− only in {d.names[0]}: {n.label}"] + ([scope_title(scope)] if scope else [])
        clusters.setdefault(home, []).append((_ghost_name(key), {
            "label": _label(label), "id": node_id(key, "a"), "style": "rounded,dotted", "color": GONE, "fontcolor": "#6b6b6b",
            "fillcolor": "#ffffff", "tooltip": escape_tooltip(f"only in {inert_text(d.names[0])}: {inert_text(n.label)}")}))
    for i, ((scope, a_only), items) in enumerate(clusters.items()):
        if not scope:
            for name, attrs in items:
                g.node(name, **attrs)
            continue
        title = scope_title(scope) + (f" (only in {d.names[0]})" if a_only else "")
        with g.subgraph(name=f"cluster_{i}") as sub:
            sub.attr(label=_label([title]), style="rounded,dashed", color="#8a8a8a", fontcolor="#4d4d4d", fontsize="10")
            for name, attrs in items:
                sub.node(name, **attrs)
    for e in b.edges:
        g.edge(dot_id(e.src), dot_id(e.dst))
    to_b = {c.a: c.b for c in d.changes}
    for e in a.edges:
        if e.src in only_a or e.dst in only_a:
            ends = [_ghost_name(k) if k in only_a else dot_id(to_b[k]) if k in to_b else None for k in (e.src, e.dst)]
            if None not in ends:
                g.edge(ends[0], ends[1], style="dashed", color=GONE)
    g.node("legend", label=_legend(by, d.names), shape="plaintext", style="", id="legend")
    g.edge(dot_id(b.loss), "legend", style="invis")  # below the loss: out of the way of the nodes read first
    return g


def _b_node(b: Trace, key: str, c: NodeChange | None, new: bool, by: str, names: tuple[str, str]) -> dict[str, str]:
    n = b.node(key)
    label = n.label + (" (loss)" if key == b.loss else "")
    lines = [(f"+ only in {names[1]}: " if new else "") + label]
    if n.kind == "op" and (n.scope or n.module):
        lines.append(scope_title(n.scope or n.module))
    attrs = {"id": node_id(key), "color": "#4d4d4d", "fillcolor": NO_CHANGE_DATA, "fontcolor": "#000000"}
    if c is None:
        attrs.update(style="rounded,filled,dashed" if new else "rounded,filled", color=NEW if new else "#4d4d4d",
                     penwidth="2.5" if new else "1", tooltip=escape_tooltip(f"only in {inert_text(names[1])}: {inert_text(n.label)}"))
        attrs["label"] = _label(lines)
        return attrs
    lines.append(f"grad {factor(c.grad_log2)}   rms {factor(c.rms_log2)}")
    if c.reshaped:
        lines.append(f"{c.dtype_b} (was {c.dtype_a})" if c.shape_a == c.shape_b else f"shape {c.shape_b} (was {c.shape_a})")
    lines += list(c.nonfinite)
    if c.grad_only_in:
        lines.append(f"gradient in {c.grad_only_in} only")
    band = band_of(change_of(c, by))
    if band is not None:
        attrs["fillcolor"], attrs["fontcolor"] = band.color, text_color(band.color)
    if c.nonfinite or c.grad_only_in:
        attrs.update(color=NONFINITE, penwidth="3")
    attrs["label"] = _label(lines)
    attrs["tooltip"] = _tooltip(c, names)
    return attrs
