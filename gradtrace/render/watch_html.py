"""The watch page: a whole run's history (``gradtrace watch``) as one self-contained HTML page.

It reads the history dict (``History.to_dict()``, the ``gradtrace-watch`` JSON: untrusted input, a
file may have been edited by hand), checks it field by field, and writes one offline page: a module
tree with a sparkline per module, a large log-scale chart of the selected module or parameter, the
loss and the learning rate, a heat map modules × steps, the events, and the full step traces the run
kept, each the replay page of :func:`gradtrace.render.html.to_html`, opened on demand in an
``<iframe srcdoc>``.

The same standards as the replay page: the data travel as JSON escaped so it cannot close its
``<script>`` element, the stylesheet and the script are inline and allowed by hash in a
Content-Security-Policy that forbids every network request, and the script puts strings on the page
with ``textContent`` only. A srcdoc iframe inherits its parent's policy, so the parent's policy also
allows the hashes the embedded replay pages declare (their scripts must pass both policies).
"""

from __future__ import annotations

import array
import base64
import html
import json
import math
import re
import sys
from typing import Any

from ..errors import GradtraceError
from .html import to_html
from .inert import inert_text
from .page import asset, csp, csp_hash, joined_script, script_json

__all__ = ["WatchFileError", "to_watch_html", "to_watch_iframe"]

#: The page's script, joined in this order into one function scope (each file uses the ones before it).
SCRIPTS = ("watch_plot.js", "watch_tree.js", "watch.js")
_NONFINITE = ("NaN", "inf", "-inf")
_CSP_META = re.compile(r'<meta\s+http-equiv="Content-Security-Policy"\s+content="([^"]*)"', re.I)
_INLINE = re.compile(r"<(script|style)(\s[^>]*)?>(.*?)</\1>", re.S | re.I)


class WatchFileError(GradtraceError):
    """A watch history is not a well-formed ``gradtrace-watch`` document; the message names the field."""


def _bad(where: str, expected: str, found: Any) -> WatchFileError:
    text = repr(found)
    text = text[:60] + "…" if len(text) > 60 else text
    return WatchFileError(f"watch history: {where} should be {expected}, found {text} (a {type(found).__name__})")


def _obj(x: Any, where: str) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise _bad(where, "a JSON object", x)
    return x


def _list(x: Any, where: str) -> list[Any]:
    if not isinstance(x, list):
        raise _bad(where, "a JSON array", x)
    return x


def _str(x: Any, where: str, optional: bool = False) -> str | None:
    if x is None and optional:
        return None
    if not isinstance(x, str):
        raise _bad(where, "a string or null" if optional else "a string", x)
    return x


def _int(x: Any, where: str, optional: bool = False) -> int | None:
    if x is None and optional:
        return None
    if isinstance(x, bool) or not isinstance(x, int):
        raise _bad(where, "an integer or null" if optional else "an integer", x)
    return x


def _num(x: Any, where: str) -> float | int | str | None:
    """One sample as the history writes it: a number, "NaN"/"inf"/"-inf", or null; anything else is refused."""
    if x is None or (isinstance(x, str) and x in _NONFINITE):
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _bad(where, 'a number, "NaN", "inf", "-inf" or null', x)
    if isinstance(x, float) and not math.isfinite(x):  # a dict built in Python may hold float('nan') itself
        return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


_FLOATS = {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}


def _samples(x: Any, n: int, where: str) -> list[Any]:
    values = _list(x, where)
    if len(values) != n:
        raise WatchFileError(f"watch history: {where} has {len(values)} samples but 'steps' has {n}: "
                             "every series is aligned with 'steps'")
    out: list[Any] = []
    for v in values:  # the common cases inline: a long run has millions of samples
        t = type(v)
        if t is float:
            out.append(v if v - v == 0 else ("NaN" if v != v else ("inf" if v > 0 else "-inf")))
        elif t is int or v is None or (t is str and v in _NONFINITE):
            out.append(v)
        else:
            out.append(_num(v, f"{where}[{len(out)}]"))  # refuses it, or takes an int/float subclass
    return out


