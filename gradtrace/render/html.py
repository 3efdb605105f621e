"""The backprop replay: one self-contained HTML page, no network, no Graphviz needed.

The page holds the trace's data as JSON (nodes in forward order, edges by node
index, the module groups of :mod:`.hierarchy`, findings), a stylesheet and a
script (both inline, allowed by hash in a Content-Security-Policy that forbids
every network request). The script is the modules under ``assets/`` joined in
one function scope: it lays out each open group in the page and draws what is
in view (see ``assets/draw.js``), so a 30,000-node trace stays interactive.
Strings from user code travel only inside the JSON, which is escaped so that
it cannot close its ``<script>`` element, and the script puts them on the
page with ``textContent`` (or paints them on a canvas).
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import RenderError
from ..records import TensorStats
from . import fmt
from ..collapse import _output_of
from .flow import edge_grad_label, edge_grad_text, grad_sum_lines, scope_title, sent_back
from .hierarchy import Hierarchy, build_hierarchy
from .inert import inert_trace, printable
from .labels import caption, nonfinite, reduced_titles
from .options import RenderOptions
from .page import asset, csp, csp_hash, joined_script, script_json
from .style import ALARM, BANDS, MASKED_INF, NO_GRAD, ZERO_GRAD, band_for

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["page_data", "to_html", "to_html_multi", "to_iframe"]


#: The script's parts, joined in this order into one inline script (see render/assets/).
SCRIPTS = ("model.js", "layout.js", "draw.js", "panel.js", "replay.js", "search.js", "app.js")
#: The page opens with groups expanded level by level while at most this many items show.
OPEN_ITEMS = 150


def _num(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _stats(s: TensorStats | None) -> list[Any] | None:
    """One tensor's statistics as an array (field names once, in ``STATS_FIELDS``, not per node)."""
    if s is None:
        return None
    return [list(s.shape), s.dtype, s.device, s.numel, _num(s.min), _num(s.max), _num(s.mean), _num(s.std), _num(s.norm),
            s.nan, s.inf, None if s.values is None else [_num(v) for v in s.values]]


STATS_FIELDS = ("shape", "dtype", "device", "numel", "min", "max", "mean", "std", "norm", "nan", "inf", "values")


_ZERO_MEANS_NOTHING = ("a", "nan", "ops", "params")


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    """Drop the fields that say nothing (None, "", [], and 0 for a flag or count): the page reads a
    missing field as empty. A zero norm or step is a fact and stays."""
    return {k: v for k, v in d.items()
            if not (v is None or (isinstance(v, (str, list)) and not v) or (k in _ZERO_MEANS_NOTHING and v == 0))}


