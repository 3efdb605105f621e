"""A comparison as one self-contained HTML page: B's graph drawn by Graphviz and coloured by the
change, a sortable table of the largest changes, the structural differences; click a row to
find its node.

Like the replay page it makes no request: the stylesheet and script are inline, allowed by hash
in a Content-Security-Policy that forbids everything else. Every string from a trace is made
inert and HTML-escaped here, or escaped by Graphviz inside the SVG; the script only sorts rows
and sets classes.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from .diff_dot import check_by, diff_dot, node_id
from .diff_text import describe_node, factor, summary_line
from .execute import run_dot
from .fmt import num, shape_of
from .inert import inert_text
from .page import asset, csp, csp_hash

if TYPE_CHECKING:
    from ..diff import NodeChange, TraceDiff
    from ..steptrace import Trace

__all__ = ["MAX_ROWS", "to_html"]

#: Rows of the table of changes; the rest are counted (the JSON output has every one).
MAX_ROWS = 500


def _e(text: str) -> str:
    return html.escape(inert_text(text), quote=True)


def _v(x: float | None) -> str:
    """A number for ``data-v``: what the script sorts by (``Infinity`` parses; empty sorts last)."""
    if x is None or math.isnan(x):
        return ""
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)


def _cell(x: float | None, shown: str, extra: str = "") -> str:
    return f'<td data-v="{_v(x)}"{extra}>{html.escape(shown)}</td>'


def _row(c: NodeChange) -> str:
    where = describe_node(c.label, c.scope)
    flags = "; ".join([*c.nonfinite] + ([f"gradient in {c.grad_only_in} only"] if c.grad_only_in else []))
    cells = [
        f'<td class="text" data-v="{html.escape(where, quote=True)}">{html.escape(where)}</td>',
        f'<td class="text" data-v="{_e(c.kind)}">{_e(c.kind)}</td>',
        _cell(c.size if c.size != 0 else 0.0, "NaN/inf" if c.nonfinite else "one only" if c.grad_only_in else factor(max(
            (x for x in (c.grad_log2, c.rms_log2, c.update_log2) if x is not None), key=abs, default=None))),
        _cell(c.grad_a, num(c.grad_a)), _cell(c.grad_b, num(c.grad_b)), _cell(c.grad_log2, factor(c.grad_log2)),
        _cell(c.rms_a, num(c.rms_a)), _cell(c.rms_b, num(c.rms_b)), _cell(c.rms_log2, factor(c.rms_log2)),
        _cell(c.update_log2, factor(c.update_log2) if c.kind == "param" else ""),
        f'<td class="text{" alarm" if flags else ""}" data-v="{_e(flags)}">{_e(flags)}</td>',
    ]
    return f'<tr data-node="{node_id(c.b)}" tabindex="0">' + "".join(cells) + "</tr>"


_HEADER = [("node", "text"), ("kind", "text"), ("change", ""), ("‖grad‖ A", ""), ("‖grad‖ B", ""), ("grad B/A", ""),
           ("rms A", ""), ("rms B", ""), ("rms B/A", ""), ("update B/A", ""), ("in one only", "text")]


def _table(d: TraceDiff) -> str:
    ranked = d.largest()
    rows = "\n".join(_row(c) for c in ranked[:MAX_ROWS])
    more = (f'<p class="nothing">… {len(ranked) - MAX_ROWS} more matched nodes (write JSON for every one)</p>'
            if len(ranked) > MAX_ROWS else "")
    head = "".join(f'<th class="{cls}{" sorted-desc" if name == "change" else ""}">{html.escape(name)}</th>'
                   for name, cls in _HEADER)
    return f'<table id="changes"><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>{more}'


def _structural(d: TraceDiff) -> str:
    na, nb = (_e(x) for x in d.names)
    items: list[str] = []

    def node_items(t: Trace, keys: tuple[str, ...], side: str, who: str) -> None:
        for k in keys[:MAX_ROWS]:
            n = t.node(k)
            what = _e(describe_node(n.label, n.scope or n.module if n.kind == "op" else n.module))
            items.append(f'<li data-node="{node_id(k, side)}" tabindex="0">only in {who}: {what} ({_e(n.kind)})</li>')
        if len(keys) > MAX_ROWS:
            items.append(f'<li class="plain">… {len(keys) - MAX_ROWS} more only in {who}</li>')

    for who, t, mods in ((na, d.a, d.modules_only_a), (nb, d.b, d.modules_only_b)):
        for m in mods:
            cls = t.modules.get(m)
            items.append(f'<li class="plain">module only in {who}: {_e(m)}{f" ({_e(cls)})" if cls else ""}</li>')
    for x, y in d.module_pairs:
        if x != y:
            items.append(f'<li class="plain">module {_e(x)} in {na} matched {_e(y)} in {nb}</li>')
    node_items(d.a, d.only_a, "a", na)
    node_items(d.b, d.only_b, "b", nb)
    for c in d.grad_in_one_only[:MAX_ROWS]:
        items.append(f'<li data-node="{node_id(c.b)}" tabindex="0">{_e(describe_node(c.label, c.scope))}: '
                     f'backprop reached it in {na if c.grad_only_in == "A" else nb} only</li>')
    for c in d.reshaped[:MAX_ROWS]:
        was = f"{shape_of(c.shape_a) if c.shape_a is not None else 'no value'} {c.dtype_a or ''}"
        now = f"{shape_of(c.shape_b) if c.shape_b is not None else 'no value'} {c.dtype_b or ''}"
        items.append(f'<li data-node="{node_id(c.b)}" tabindex="0">{_e(describe_node(c.label, c.scope))}: '
                     f'{_e(was.strip())} → {_e(now.strip())}</li>')
    if not items:
        return '<p class="nothing">none: every node and module matched, with the same shapes and dtypes</p>'
    return '<ul id="structural">' + "\n".join(items) + "</ul>"


def _svg(d: TraceDiff, by: str, timeout: float | None) -> str:
    """Graphviz's SVG of the comparison, without its XML prolog and doctype (it sits inside HTML)."""
    svg = run_dot(diff_dot(d, by).source, "svg", timeout).decode("utf-8")
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def to_html(d: TraceDiff, by: str = "grad", timeout: float | None = 120.0) -> str:
    """The comparison page for ``d``, as one HTML document (needs Graphviz's ``dot`` for the drawing).

    >>> to_html(a.diff(b)).startswith("<!DOCTYPE html>")      # doctest: +SKIP
    True
    """
    by = check_by(by)
    script, style = asset("diff.js"), asset("diff.css")
    policy = csp([csp_hash(script)], [csp_hash(style)])
    na, nb = (_e(x) for x in d.names)
    what = "gradient norm" if by == "grad" else "value RMS"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gradtrace diff · {na} → {nb}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>gradtrace diff: A = {na}, B = {nb}</h1>
<p id="summary">{_e(summary_line(d))}. B's graph, each node coloured by its {what} B/A.</p>
</header>
<main>
<div id="graph">{_svg(d, by, timeout)}</div>
<aside id="side">
<h2>Largest changes (B/A), click a row to find its node</h2>
{_table(d)}
<h2>Structural differences</h2>
{_structural(d)}
</aside>
</main>
<script>{script}</script>
</body>
</html>
"""
