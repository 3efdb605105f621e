"""Trace -> ``graphviz.Digraph``: the static diagram. Builds DOT source, runs nothing.

What is drawn comes from a :class:`~gradtrace.collapse.View` (every node, or
modules collapsed and repeats folded, or one module in focus); how each node
reads comes from :mod:`.labels`. Nodes, clusters and edges are emitted in a
fixed order, so the same trace always gives the same DOT text, byte for byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import graphviz

from ..collapse import View, choose_view
from ..diagnose import Finding
from . import fmt
from .flow import edge_grad_label, edge_grad_text, grad_sum_lines, scope_module, scope_title, sent_back, show_edge_grads
from .labels import block_label, block_tooltip, boundary_label, caption, escape_tooltip, h, legend, mark, node_label, node_tooltip
from .options import RenderOptions
from .style import ALARM, FINDING, THEME_COLORS

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["to_dot"]

FONT = "Helvetica"
LARGE = 150  # items above which layout trades polish for speed
_KIND_STYLE = {
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff", "color": "#4d4d4d"},
    "param": {"shape": "box", "style": "filled", "fillcolor": "#fbf3dc", "color": "#8c6d1f"},
    "leaf": {"shape": "box", "style": "filled", "fillcolor": "#e6eefb", "color": "#2f5597"},
    "input": {"shape": "box", "style": "dashed,filled", "fillcolor": "#f2f2f2", "color": "#4d4d4d"},
    "block": {"shape": "box3d", "style": "filled", "fillcolor": "#efeaf7", "color": "#5b4a8a"},
    "boundary": {"shape": "box", "style": "dashed,filled", "fillcolor": "#ffffff", "color": "#9a9a9a"},
}


def _item_module(trace: Trace, view: View, item: str) -> str:
    """The module cluster an item is drawn in: its scope, so each call of a module reused gets its own."""
    if item in view.blocks:
        return view.blocks[item].paths[0].rpartition(".")[0]
    if item in view.boundary:
        return ""
    return trace.graph.nodes[item]["scope"]


def _named(trace: Trace, key: str) -> str:
    """A node as the diagram names it: label and backprop step (two ``mul`` nodes differ by their #n)."""
    n = trace.node(key)
    return n.label + (f" #{n.backward_step}" if n.backward_step is not None else "")


def to_dot(trace: Trace, options: RenderOptions) -> graphviz.Digraph:
    """Build the diagram of ``trace``.

    >>> to_dot(t, RenderOptions()).source.startswith("digraph")   # doctest: +SKIP
    True
    """
    view = choose_view(trace, options.depth, options.max_nodes, options.fold, options.module)
    theme = THEME_COLORS[options.theme]
    note = view.note
    if options.module is not None:
        note = f"module {options.module} only; dashed nodes lie outside it" + (f"; {note}" if note else "")
    g = graphviz.Digraph(
        "gradtrace",
        graph_attr={
            "rankdir": options.rankdir, "bgcolor": theme["bg"], "fontname": FONT, "fontcolor": theme["text"],
            "fontsize": "11", "labelloc": "b", "label": escape_tooltip(caption(trace, note)),
            "nodesep": "0.25", "ranksep": "0.35",
            # Big graphs: one network-simplex pass for ranking and placement cut dot's time on a
            # 3,000-node graph from 24 s to 6 s (benchmarks/README.md); small ones keep the best layout.
            **({"nslimit": "1", "nslimit1": "1"} if len(view) > LARGE else {}),
        },
        node_attr={"fontname": FONT, "fontsize": "11", "margin": "0.05,0.03", "penwidth": "1"},
        edge_attr={"color": theme["edge"], "arrowsize": "0.6", "fontname": FONT, "fontsize": "9"},
    )
    findings = trace.diagnose() if options.show_findings else []
    # Nodes whose infinities are an intended mask are drawn quietly (diagnose's masked_inf note).
    quiet = {k for f in findings if f.kind == "masked_inf" for k in (f.node, *f.nodes)}
    by_item: dict[str, list[Finding]] = {}
    for f in findings:
        if f.node in view.owner:
            by_item.setdefault(view.owner[f.node], []).append(f)

    by_module: dict[str, list[str]] = {}
    for item in view.items:
        by_module.setdefault(_item_module(trace, view, item), []).append(item)
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

    def emit_item(graph: graphviz.Digraph, item: str) -> None:
        mine = by_item.get(item, [])
        if item in view.blocks:
            b = view.blocks[item]
            attrs = dict(_KIND_STYLE["block"])
            if trace.loss in b.members:
                attrs.update(peripheries="2")
            label, tip = block_label(trace, b, options, mine), block_tooltip(trace, b, mine)
        elif item in view.boundary:
            n = trace.node(item)
            attrs = dict(_KIND_STYLE["boundary"])
            label, tip = boundary_label(n, options), node_tooltip(n)
        else:
            n = trace.node(item)
            attrs = dict(_KIND_STYLE[n.kind])
            if item == trace.loss:
                attrs.update(peripheries="2", penwidth="1.5")
            if any(s is not None and not s.finite for s in n.values + n.grads) and item not in quiet:
                attrs.update(color=ALARM, penwidth="2.5")
            sums = grad_sum_lines(trace, item)
            sent = [f"to {_named(trace, dst)}: {edge_grad_text(grad, uses)}"
                    for dst, _, grad, uses in sent_back(trace, item) if grad is not None]
            label = node_label(n, options, item == trace.loss, mine, sums, quiet=item in quiet)
            tip = node_tooltip(n, sums, sent) + "".join(escape_tooltip(f"\n{mark(f)} {f.severity} {f.kind}: {f.message}") for f in mine)
        if any(f.alarm for f in mine):
            attrs.update(color=ALARM, penwidth="4")
        elif any(f.severity == "warning" for f in mine):
            attrs.update(color=FINDING, penwidth="3")
        graph.node(item.replace(":", "_") if item in view.blocks else item, label, tooltip=tip, **attrs)

    def emit_cluster(parent: graphviz.Digraph, path: str) -> None:
        cls = trace.modules.get(scope_module(path), "")
        title = scope_title(path)  # a module called again reads "pool (call 2)"
        label = f"<<B>{h(title)}</B>" + (f" <I>{h(cls)}</I>" if cls else "") + ">"
        with parent.subgraph(name=f"cluster_{cluster_ids[path]}") as sub:
            sub.attr(label=label, labeljust="l", style="rounded,filled", color=theme["cluster"], fillcolor=theme["cluster_bg"],
                     fontcolor=theme["text"], tooltip=escape_tooltip(f"{title} ({cls})" if cls else title))
            for item in by_module.get(path, []):
                emit_item(sub, item)
            for child in children.get(path, []):
                emit_cluster(sub, child)

    for item in by_module.get("", []):
        emit_item(g, item)
    for top in children.get("", []):
        emit_cluster(g, top)

    def name(item: str) -> str:
        return item.replace(":", "_") if item in view.blocks else item

    def label_of(item: str) -> str:
        return view.blocks[item].path if item in view.blocks else trace.node(item).label

    label_edges = options.show_grads and show_edge_grads(options.edge_grads, len(view))
    graph_edges = trace.graph.edges
    for src, dst, shape in view.edges:
        shape_text = fmt.shape_of(shape) if shape is not None else ""
        tip = f"{label_of(src)} → {label_of(dst)}" + (f" {shape_text}" if shape_text else "")
        # Between two drawn nodes, the gradient dst's backward sent back to src (a node's own
        # gradient is the sum of these over its consumers: the chain rule, edge by edge).
        sent = ""
        if src not in view.blocks and dst not in view.blocks and (src, dst) in graph_edges:
            sent = edge_grad_text(graph_edges[src, dst]["grad"], graph_edges[src, dst]["uses"])
        if sent:
            tip += f"\ngrad sent back: {sent}"
        attrs = {"tooltip": escape_tooltip(tip)}
        if shape_text and (src in view.blocks or dst in view.blocks):
            attrs["label"] = shape_text  # between collapsed modules the tensor's shape is the interface
        elif sent and label_edges:
            edge = graph_edges[src, dst]
            attrs.update(label=escape_tooltip(edge_grad_label(edge["grad"], edge["uses"])), labeltooltip=escape_tooltip(tip))
        g.edge(name(src), name(dst), **attrs)
    g.node("legend", legend(theme, findings), shape="plain", tooltip="legend")
    return g