def page_data(trace: Trace, options: RenderOptions) -> dict[str, Any]:
    """Everything the page shows of ``trace``, as JSON-ready data: nodes (forward order), edges by
    node index, groups (modules, folds, runs), findings, the backprop order, the legend."""
    trace = inert_trace(trace)  # printable names; keys stay as they are (JSON escapes what they hold)
    order = trace.forward_order()
    index = {k: i for i, k in enumerate(order)}
    found = trace.diagnose() if options.show_findings else []
    findings: dict[str, list[int]] = {}
    quiet: set[str] = set()
    for i, f in enumerate(found):
        findings.setdefault(f.node, []).append(i)
        if f.kind == "masked_inf":
            quiet.update((f.node, *f.nodes))  # an intended -inf mask: no alarm colour
    nodes = []
    alarms: list[bool] = []
    for key in order:
        n = trace.node(key)
        color, _ = band_for(n.grad)
        alarm = nonfinite(n) and key not in quiet
        color = ALARM if alarm else MASKED_INF if key in quiet else color
        alarms.append(alarm)
        value = n.value
        rms = [None if s is None else s.rms for s in (value, n.grad)]
        nodes.append(_compact({
            "k": key, "l": n.label, "t": n.kind, "f": n.grad_fn, "fw": n.forward_step, "bw": n.backward_step,
            "c": color, "a": int(alarm), "sh": f"{fmt.shape(value)} {value.dtype}" if value is not None else "",
            "v": fmt.summary(value), "gr": fmt.summary(n.grad),
            "gn": _num(n.grad.norm) if n.grad is not None else None, "grms": _num(rms[1]) if rms[1] is not None else None,
            "vrms": _num(rms[0]) if rms[0] is not None else None, "ur": _num(n.update_ratio),
            "nan": sum(s.nan for s in n.values + n.grads if s is not None),
            "fd": findings.get(key, []), "args": n.args, "sc": scope_title(n.scope) if n.scope else n.module, "src": n.source,
            "vs": [_stats(s) for s in n.values], "gs": [_stats(s) for s in n.grads], "up": _stats(n.update),
            "sgd": _stats(n.sgd_update), "sums": grad_sum_lines(trace, key),
            "sent": [[index[dst], edge_grad_text(grad, uses)] for dst, _, grad, uses in sent_back(trace, key) if grad is not None],
            "rd": _reduced(n),
        }))
    hier = build_hierarchy(trace, order)
    groups = _groups(trace, order, hier, alarms)
    return {
        "nodes": nodes,
        # [src, dst, label]: label is what dst's backward sent back along the edge ("" where not recorded).
        "edges": [[index[e.src], index[e.dst], edge_grad_label(e.grad, e.uses)] for e in trace.edges],
        "groups": groups,
        "nodeGroup": hier.node_group,
        "backward": [index[k] for k in trace.backward_order()],
        "loss": index[trace.loss],
        "findings": [{"sev": f.severity, "kind": f.kind, "msg": f.message, "hint": f.hint, "node": index.get(f.node)}
                     for f in found],
        "caption": caption(trace),
        "statsFields": list(STATS_FIELDS),
        "bands": [[b.color, b.label] for b in BANDS] + [[ALARM, "NaN / inf"], [ZERO_GRAD, "zero"], [NO_GRAD, "none"], [MASKED_INF, "-inf mask (intended)"]],
        "openItems": min(OPEN_ITEMS, options.max_nodes or OPEN_ITEMS),
        "theme": options.theme,
    }


def _reduced(n: Any) -> dict[str, Any] | None:
    """A parameter's gradient after the collective, for the panel: what the local and the reduced
    gradient are called, and the reduced one's statistics (of this rank's shard, for a reduce-scatter).
    None for every node of a run without one, so a single process's page data are as before."""
    if n.reduced is None:
        return None
    titles = reduced_titles(n.reduced)
    # "g": the reduced gradient's one-line summary for the node's box, as the SVG draws it beside the local one
    # (a NaN that came with the collective colours the header red: the box must show why).
    return {"op": n.reduced.op, "lt": titles["local_long"], "t": titles["reduced_long"], "s": _stats(n.reduced.stats),
            "g": fmt.summary(n.reduced.stats)}


def _groups(trace: Trace, order: list[str], hier: Hierarchy, alarms: list[bool]) -> list[dict[str, Any]]:
    """Each group with what its collapsed box says: the output node, the gradient leaving it, op and parameter counts."""
    index = {k: i for i, k in enumerate(order)}
    members: list[list[int]] = [[] for _ in hier.groups]
    for i, g in enumerate(hier.node_group):
        while g >= 0:
            members[g].append(i)
            g = hier.groups[g].parent
    out = []
    for j, grp in enumerate(hier.groups):
        keys = [order[i] for i in members[j]]
        output = _output_of(trace, keys) if keys else None
        grad = trace.node(output).grad if output is not None else None
        color, _ = band_for(grad)
        steps = [s for s in (trace.node(k).backward_step for k in keys) if s is not None]
        value = trace.node(output).value if output is not None else None
        out.append(_compact({
            "kind": grp.kind, "path": scope_title(grp.path), "t": grp.title, "p": grp.parent, "cls": grp.cls, "r": grp.repeat,
            "c": ALARM if any(alarms[i] for i in members[j]) else color,
            "out": None if output is None else index[output],
            "ops": sum(1 for k in keys if trace.node(k).kind == "op"), "params": sum(1 for k in keys if trace.node(k).kind == "param"),
            "n": len(keys), "bw": min(steps) if steps else None, "gn": _num(grad.norm) if grad is not None else None,
            "sh": f"{fmt.shape(value)} {value.dtype}" if value is not None else "", "gr": fmt.summary(grad),
            "paths": grp.paths if grp.kind == "fold" else [],
        }))
    return out


