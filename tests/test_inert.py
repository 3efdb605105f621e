"""Inert output: no string from a model or a trace file can run script, fetch a resource or break
the file format in DOT, SVG, HTML or the terminal.

Every string field of a trace gets hostile text (Graphviz attribute injection through ``<...>``,
``</script>``, control characters and ANSI escapes, trailing backslashes, bidi overrides, lone
surrogates); the DOT goes through the real ``dot -Tsvg`` and the SVG is parsed and checked against
what gradtrace itself emits.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradtrace import RenderOptions, Trace
from gradtrace.records import OptimizerStep, TensorStats, TraceEdge, TraceNode
from gradtrace.render.inert import dot_id, printable
from gradtrace.render.output import to_bytes
from gradtrace.render.text import to_text

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"

PAYLOADS = [
    '<a>] ; x [URL="javascript:alert(1)" target=_top]; y [label=<b>',
    '<x> ]; graph [stylesheet="http://evil.example/x.css"]; z [label=<y>',
    "</script><script>alert(1)</script>", "<!--", "-->", "]]>", "<![CDATA[", "\\", "a\\", "\\N", "\\G", "\\l",
    '"', "'", "\x1b[31m", "\x1b]0;pwned\x07", "\x00", "\x07", "\r", "\n", "\t", "\x7f", "\x9b", "\u2028", "\u202e",
    "\ud800", "\ufffe", "&amp;", "&#0;", "javascript:alert(1)", "url(http://evil.example/a.png)",
    '@import "http://evil.example/x.css";', ":", "a:b:c", "node", "graph", "legend", "cluster_0", "<<B>x</B>>",
    '<image href="http://evil.example/x.png"/>', "<style>@import url(http://evil.example)</style>", "op0", "module:a",
    "{", "}", ";", "=", "[", "]", ".", "..", "%s", "<foreignObject>",
]
hostile = st.lists(st.sampled_from(PAYLOADS) | st.text(max_size=4), min_size=1, max_size=4).map("".join)

ALLOWED_TAGS = {f"{SVG}{t}" for t in ("svg", "g", "title", "polygon", "polyline", "path", "ellipse", "text", "a")}
ALLOWED_ATTRS = {"class", "d", "fill", "font-family", "font-size", "font-style", "font-weight", "height", "id", "points",
                 "stroke", "stroke-dasharray", "stroke-width", "text-anchor", "transform", "viewBox", "width", "x", "y",
                 "cx", "cy", "rx", "ry", f"{XLINK}title"}
UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _stats(s: str) -> TensorStats:
    return TensorStats((2,), s, s, 2, 1.0, 2.0, 1.5, 0.5, 2.2, 0, 0, (1.0, 2.0))


def hostile_trace(s: list[str]) -> Trace:
    """Every string field of a trace carries one of the strings ``s`` (cycled)."""
    it = itertools.cycle(s)
    nx = lambda: next(it)  # noqa: E731
    mod_a, mod_b = nx(), nx()
    nodes = (
        TraceNode(key=nx() + "#in", kind="input", label=nx(), values=(_stats(nx()),)),
        TraceNode(key=nx() + "#w", kind="param", label=nx(), module=mod_a, values=(_stats(nx()),), grads=(_stats(nx()),),
                  update=_stats(nx()), update_ratio=0.01, sgd_update=_stats(nx())),
        TraceNode(key=nx() + "#a", kind="op", label=nx(), module=mod_a, grad_fn=nx(), source=nx(), args=nx(), scope=nx(),
                  values=(_stats(nx()),), grads=(_stats(nx()),), forward_step=0, backward_step=2),
        TraceNode(key=nx() + "#b", kind="op", label=nx(), module=f"{mod_a}.{mod_b}", grad_fn=nx(),
                  values=(_stats(nx()), None), grads=(_stats(nx()), _stats(nx())), forward_step=1, backward_step=1),
        TraceNode(key=nx() + "#loss", kind="op", label=nx(), module="", values=(_stats(nx()),), grads=(_stats(nx()),),
                  forward_step=2, backward_step=0),
    )
    k = [n.key for n in nodes]
    edges = (TraceEdge(k[0], k[2], grad=_stats(nx())), TraceEdge(k[1], k[2]), TraceEdge(k[2], k[3]), TraceEdge(k[3], k[4]))
    return Trace(nodes, edges, k[4], modules={mod_a: nx(), f"{mod_a}.{mod_b}": nx(), nx(): nx()},
                 optimizer=OptimizerStep(nx(), 0.1, ((nx(), nx()), (nx(), nx()))), notes=(nx(), nx()))


def assert_inert_svg(svg: bytes) -> None:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    for e in root.iter():
        assert e.tag in ALLOWED_TAGS, f"unexpected element {e.tag}"
        for name, value in e.attrib.items():
            assert name in ALLOWED_ATTRS, f"unexpected attribute {name}={value!r} on {e.tag}"
            if name != f"{XLINK}title":  # the tooltip is text; everything else we emit is a number, colour or font
                low = value.lower()
                assert "javascript:" not in low and "url(" not in low and "@import" not in low and "http" not in low, value
        assert not UNSAFE.search((e.text or "") + "".join(e.attrib.values()))
    assert b"<!DOCTYPE svg" in svg and svg.count(b"<!DOCTYPE") == 1


def _visible(root: ET.Element) -> str:
    return " ".join(" ".join(x for e in root.iter() for x in (e.text or "", *e.attrib.values())).split())


VIEWS = [RenderOptions(), RenderOptions(depth=0), RenderOptions(depth=0, fold=False, show_findings=False)]


@pytest.mark.dot
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile, min_size=1, max_size=6), st.sampled_from(range(len(VIEWS))))
def test_hostile_strings_are_text_in_dot_and_svg(strings, view):
    t = hostile_trace(strings)
    source = t.to_dot(VIEWS[view]).source
    proc = subprocess.run(["dot", "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode(errors="replace")
    assert_inert_svg(proc.stdout)
    shown = _visible(ET.fromstring(proc.stdout))
    # The hostile text is there to read, escaped into plain characters.
    for n in t.nodes:
        if view == 0 or not n.module:
            assert " ".join(printable(n.label).split()) in shown


@pytest.mark.dot
@pytest.mark.parametrize("view", range(len(VIEWS)))
def test_graphviz_escapes_in_labels_show_as_written(view):
    """Graphviz expands \\N (the node's id), \\G, \\L, \\E, \\T, \\H inside HTML labels too: a node
    labelled ``\\N&amp;`` read ``_x3c61…`` in the SVG (found by the hypothesis test above). Every
    backslash sequence in a label, module title or class name must show as written."""
    for text in ["\\N&amp;", "mod\\G", "C:\\Users\\Lee\\T.py", "a\\\\b", "\\E\\H\\l\\r"]:
        t = hostile_trace([text])  # every string of the trace: labels, modules, classes, notes
        source = t.to_dot(VIEWS[view]).source
        proc = subprocess.run(["dot", "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode(errors="replace")
        # What the diagram shows: <text> elements (a <title> holds the node's id by design).
        texts = [e.text for e in ET.fromstring(proc.stdout).iter("{http://www.w3.org/2000/svg}text") if e.text and e.text.strip()]
        # Each drawn input/op label is the text as written (its title line may add " · loss").
        titles = [x for x in texts if x.startswith(text)]
        assert titles, (text, texts[:8])
        assert not any("_x" in x for x in texts), f"a node id was drawn in place of {text!r}: {texts[:8]}"


@pytest.mark.dot
def test_a_focused_module_with_a_hostile_name_is_inert():
    t = hostile_trace([PAYLOADS[0], "\x1b[2J", "a\\"])
    source = t.to_dot(module=t.nodes[1].module).source
    proc = subprocess.run(["dot", "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert_inert_svg(proc.stdout)


@pytest.mark.dot
def test_injection_through_node_key_module_and_tooltip_stays_quoted():
    """The reported attack: whole ``<...>`` strings reached DOT unquoted (a node key, a module path
    with no class entry as the cluster tooltip, an edge tooltip from one label to another) and
    became Graphviz attributes: a remote stylesheet and ``javascript:`` links in the SVG."""
    key = '<k>]; graph [stylesheet="http://evil.example/x.css"]; n [URL="javascript:alert(1)" label=<x>'
    module = '<m> tooltip=x URL="javascript:alert(2)" target=_top label=<y>'
    st_ = _stats("float32")
    nodes = (TraceNode(key=key, kind="input", label='<a href="javascript:alert(3)">', values=(st_,)),
             TraceNode(key="op0", kind="op", label='x" URL="javascript:alert(4)">', module=module, values=(st_,),
                       grads=(st_,), forward_step=0, backward_step=0))
    t = Trace(nodes, (TraceEdge(key, "op0"),), "op0")
    source = t.to_dot().source
    proc = subprocess.run(["dot", "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert_inert_svg(proc.stdout)
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', source)
    unquoted = re.sub(r"<<TABLE.*?</TABLE>>", "<>", unquoted, flags=re.S)  # our own HTML labels, escaped inside
    unquoted = re.sub(r"label=<<B>[^<>]*</B>(?: <I>[^<>]*</I>)?>", "label=<>", unquoted)  # cluster titles, escaped inside
    assert "URL" not in unquoted and "stylesheet" not in unquoted and "javascript" not in unquoted


def test_dot_ids_are_distinct_plain_names():
    keys = ["op0", "a:b", "a_b", "legend", "node", "<x>", "\x00", "\ud800", "_x6f7030", "é"]
    ids = [dot_id(k) for k in keys]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", i) for i in ids)
    assert dot_id("op0") == "op0" and dot_id("legend") != "legend"


def test_a_node_key_like_a_block_key_stays_its_own_node():
    t = hostile_trace(["module:a", "a"])
    # the block that collapses module "a" and the node keyed "module:a#..." never merge
    source = t.to_dot(depth=0).source
    assert source.count("module_a") <= 1


@settings(max_examples=40, deadline=None)
@given(st.lists(hostile, min_size=1, max_size=6))
def test_text_table_has_no_control_characters(strings):
    out = to_text(hostile_trace(strings))
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]", out)
    out.encode("utf-8")  # no lone surrogate left


def test_text_table_shows_escapes_visibly():
    t = hostile_trace(["relu\x1b[31m", "\x1b]0;title\x07"])
    out = to_text(t)
    assert "relu\\x1b[31m" in out and "\x1b" not in out


@settings(max_examples=20, deadline=None)
@given(st.lists(hostile, min_size=1, max_size=6))
def test_every_format_writes_valid_bytes(strings):
    t = hostile_trace(strings)
    for fmt in ("dot", "text", "html", "json"):
        data = to_bytes(t, fmt, RenderOptions())
        data.decode("utf-8")
    back = Trace.from_json(to_bytes(t, "json", RenderOptions()))
    assert back.to_json() == t.to_json()


HTML_CASES = [
    [PAYLOADS[0], "</script><script>alert(1)</script>", "<!--", "\u2028x\u2029"],
    ["<img src=x onerror=alert(2)>", '"><svg onload=alert(3)>', "\x1b[31m", "\ud800", "a\\"],
    ["javascript:alert(4)", "<a href=javascript:alert(5)>x</a>", "<style>@import url(http://evil.example)</style>",
     "<link rel=stylesheet href=http://evil.example/x.css>", "<iframe src=http://evil.example>", "]]>"],
]


def test_hostile_trace_page_is_inert_in_chromium(tmp_path):
    from .browser import chromium_page

    errors: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []
    with chromium_page() as page:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        for i, strings in enumerate(HTML_CASES):
            t = hostile_trace(strings)
            path = t.render(tmp_path / f"h{i}.html")
            del errors[:], requests[:], dialogs[:]
            page.goto(path.as_uri())
            page.wait_for_selector("#graph .node")
            assert page.locator("#graph .node").count() == len(t.nodes)
            for n in page.query_selector_all("#graph .node"):  # every node's panel: every field shown
                n.click()
            page.fill("#search", strings[0][:3])
            for button in ("#next", "#last", "#first"):
                page.click(button)
            page.wait_for_timeout(200)
            assert dialogs == [] and errors == [], (dialogs, errors)
            assert requests == [path.as_uri()], requests
            counts = page.evaluate("""() => ({script: document.scripts.length, style: document.querySelectorAll('style').length,
                img: document.querySelectorAll('img, image, iframe, link, object, embed, foreignObject, a[href]').length,
                handlers: [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length})""")
            assert counts == {"script": 2, "style": 1, "img": 0, "handlers": 0}, counts
            assert printable(t.nodes[2].label) in page.text_content("#app")


def test_only_gradtrace_built_labels_reach_dot_as_html():
    """The class, not the cases: whatever attribute a later change adds, a ``<...>`` string is quoted
    unless gradtrace built it as an HtmlLabel."""
    from gradtrace.render.dot import _Digraph
    from gradtrace.render.labels import HtmlLabel

    g = _Digraph("t", graph_attr={"label": "<g>"}, node_attr={"URL": "<n>"}, edge_attr={"tooltip": "<e>"})
    g.node("a", "<label>", tooltip="<tip>", xlabel=HtmlLabel("<<B>ok</B>>"))
    g.edge("a", "b", label="<edge>", **{"headlabel": "<h>"})
    g.attr("node", comment="<c>")
    with g.subgraph(name="cluster_0") as sub:
        sub.attr(label="<cluster>")
    src = g.source
    for text in ("<g>", "<n>", "<e>", "<label>", "<tip>", "<edge>", "<h>", "<c>", "<cluster>"):
        assert f'"{text}"' in src, text
    assert "xlabel=<<B>ok</B>>" in src


@pytest.mark.dot
@pytest.mark.parametrize("name", ["]", "]]", "] x", "a]"])
def test_a_name_starting_with_a_bracket_draws(name):
    """Graphviz 2.43's HTML lexer fails on label text that starts with ``]`` (found by the hostile-strings test)."""
    t = hostile_trace([name])
    for options in VIEWS:
        proc = subprocess.run(["dot", "-Tsvg"], input=t.to_dot(options).source.encode("utf-8"), capture_output=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode(errors="replace")
        assert_inert_svg(proc.stdout)