def _packed(values: list[Any]) -> dict[str, Any] | list[Any]:
    """A checked series as the page holds it: little-endian float32 in base64 (``{"f32": ..., "null":
    [indices of the missing samples]}``), about 5.3 characters a sample where JSON text takes 8 to 20
    and the browser decodes it without parsing a number. float32 keeps 7 significant digits (the page
    shows 4) and NaN/inf themselves; a series with a value float32 cannot hold (beyond 3.4e38, below
    1.2e-38, an integer past 2**24) stays a JSON list, exactly as written."""
    floats, nulls = [], []
    for i, v in enumerate(values):
        if v is None:
            nulls.append(i)
            floats.append(0.0)
        elif isinstance(v, str):
            floats.append(_FLOATS[v])
        else:
            a = abs(v)
            if a > 3.4e38 or (a != 0 and a < 1.2e-38) or (isinstance(v, int) and a > 2**24):
                return values
            floats.append(v)
    packed = array.array("f", floats)
    if sys.byteorder == "big":
        packed.byteswap()
    out: dict[str, Any] = {"f32": base64.b64encode(packed.tobytes()).decode("ascii")}
    if nulls:
        out["null"] = nulls
    return out


def _series(x: Any, n: int, where: str) -> dict[str, Any]:
    return {_str(k, f"{where} key"): _packed(_samples(v, n, f"{where}[{k!r}]")) for k, v in _obj(x, where).items()}


def _pairs(x: Any, where: str) -> list[list[Any]]:
    """A ``[[step, loss], ...]`` list (every step's loss), checked."""
    out = []
    for i, pair in enumerate(_list(x or [], where)):
        if not isinstance(pair, list) or len(pair) != 2:
            raise _bad(f"{where}[{i}]", "a pair [step, loss]", pair)
        out.append([_int(pair[0], f"{where}[{i}][0]"), _num(pair[1], f"{where}[{i}][1]")])
    return out


def _steps(h: dict[str, Any]) -> list[int]:
    steps = [_int(s, f"steps[{i}]") for i, s in enumerate(_list(h.get("steps"), "steps"))]
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise WatchFileError(f"watch history: steps must ascend, but steps[{i}] = {steps[i]} follows {steps[i - 1]}")
    return steps


def _below(name: str, parent: str | None) -> str:
    """What a tree row shows: the name's part below its parent (``blocks.0.attn`` under ``blocks.0``:
    ``attn``), else the whole name (a name may hold dots of its own in a hand-written file)."""
    return name[len(parent) + 1:] if parent and name.startswith(parent + ".") and len(name) > len(parent) + 1 else name


