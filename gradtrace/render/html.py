"""The backprop replay: one self-contained HTML page, no network, no Graphviz needed.

The page holds the trace's data as JSON, a stylesheet and a script (both
inline, allowed by hash in a Content-Security-Policy that forbids every
network request), and draws the graph itself from a layout computed here.
Strings from user code travel only inside the JSON, which is escaped so that
it cannot close its ``<script>`` element, and the script puts them on the
page with ``textContent``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..records import TensorStats
from . import fmt
from .flow import edge_grad_label, edge_grad_text, grad_sum_lines, scope_title, sent_back
from .inert import inert_trace, printable
from .labels import caption
from .layout import NODE_H, NODE_W, layered_layout
from .options import RenderOptions
from .style import ALARM, MASKED_INF, band_for, text_color

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["to_html", "to_iframe"]


def _num(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _stats(s: TensorStats | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "shape": list(s.shape), "dtype": s.dtype, "device": s.device, "numel": s.numel,
        "min": _num(s.min), "max": _num(s.max), "mean": _num(s.mean), "std": _num(s.std), "norm": _num(s.norm),
        "nan": s.nan, "inf": s.inf, "values": None if s.values is None else [_num(v) for v in s.values],
    }


def _asset(name: str) -> str:
    return resources.files("gradtrace.render").joinpath("assets", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def page_data(trace: Trace, options: RenderOptions) -> dict[str, Any]:
    trace = inert_trace(trace)  # printable names; keys stay as they are (JSON escapes what they hold)
    layout = layered_layout(trace)
    findings: dict[str, list[str]] = {}
    quiet: set[str] = set()
    if options.show_findings:
        for f in trace.diagnose():
            findings.setdefault(f.node, []).append(f"{f.severity} {f.kind}: {f.message}")
            if f.kind == "masked_inf":
                quiet.update((f.node, *f.nodes))  # an intended -inf mask: no alarm colour
    nodes = []
    for key in trace.forward_order():
        n = trace.node(key)
        color, _ = band_for(n.grad)
        alarm = any(s is not None and not s.finite for s in n.values + n.grads) and key not in quiet
        if alarm:
            color = ALARM
        elif key in quiet:
            color = MASKED_INF
        x, y = layout.positions[key]
        value = n.value
        nodes.append({
            "key": key, "label": n.label, "kind": n.kind, "module": n.module, "grad_fn": n.grad_fn,
            "fwd": n.forward_step, "bwd": n.backward_step, "x": round(x, 1), "y": round(y, 1),
            "color": color, "ink": text_color(color), "loss": key == trace.loss, "alarm": alarm,
            "shapeText": f"{fmt.shape(value)} {value.dtype}" if value is not None else "",
            "valueText": fmt.summary(value), "gradText": fmt.summary(n.grad),
            "gradNorm": _num(n.grad.norm) if n.grad is not None else None,
            "values": [_stats(s) for s in n.values], "grads": [_stats(s) for s in n.grads],
            "update": _stats(n.update), "ratio": _num(n.update_ratio), "findings": findings.get(key, []),
            "args": n.args, "scope": scope_title(n.scope) if n.scope else n.module, "source": n.source,
            "sgdUpdate": _stats(n.sgd_update), "sums": grad_sum_lines(trace, key),
            "sent": [[dst, edge_grad_text(grad, uses)] for dst, _, grad, uses in sent_back(trace, key) if grad is not None],
        })
    return {
        "nodes": nodes,
        # gradLabel: what dst's backward sent back along the edge ("" where not recorded).
        "edges": [{"src": e.src, "dst": e.dst, "gradLabel": edge_grad_label(e.grad, e.uses)} for e in trace.edges],
        "backward": trace.backward_order(),
        "loss": trace.loss,
        "caption": caption(trace),
        "w": NODE_W, "h": NODE_H, "width": layout.width, "height": layout.height,
    }


_SCRIPT_UNSAFE = re.compile("[<>&\u2028\u2029\ud800-\udfff]")


def _script_json(obj: Any) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' survive as such (so no ``</script>``
    or ``<!--``), U+2028/U+2029 are escaped, and so is a lone surrogate (a node key from a trace
    file may hold one; UTF-8 cannot, a ``\\u`` escape can)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _SCRIPT_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def to_html(trace: Trace, options: RenderOptions | None = None) -> str:
    """The replay page for ``trace``, as one HTML document.

    >>> to_html(t).startswith("<!DOCTYPE html>")          # doctest: +SKIP
    True
    """
    options = options or RenderOptions()
    script, style = _asset("replay.js"), _asset("replay.css")
    csp = (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; img-src data:; "
           "connect-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'")
    title = html.escape(f"gradtrace · {printable(trace.node(trace.loss).label)} · {len(trace.nodes)} nodes")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<div id="app">
<div id="toolbar">
<button id="first" title="before backprop">◀◀</button><button id="prev" title="previous step (←)">◀</button>
<button id="play">▶ play</button><button id="next" title="next step (→)">▶</button><button id="last" title="all of backprop">▶▶</button>
<input id="slider" type="range" min="0" max="0" value="0" aria-label="backprop step">
<span id="stepinfo"></span>
<input id="search" type="search" placeholder="find a node or module…" aria-label="search">
<button id="zoomin" title="zoom in">+</button><button id="zoomout" title="zoom out">−</button><button id="fit" title="fit to screen">fit</button>
</div>
<div id="canvas"><svg id="graph" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="autograd graph"></svg><ul id="results" aria-label="search results"></ul></div>
<aside id="panel"></aside>
<div id="caption"></div>
</div>
<script type="application/json" id="gradtrace-data">{_script_json(page_data(trace, options))}</script>
<script>{script}</script>
</body>
</html>
"""


def to_iframe(trace: Trace, options: RenderOptions | None = None, height: int = 640) -> str:
    """The page inside an ``<iframe srcdoc>``: how Jupyter shows it, isolated from the notebook."""
    return (f'<iframe srcdoc="{html.escape(to_html(trace, options), quote=True)}" '
            f'style="width: 100%; height: {int(height)}px; border: 1px solid #ddd" sandbox="allow-scripts"></iframe>')