def _page(title: str, payload: dict[str, Any], theme: str) -> str:
    script, style = joined_script(SCRIPTS), asset("replay.css")
    policy = csp([csp_hash(script)], [csp_hash(style)])
    return f"""<!DOCTYPE html>
<html lang="en" class="{'dark' if theme == 'dark' else 'light'}">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{style}</style>
</head>
<body>
<div id="app">
<div id="toolbar">
<select id="traces" aria-label="which trace" hidden></select>
<button id="first" title="before backprop">◀◀</button><button id="prev" title="previous step (←)">◀</button>
<button id="play">▶ play</button><button id="next" title="next step (→)">▶</button><button id="last" title="all of backprop">▶▶</button>
<input id="slider" type="range" min="0" max="0" value="0" aria-label="backprop step">
<span id="stepinfo"></span>
<input id="search" type="search" placeholder="find a node or module… (/)" aria-label="search">
<span id="matchinfo"></span>
<label for="overlay">colour by</label>
<select id="overlay"><option value="band">gradient (RMS band)</option><option value="gn">gradient norm</option>
<option value="ur">update ratio ‖Δw‖/‖w‖</option><option value="vrms">value RMS</option><option value="nan">NaN count</option></select>
<button id="zoomin" title="zoom in">+</button><button id="zoomout" title="zoom out">−</button><button id="fit" title="fit to screen (f)">fit</button>
<button id="expandall" title="expand every group">expand all</button><button id="collapseall" title="collapse to the opening view">collapse</button>
<button id="theme" title="dark or light">◐</button>
</div>
<nav id="crumbs" aria-label="where you are"></nav>
<div id="canvas"><canvas id="paint"></canvas><svg id="graph" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="autograd graph"></svg>
<ul id="results" aria-label="search results"></ul></div>
<div id="legend"></div>
<aside id="side"><div id="panel"></div><h3 id="findings-title">findings</h3><ol id="findings"></ol></aside>
<div id="caption"></div>
</div>
<script type="application/json" id="gradtrace-data">{script_json(payload)}</script>
<script>{script}</script>
</body>
</html>
"""


def to_html(trace: Trace, options: RenderOptions | None = None) -> str:
    """The replay page for ``trace``, as one HTML document.

    >>> to_html(t).startswith("<!DOCTYPE html>")          # doctest: +SKIP
    True
    """
    options = options or RenderOptions()
    title = f"gradtrace · {printable(trace.node(trace.loss).label)} · {len(trace.nodes)} nodes"
    return _page(title, {"traces": [{"label": "", "data": page_data(trace, options)}]}, options.theme)


def to_html_multi(traces: Sequence[tuple[str, Trace]], options: RenderOptions | None = None) -> str:
    """One page holding several traces (the ranks of a torchrun job), with a selector between them.

    ``traces`` is a sequence of ``(label, trace)`` pairs, such as ``[("rank 0", t0), ("rank 1", t1)]``;
    switching keeps the selected node and the open groups where the other trace has the same keys.

    >>> to_html_multi([("rank 0", t0), ("rank 1", t1)]).startswith("<!DOCTYPE html>")   # doctest: +SKIP
    True
    """
    options = options or RenderOptions()
    pairs = list(traces) if not isinstance(traces, (str, bytes)) else None
    if not pairs or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
        raise RenderError("to_html_multi needs a non-empty sequence of (label, Trace) pairs, such as [('rank 0', t0), ('rank 1', t1)]"
                          f"; got {type(traces).__name__}" + (f" of {len(pairs)} items" if pairs else ""))
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise RenderError(f"to_html_multi needs distinct labels, got {labels}")
    total = sum(len(t.nodes) for _, t in pairs)
    title = f"gradtrace · {len(pairs)} traces · {total} nodes"
    return _page(title, {"traces": [{"label": printable(label), "data": page_data(t, options)} for label, t in pairs]}, options.theme)


def to_iframe(trace: Trace, options: RenderOptions | None = None, height: int = 640) -> str:
    """The page inside an ``<iframe srcdoc>``: how Jupyter shows it, isolated from the notebook.

    As wide as the notebook's output area, ``height`` pixels tall (the page fits its graph to that).
    """
    return (f'<iframe srcdoc="{html.escape(to_html(trace, options), quote=True)}" '
            f'style="width: 100%; height: {int(height)}px; border: 1px solid #ddd; box-sizing: border-box" '
            'sandbox="allow-scripts"></iframe>')