def _tree(modules: list[dict[str, Any]], params: list[dict[str, Any]], series: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the module tree, parents before children, each module's parameters first.

    Paths stay as given (they are keys, JSON escaping makes them safe); what is shown goes through
    :func:`inert_text`. A parent that is missing, or a loop of parents, puts a module at the top.
    """
    known = {m["path"] for m in modules}
    kids: dict[str | None, list[dict[str, Any]]] = {}
    for m in modules:
        parent = m["parent"] if m["parent"] in known and m["parent"] != m["path"] else None
        kids.setdefault(parent, []).append(m)
    for path in series["module"]:  # a module with data but no entry in 'modules': shown at the top
        if path not in known:
            known.add(path)
            kids.setdefault(None, []).append({"path": path, "type": "", "parent": None})
    own: dict[str, list[dict[str, Any]]] = {}
    named = set()
    for p in params:
        if p["name"] not in named:  # a name listed twice is one parameter (its series is one)
            named.add(p["name"])
            own.setdefault(p["module"] if p["module"] in known else "\0orphan", []).append(p)
    for name in series["param"]:
        if name not in named:
            own.setdefault("\0orphan", []).append({"name": name, "module": "", "shape": []})
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def emit(root: dict[str, Any]) -> None:
        stack = [(root, 0)]  # iterative: a model tree may be hundreds of levels deep
        while stack:
            m, depth = stack.pop()
            if m["path"] in seen:
                continue
            seen.add(m["path"])
            path = m["path"]
            rows.append({"kind": "module", "key": path, "depth": depth, "type": inert_text(m["type"] or ""),
                         "name": inert_text(_below(path, m["parent"]) if path else "(model)"), "full": inert_text(path),
                         "s": series["module"].get(path, {})})
            for p in own.get(path, []):
                rows.append({"kind": "param", "key": p["name"], "depth": depth + 1,
                             "type": "×".join(str(d) for d in p["shape"]), "name": inert_text(_below(p["name"], path)),
                             "full": inert_text(p["name"]), "s": series["param"].get(p["name"], {})})
            stack.extend((c, depth + 1) for c in reversed(kids.get(path, [])))

    for m in kids.get(None, []):
        emit(m)
    for m in modules:  # what a loop of parents kept out of reach
        emit(m)
    for p in own.get("\0orphan", []):
        rows.append({"kind": "param", "key": p["name"], "depth": 0, "type": "", "name": inert_text(p["name"]),
                     "full": inert_text(p["name"]), "s": series["param"].get(p["name"], {})})
    return rows


def _embedded(traces: dict[str, Any]) -> tuple[list[dict[str, Any]], set[str], set[str]]:
    """Each embedded trace's replay page, and the script and style hashes those pages need."""
    from ..steptrace import Trace  # steptrace imports render lazily; render never imports torch

    pages, scripts, styles = [], set(), set()
    for key, doc in sorted(traces.items(), key=lambda kv: (len(kv[0]), kv[0])):
        step = int(key) if key.isdigit() else None
        if step is None:
            raise _bad(f"traces key {key!r}", "a step number written as a string, such as \"312\"", key)
        try:
            trace = Trace.from_json(json.dumps(_obj(doc, f"traces[{key!r}]"), allow_nan=False))
        except (GradtraceError, ValueError) as e:
            raise WatchFileError(f"watch history: traces[{key!r}] is not a step trace: {e}") from None
        page = to_html(trace)
        s, st = _page_hashes(page)
        scripts |= s
        styles |= st
        pages.append({"step": step, "html": page, "nodes": len(trace.nodes)})
    return pages, scripts, styles


def _page_hashes(page: str) -> tuple[set[str], set[str]]:
    """The script and style sources an embedded page allows itself, read off its own policy, plus the
    hash of each inline script and style it holds (in case its policy names them some other way)."""
    scripts, styles = set(), set()
    meta = _CSP_META.search(page)
    if meta:
        for directive in html.unescape(meta.group(1)).split(";"):
            name, *sources = directive.split()
            hashes = {s for s in sources if s.startswith("'sha256-") and s.endswith("'")}
            (scripts if name == "script-src" else styles if name == "style-src" else set()).update(hashes)
    for tag, attrs, body in _INLINE.findall(page):
        if tag.lower() == "style":
            styles.add(csp_hash(body))
        elif "application/json" not in (attrs or ""):
            scripts.add(csp_hash(body))
    return scripts, styles


def page_data(history: dict[str, Any]) -> tuple[dict[str, Any], set[str], set[str]]:
    """What the page's script reads, checked; and the hashes the embedded traces need."""
    h = _obj(history, "the document")
    if h.get("format") != "gradtrace-watch":
        raise _bad("format", '"gradtrace-watch" (a file written by `gradtrace watch -o run.json`)', h.get("format"))
    if h.get("version") != 1:
        raise _bad("version", "1 (the only version this gradtrace reads)", h.get("version"))
    steps = _steps(h)
    n = len(steps)
    raw_series = _obj(h.get("series", {}), "series")
    series = {kind: {_str(k, f"series.{kind} key"): _series(v, n, f"series.{kind}[{k!r}]")
                     for k, v in _obj(raw_series.get(kind, {}), f"series.{kind}").items()} for kind in ("module", "param")}
    modules = []
    for i, m in enumerate(_list(h.get("modules", []), "modules")):
        m = _obj(m, f"modules[{i}]")
        modules.append({"path": _str(m.get("path"), f"modules[{i}].path"), "type": _str(m.get("type", ""), f"modules[{i}].type"),
                        "parent": _str(m.get("parent"), f"modules[{i}].parent", optional=True)})
    params = []
    for i, p in enumerate(_list(h.get("params", []), "params")):
        p = _obj(p, f"params[{i}]")
        params.append({"name": _str(p.get("name"), f"params[{i}].name"), "module": _str(p.get("module", ""), f"params[{i}].module"),
                       "shape": [_int(d, f"params[{i}].shape[{j}]") for j, d in enumerate(_list(p.get("shape", []), f"params[{i}].shape"))]})
    events = []
    for i, e in enumerate(_list(h.get("events", []), "events")):
        e = _obj(e, f"events[{i}]")
        events.append({"step": _int(e.get("step"), f"events[{i}].step"), "kind": inert_text(_str(e.get("kind"), f"events[{i}].kind")),
                       "text": inert_text(_str(e.get("text", ""), f"events[{i}].text")),
                       "module": _str(e.get("module"), f"events[{i}].module", optional=True),
                       "param": _str(e.get("param"), f"events[{i}].param", optional=True)})
        events[-1]["where"] = inert_text(" ".join(x for x in (events[-1]["module"], events[-1]["param"]) if x))
    loss_all = _pairs(h.get("loss_all"), "loss_all")
    losses_all = {inert_text(_str(k, "losses_all key") or ""): _pairs(v, f"losses_all[{k!r}]")
                  for k, v in _obj(h.get("losses_all") or {}, "losses_all").items()}
    # Shown names go through inert_text; keys that other fields refer to (module paths, metric keys) stay
    # as written for lookups and get a shown spelling of their own.
    clip = {inert_text(k): v for k, v in _series(h["clip"], n, "clip").items()} if h.get("clip") is not None else {}
    optimizers = []
    for i, o in enumerate(_list(h.get("optimizers", []), "optimizers")):
        o = _obj(o, f"optimizers[{i}]")
        optimizers.append({k: inert_text(str(v)) for k, v in o.items() if k != "roots"})
        # The models it steps (their root names, "" for a single unnamed model).
        optimizers[-1]["roots"] = [inert_text(_str(r, f"optimizers[{i}].roots[{j}]") or "")
                                   for j, r in enumerate(_list(o.get("roots", []), f"optimizers[{i}].roots"))]
    overhead = {k: _num(v, f"overhead.{k}") for k, v in _obj(h.get("overhead") or {}, "overhead").items()}
    traces, script_hashes, style_hashes = _embedded(_obj(h.get("traces") or {}, "traces"))
    data = {
        "script": inert_text(_str(h.get("script", ""), "script") or ""),
        "every": _int(h.get("every"), "every", optional=True),
        "everyRule": inert_text(_str(h.get("every_rule"), "every_rule", optional=True) or ""),
        "stepsRun": _int(h.get("steps_run"), "steps_run", optional=True),
        "steps": steps,
        "loss": _packed(_samples(h["loss"], n, "loss") if "loss" in h else [None] * n),
        "lossAll": loss_all,
        "losses": {inert_text(k): v for k, v in _series(h.get("losses") or {}, n, "losses").items()},
        "lossesAll": losses_all,
        "lr": [{"name": inert_text(k), "values": v} for k, v in _series(h.get("lr") or {}, n, "lr").items()],
        "clip": clip,
        "optimizers": optimizers,
        "rows": _tree(modules, params, series),
        "events": sorted(events, key=lambda e: e["step"]),
        "firstAlarm": _int(h.get("first_alarm"), "first_alarm", optional=True),
        "traces": traces,
        "overhead": overhead,
        "metricLabels": {m: inert_text(m) for kind in series.values() for metrics in kind.values() for m in metrics},
    }
    return data, script_hashes, style_hashes


def to_watch_html(history: dict[str, Any] | Any) -> str:
    """The watch page for a run's ``history`` (``History.to_dict()``, a loaded ``run.json``, or any
    object with a ``to_dict()`` giving one), as one HTML document. A malformed history raises
    :class:`WatchFileError` naming the field.

    >>> to_watch_html(json.load(open("run.json"))).startswith("<!DOCTYPE html>")   # doctest: +SKIP
    True
    """
    if not isinstance(history, dict) and callable(getattr(history, "to_dict", None)):
        history = history.to_dict()
    data, trace_scripts, trace_styles = page_data(history)
    script, style = joined_script(SCRIPTS), asset("watch.css")
    # The embedded replay pages run in srcdoc frames, which take this page's policy: their hashes join it.
    policy = csp([csp_hash(script), *sorted(trace_scripts)], [csp_hash(style), *sorted(trace_styles)])
    title = html.escape(f"gradtrace watch · {data['script'] or 'run'} · {len(data['steps'])} sampled steps")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<div id="app">
<header id="top">
<strong id="runname"></strong><span id="runinfo"></span>
<label>metric <select id="metric" aria-label="metric"></select></label>
<button id="scale" title="log or linear scale">log</button>
<input id="search" type="search" placeholder="find a module… (/)" aria-label="find a module">
<button id="prev" title="previous sampled step (←)">◀</button><span id="stepname"></span><button id="next" title="next sampled step (→)">▶</button>
<button id="theme" title="switch between the dark and the light theme">dark</button>
</header>
<nav id="tree" aria-label="modules"></nav>
<main id="main">
<section class="chart"><h2 id="charttitle"></h2><canvas id="chart" height="260"></canvas><div id="readout" aria-live="polite"></div></section>
<div id="small">
<section class="chart"><h3>loss<span class="legend" id="losslegend"></span></h3><canvas id="losschart" height="120"></canvas></section>
<section class="chart"><h3>learning rate<span class="legend" id="lrlegend"></span></h3><canvas id="lrchart" height="120"></canvas></section>
<section class="chart" id="clipbox"><h3>total grad norm, clipping<span class="legend" id="cliplegend"></span></h3><canvas id="clipchart" height="120"></canvas></section>
</div>
<section id="heatbox"><h3 id="heattitle"></h3><div id="heatwrap"><div id="heatlabels"></div><canvas id="heat"></canvas></div><div id="heatread"></div></section>
</main>
<aside id="side">
<section id="stepbox"></section>
<h3>events</h3><ol id="events"></ol>
<h3>full step traces</h3><ul id="traces"></ul>
</aside>
<div id="tracepane" hidden><div id="tracebar"><span id="tracetitle"></span><button id="traceclose" title="close (Esc)">close</button></div><iframe id="traceframe" sandbox="allow-scripts" title="step trace"></iframe></div>
</div>
<script type="application/json" id="gradtrace-watch-data">{script_json(data)}</script>
<script>{script}</script>
</body>
</html>
"""


def to_watch_iframe(history: dict[str, Any] | Any, height: int = 720) -> str:
    """The watch page inside an ``<iframe srcdoc>``: how Jupyter shows it, isolated from the notebook.

    >>> from IPython.display import HTML; HTML(to_watch_iframe(w.history))   # doctest: +SKIP
    """
    return (f'<iframe srcdoc="{html.escape(to_watch_html(history), quote=True)}" '
            f'style="width: 100%; height: {int(height)}px; border: 1px solid #ddd" sandbox="allow-scripts"></iframe>')
