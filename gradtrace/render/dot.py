"""Trace -> ``graphviz.Digraph``: the static diagram. Builds DOT source, runs nothing.

What is drawn comes from a :class:`~gradtrace.collapse.View` (every node, or
modules collapsed and repeats folded, or one module in focus); how each node
reads comes from :mod:`.labels`. Nodes, clusters and edges are emitted in a
fixed order, so the same trace always gives the same DOT text, byte for byte.
"""

from __future__ import annotations

import dataclasses
import html
import re
from typing import TYPE_CHECKING, Any

import graphviz

from ..collapse import View, choose_view
from ..diagnose import Finding
from . import fmt
from .flow import edge_grad_label, edge_grad_text, grad_sum_lines, scope_module, scope_title, sent_back, show_edge_grads
from .inert import MAX_ID, dot_id, inert_text, inert_trace
from .labels import (HtmlLabel, block_label, block_tooltip, boundary_label, caption, escape_text, escape_tooltip, h, legend, mark, node_label,
                     node_tooltip, nonfinite)
from .options import RenderOptions
from .style import ALARM, FINDING, THEME_COLORS

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["dot_and_view", "to_dot"]

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


#: Graphviz's lexer refuses a string longer than 16,384 characters; no value we emit comes near it
#: (labels.py caps every piece), and :func:`_fit` makes sure of it for any attribute whatsoever.
DOT_STRING_MAX = 15000


