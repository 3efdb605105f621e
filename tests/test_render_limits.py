"""No DOT string can outgrow Graphviz: its lexer refuses any quoted or HTML string longer than
16,384 characters (``syntax error ... longer than 16384?``), so a multi-output node with thousands
of outputs (``split``, ``unbind``, iterating over a tensor) or a hand-edited trace file with a huge
label once made svg/png/pdf fail. Every diagram here goes through the real ``dot``."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

import gradtrace
from gradtrace import RenderOptions, Trace
from gradtrace.render.output import to_bytes

#: Graphviz's limit on one string token (lib/cgraph/scan.l); we stay well under it.
GRAPHVIZ_LIMIT = 16384
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|<(?:[^<>]|<(?:[^<>]|<[^<>]*>)*>)*>', re.S)


def longest_token(source: str) -> int:
    """The longest quoted or HTML string in DOT ``source`` (HTML strings nest ``<...>``)."""
    return max(len(m.group()) for m in _TOKEN.finditer(source))


def dot_svg(trace: Trace, **options: object) -> tuple[str, bytes]:
    source = trace.to_dot(**options).source
    proc = subprocess.run(["dot", "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert longest_token(source) < GRAPHVIZ_LIMIT
    return source, proc.stdout


def _captured(fn) -> Trace:
    with gradtrace.capture() as cap:
        fn()
    return cap.trace


@pytest.mark.dot
def test_split_into_6000_pieces_draws():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6000))

    def step() -> None:
        parts = torch.split(w, [1] * 6000)
        (torch.stack(parts[:3]).sum() + w.view(1, 6000).permute(1, 0).sum()).backward()

    t = _captured(step)
    split = next(n for n in t.nodes if len(n.values) == 6000)
    source, svg = dot_svg(t)
    assert b"6000 outputs" in svg or b"5997 more" in svg  # the list is cut, and says by how much
    # What is shown agrees with torch: the first piece's value is w[0].
    assert split.values[0].mean == pytest.approx(w[0].item(), rel=1e-6)


@pytest.mark.dot
def test_unbind_200_rows_in_a_loop_draws():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(200, 4))

    def step() -> None:
        h = torch.zeros(4)
        for x in w.unbind(0)[:5]:
            h = torch.tanh(h + x)
        h.sum().backward()

    t = _captured(step)
    unbind = next(n for n in t.nodes if len(n.values) == 200)
    dot_svg(t)
    # Only 5 of the 200 rows get a gradient; torch says the same.
    assert sum(g is not None for g in unbind.grads) in (5, 200)


@pytest.mark.dot
@pytest.mark.parametrize("field", ["label", "args", "source", "module", "grad_fn", "notes", "modules", "scope", "key"])
def test_50000_char_strings_from_a_trace_file_draw(field):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())
    t = gradtrace.trace(net, torch.randn(2, 3))
    d = json.loads(t.to_json())
    big = 'a"\\<&' * 10_000  # 50,000 characters, each of which DOT or HTML escapes
    if field == "notes":
        d["notes"] = [big, big]
    elif field == "modules":
        d["modules"] = {k: big for k in d["modules"]}
    elif field == "key":
        old = d["nodes"][1]["key"]
        d["nodes"][1]["key"] = big
        for e in d["edges"]:
            e["src"], e["dst"] = (big if e["src"] == old else e["src"]), (big if e["dst"] == old else e["dst"])
        if d["loss"] == old:
            d["loss"] = big
    else:
        for n in d["nodes"]:
            if field in ("module", "scope") and not n.get(field):
                continue
            n[field] = big + n.get(field, "") if field in ("module", "scope") else big
    back = Trace.from_json(json.dumps(d))
    for options in ({}, {"depth": 0}, {"edge_grads": True}):
        source, svg = dot_svg(back, **options)
    assert to_bytes(back, "dot", RenderOptions())  # and no string in it is past the limit (checked above)


@pytest.mark.dot
def test_a_tooltip_is_never_cut_inside_an_escape():
    """A cut that leaves a lone trailing backslash in a quoted DOT string is a syntax error."""
    from gradtrace.render.labels import cap_text, escape_tooltip

    for n in range(1, 40):
        text = "\\" * n + "x" * 50_000
        out = escape_tooltip(cap_text(text))
        assert len(out) < GRAPHVIZ_LIMIT
        assert (len(out) - len(out.rstrip("\\"))) % 2 == 0


@pytest.mark.dot
@pytest.mark.parametrize("view", range(3))
def test_every_string_field_50000_chars_long_draws(view):
    """Every string field of a trace (labels, keys, module paths, class names, sources, dtypes,
    devices, optimizer settings, notes) 50,000 characters of text DOT and HTML escape."""
    from .test_inert import PAYLOADS, VIEWS, assert_inert_svg, hostile_trace

    strings = [(p * (50_000 // len(p) + 1))[:50_000] + str(i) for i, p in enumerate(PAYLOADS[:8])]
    t = hostile_trace(strings)
    _, svg = dot_svg(t, **{f: getattr(VIEWS[view], f) for f in ("depth", "fold", "show_findings")})
    assert_inert_svg(svg)
    _, svg = dot_svg(t, module=t.nodes[1].module)
    assert_inert_svg(svg)