def _fit(value: str) -> str:
    """``value`` as it is when short enough for Graphviz, else cut to fit: an HTML label becomes its
    plain text, cut; a quoted string is cut where no escape is split (an odd run of trailing
    backslashes would escape the closing quote: a syntax error)."""
    if len(value) <= DOT_STRING_MAX:
        return value
    if isinstance(value, HtmlLabel):
        plain = html.unescape(re.sub(r"<[^<>]*>", " ", value))
        return graphviz.nohtml(escape_text(" ".join(plain.split())))
    cut = value[: DOT_STRING_MAX // 2]
    if (len(cut) - len(cut.rstrip("\\"))) % 2:
        cut = cut[:-1]
    return graphviz.nohtml(cut + "…")


def _text(value: Any) -> Any:
    """A value for DOT: gradtrace's own HTML labels stay HTML, every other string is quoted; both fit."""
    if not isinstance(value, str):
        return value
    value = _fit(value)
    return value if isinstance(value, HtmlLabel) else graphviz.nohtml(value)


def _texts(attrs: Any) -> Any:
    if attrs is None:
        return None
    if isinstance(attrs, dict):
        return {k: _text(v) for k, v in attrs.items()}  # a plain dict: graphviz sorts it, as before
    items = attrs.items() if hasattr(attrs, "items") else attrs
    return [(k, _text(v)) for k, v in items]


def _attr_list(label: Any = None, kwargs: Any = None, attributes: Any = None) -> str:
    return graphviz.quoting.attr_list(_text(label), kwargs=_texts(kwargs), attributes=_texts(attributes))


def _a_list(label: Any = None, kwargs: Any = None, attributes: Any = None) -> str:
    return graphviz.quoting.a_list(_text(label), kwargs=_texts(kwargs), attributes=_texts(attributes))


class _Digraph(graphviz.Digraph):
    """A Digraph that reads a value as Graphviz HTML only when gradtrace built it as such
    (:class:`~.labels.HtmlLabel`). graphviz passes any ``<...>`` string through unquoted, so one
    from a model or a trace file (a tooltip, a name) would otherwise become attributes of its own."""

    _attr_list = staticmethod(_attr_list)
    _a_list = staticmethod(_a_list)


_SAFE_BLOCK = re.compile(r"(module|fold|run):[A-Za-z0-9_.]+\Z")


def _name(view: View, item: str) -> str:
    """The DOT node name of a displayed item: a block keeps its readable ``module_encoder.layer``
    when its path is plain, everything else is :func:`~.inert.dot_id`'s injective spelling."""
    if item in view.blocks and _SAFE_BLOCK.match(item) and len(item) <= MAX_ID:
        return item.replace(":", "_")
    return dot_id(item)


def _item_module(trace: Trace, view: View, item: str) -> str:
    """The module cluster an item is drawn in: its scope, so each call of a module reused gets its own."""
    if item in view.blocks:
        b = view.blocks[item]
        return b.parent if b.parent is not None else b.paths[0].rpartition(".")[0]
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
    return dot_and_view(trace, options)[0]


def dot_and_view(trace: Trace, options: RenderOptions) -> tuple[graphviz.Digraph, View]:
    """The diagram and the view it draws (``len(view)``: how many items the drawing shows)."""
    # Every string from the model or the trace file is made printable once, here; what DOT still
    # treats specially is escaped where it is emitted (h() in labels, escape_tooltip(), _name()).
    trace = inert_trace(trace)
    if options.module is not None:
        options = dataclasses.replace(options, module=inert_text(options.module))
    view = choose_view(trace, options.depth, options.max_nodes, options.fold, options.module)
    theme = THEME_COLORS[options.theme]
    note = view.note
    if options.module is not None:
        note = f"module {options.module} only; dashed nodes lie outside it" + (f"; {note}" if note else "")
    g = _Digraph(
        "gradtrace",
        graph_attr={
            "rankdir": options.rankdir, "bgcolor": theme["bg"], "fontname": FONT, "fontcolor": theme["text"],
            "fontsize": "11", "labelloc": "b", "label": escape_text(caption(trace, note)),
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
    paths.discard("")  # "" is the top level, never a cluster (a path like "." or "a..b" from a file names it)
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
            if nonfinite(n) and item not in quiet:
                attrs.update(color=ALARM, penwidth="2.5")
            sums = grad_sum_lines(trace, item)
            sent = [f"to {_named(trace, dst)}: {edge_grad_text(grad, uses)}"
                    for dst, _, grad, uses in sent_back(trace, item) if grad is not None]
            label = node_label(n, options, item == trace.loss, mine, sums, quiet=item in quiet)
            tip = node_tooltip(n, sums, sent, [f"{mark(f)} {f.severity} {f.kind}: {f.message}" for f in mine])
        if any(f.alarm for f in mine):
            attrs.update(color=ALARM, penwidth="4")
        elif any(f.severity == "warning" for f in mine):
            attrs.update(color=FINDING, penwidth="3")
        graph.node(_name(view, item), label, tooltip=graphviz.nohtml(tip), **attrs)  # escaped str + str is a plain str again

    def cluster(path: str) -> graphviz.Digraph:
        cls = trace.modules.get(scope_module(path), "")
        title = scope_title(path)  # a module called again reads "pool (call 2)"
        label = HtmlLabel(f"<<B>{h(title)}</B>" + (f" <I>{h(cls)}</I>" if cls else "") + ">")
        sub = _Digraph(name=f"cluster_{cluster_ids[path]}")
        sub.attr(label=label, labeljust="l", style="rounded,filled", color=theme["cluster"], fillcolor=theme["cluster_bg"],
                 fontcolor=theme["text"], tooltip=escape_tooltip(f"{title} ({cls})" if cls else title))
        for item in by_module.get(path, []):
            emit_item(sub, item)
        return sub

    # Clusters nest as deep as module paths do (a trace file may nest thousands deep): built
    # children first, without recursion, then each is added to its parent in sorted order.
    preorder: list[str] = []
    stack = list(reversed(children.get("", [])))
    while stack:
        path = stack.pop()
        preorder.append(path)
        stack.extend(reversed(children.get(path, [])))
    built: dict[str, graphviz.Digraph] = {}
    for path in reversed(preorder):
        sub = built[path] = cluster(path)
        for child in children.get(path, []):
            sub.subgraph(built.pop(child))
    for item in by_module.get("", []):
        emit_item(g, item)
    for top in children.get("", []):
        g.subgraph(built.pop(top))

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
            attrs["label"] = escape_tooltip(shape_text)  # between collapsed modules the tensor's shape is the interface
        elif sent and label_edges:
            edge = graph_edges[src, dst]
            attrs.update(label=escape_text(edge_grad_label(edge["grad"], edge["uses"])), labeltooltip=escape_tooltip(tip))
        g.edge(_name(view, src), _name(view, dst), **attrs)
    g.node("legend", legend(theme, findings), shape="plain", tooltip="legend")
    return g, view
