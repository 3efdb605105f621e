"""Rendering: DOT contents, escaping, determinism, formats, errors."""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace
from gradtrace import RenderOptions
from gradtrace.render.style import ALARM, BANDS, band_for

from .golden import masked
from .models import MLP

GOLDEN = Path(__file__).parent / "golden"
SVG = "{http://www.w3.org/2000/svg}"


def gradient_descent_trace():
    x = torch.tensor(300.0, requires_grad=True)
    y = torch.tensor(-200.0, requires_grad=True)
    return gradtrace.trace(lambda x, y: x ** 2 + 2 * y ** 2, x, y)


def mlp_trace():
    torch.manual_seed(0)
    net = MLP(4, 5, 3)
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    return gradtrace.trace(net, x, loss=lambda out: F.nll_loss(out, y))


class Weird(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module('<b>&"x"', nn.Linear(2, 2))
        self.add_module("<img src=x onerror=alert(1)>", nn.Linear(2, 1))
        self.add_module("back\\slash", nn.Tanh())

    def forward(self, x):
        mods = list(self.children())
        return mods[2](mods[1](mods[0](x)))


@pytest.mark.parametrize("name,make", [("gradient_descent", gradient_descent_trace), ("mlp", mlp_trace)])
def test_golden_dot(name, make, regen_golden):
    source = make().to_dot().source
    path = GOLDEN / f"{name}.dot"
    if regen_golden:
        path.write_text(source, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; create it with pytest --regen-golden"
    # Numbers are masked: their last digits follow the CPU's float kernels (see tests/golden.py).
    assert masked(source) == masked(path.read_text(encoding="utf-8")), \
        f"DOT differs from {path}; if the change is meant, rerun with --regen-golden and review the diff"


def test_same_program_same_dot():
    assert mlp_trace().to_dot().source == mlp_trace().to_dot().source


@pytest.mark.dot
def test_same_program_same_svg(tmp_path):
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    mlp_trace().render(a)
    mlp_trace().render(b)
    assert a.read_bytes() == b.read_bytes()


def test_node_shows_label_shape_value_grad_and_step():
    t = mlp_trace()
    source = t.to_dot().source
    (fc1_add,) = t.find("addmm", module="fc1")
    line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{fc1_add} ["))
    node = t.node(fc1_add)
    assert "<B>addmm</B>" in line and f"#{node.backward_step}" in line
    assert "(2, 5) float32" in line
    assert "value " in line and "grad " in line
    assert "tooltip=" in line
    loss_line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{t.loss} ["))
    assert "peripheries=2" in loss_line and "· loss" in loss_line
    # kinds look different
    (w,) = t.find("fc1.weight")
    w_line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{w} ["))
    assert 'style=filled' in w_line and "rounded" not in w_line
    assert "style=\"rounded,filled\"" in line
    assert "cluster_" in source and "<B>fc1</B> <I>Linear</I>" in source


def test_options_hide_values_and_grads():
    t = mlp_trace()
    plain = t.to_dot(show_values=False, show_grads=False).source
    assert ">value " not in plain and ">grad " not in plain  # (tooltips keep every number)
    assert ">value " in t.to_dot().source and ">grad " in t.to_dot().source
    assert "rankdir=LR" in t.to_dot(RenderOptions(rankdir="LR")).source
    with pytest.raises(gradtrace.RenderError, match=r"unknown render option\(s\) \['colour'\]"):
        t.to_dot(colour="red")
    with pytest.raises(gradtrace.RenderError, match="must be one of"):
        RenderOptions(rankdir="up")


def test_colour_scale_and_alarm():
    from gradtrace.records import TensorStats

    def g(norm, n=1, nan=0, inf=0):
        return TensorStats((n,), "float32", "cpu", n, 0.0, 0.0, 0.0, 0.0, norm, nan, inf)

    assert band_for(g(5e-7))[0] == BANDS[0].color
    assert band_for(g(0.5))[0] == BANDS[6].color
    assert band_for(g(1e6))[0] == BANDS[-1].color
    assert band_for(g(0.5 * math.sqrt(100), n=100))[0] == BANDS[6].color  # RMS, not norm
    assert band_for(g(math.nan, nan=1))[0] == ALARM
    assert ALARM not in {b.color for b in BANDS}
    assert band_for(g(0.0))[1] == "zero gradient"


def test_nan_is_drawn_in_alarm_colour():
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    t = gradtrace.trace(lambda v: v.log().sum(), x)
    source = t.to_dot().source
    (log,) = t.find("log")
    line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{log} ["))
    assert ALARM in line and "NaN×1" in line
    assert "legend" in source and "NaN / inf" in source


def test_user_strings_are_escaped():
    t = gradtrace.trace(Weird(), torch.randn(3, 2))
    source = t.to_dot().source
    assert "&lt;b&gt;&amp;&quot;x&quot;" in source
    # Outside quoted strings (tooltips, which dot escapes itself), no user text stays raw.
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', source)
    assert "<b>&" not in unquoted
    assert "<img" not in unquoted
    # '&' written as &amp;: Graphviz decodes entities inside quoted strings too (see the test below)
    assert 'tooltip="<b>&amp;\\"x\\" (Linear)"' in source


@pytest.mark.dot
def test_escaped_svg_is_valid_and_inert(tmp_path):
    t = gradtrace.trace(Weird(), torch.randn(3, 2))
    out = t.render(tmp_path / "w.svg")
    root = ET.parse(out).getroot()  # well-formed XML
    texts = [e.text for e in root.iter(f"{SVG}text") if e.text]
    assert any('<b>&"x"' in s for s in texts), "the module name is shown as text"
    assert not any(e.tag in (f"{SVG}img", "img", f"{SVG}b", "b", f"{SVG}script") for e in root.iter())
    titles = [v for e in root.iter() for k, v in e.attrib.items() if k.endswith("title")]
    assert any("back\\slash" in v for v in titles), "a backslash in a name survives into the tooltip"
    assert any("grad:" in v and "norm" in v for v in titles), "tooltips carry full statistics"


class Entities(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("a&lt;b&#65;&amp;", nn.Linear(2, 2))

    def forward(self, x):
        return next(iter(self.children()))(x)


@pytest.mark.dot
@pytest.mark.parametrize("opts", [{}, {"depth": 0}, {"max_nodes": 3}])
def test_text_that_looks_like_an_entity_is_shown_as_written(tmp_path, opts):
    # Graphviz decodes HTML entities in quoted strings (tooltips, cluster and caption labels), not only in HTML labels:
    # a module named 'a&lt;b&#65;&amp;' showed as 'a<bA&' in its tooltip. What the user wrote is what they must read.
    t = gradtrace.trace(Entities(), torch.randn(3, 2))
    root = ET.parse(t.render(tmp_path / "e.svg", **opts)).getroot()
    shown = [v for e in root.iter() for k, v in e.attrib.items() if k.endswith("title")]
    shown += [e.text for e in root.iter(f"{SVG}text") if e.text]
    shown += [e.text for e in root.iter(f"{SVG}title") if e.text]
    named = [s for s in shown if "a&lt;b" in s or "a<b" in s]
    assert named, shown
    assert all("a&lt;b&#65;&amp;" in s for s in named), named


class Backslashes(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("e&f\\N", nn.Linear(2, 2))
        self.add_module("g\\G\\L", nn.Tanh())

    def forward(self, x):
        a, b = self.children()
        return b(a(x))


@pytest.mark.dot
@pytest.mark.parametrize("opts", [{}, {"depth": 0}])
def test_backslash_sequences_in_names_are_shown_as_written_in_node_tooltips(tmp_path, opts):
    # dot 2.43 reads a node's tooltip for escapes twice (an edge's and a cluster's once): a module named 'e&f\N' read
    # 'e&fparam2.weight' in its nodes' tooltips while its cluster and edges read right (tryout5 11).
    t = gradtrace.trace(Backslashes(), torch.randn(3, 2))
    root = ET.parse(t.render(tmp_path / "b.svg", **opts)).getroot()
    titles = [v for e in root.iter() for k, v in e.attrib.items() if k.endswith("title")]
    named = [s for s in titles if "e&f" in s]
    assert len(named) >= 2, titles
    assert all("e&f\\N" in s for s in named), named
    assert all("g\\G\\L" in s for s in titles if s.startswith("g") or "module g" in s)
    assert any("g\\G\\L" in s for s in titles)


@pytest.mark.dot
def test_diff_node_tooltips_show_backslash_sequences_as_written(tmp_path):
    from gradtrace.diff import diff_traces
    from gradtrace.render.diff_dot import diff_dot

    torch.manual_seed(0)
    a = gradtrace.trace(Backslashes(), torch.randn(3, 2))
    b = gradtrace.trace(Backslashes(), torch.randn(3, 2) * 3)
    root = ET.fromstring(diff_dot(diff_traces(a, b)).pipe(format="svg"))
    titles = [v for e in root.iter() for k, v in e.attrib.items() if k.endswith("title")]
    named = [s for s in titles if "e&f" in s]
    assert named and all("e&f\\N" in s for s in named), named


@pytest.mark.dot
@pytest.mark.parametrize("suffix,magic", [(".svg", b"<?xml"), (".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_graphviz_formats(tmp_path, suffix, magic):
    out = mlp_trace().render(tmp_path / f"step{suffix}")
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [f"step{suffix}"], "no temporary file left behind"


def test_formats_without_dot(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    t = mlp_trace()
    assert t.render(tmp_path / "s.dot").read_text().startswith("digraph")
    assert gradtrace.Trace.from_json(t.render(tmp_path / "s.json").read_text()).loss == t.loss
    assert "nll_loss (loss)" in t.render(tmp_path / "s.txt").read_text()
    with pytest.raises(gradtrace.DotNotFoundError, match="apt-get install graphviz"):
        t.render(tmp_path / "s.svg")
    assert not (tmp_path / "s.svg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.dot", "s.json", "s.txt"]


def test_bad_paths_and_formats(tmp_path):
    t = mlp_trace()
    with pytest.raises(gradtrace.RenderError, match=r"unknown suffix '\.svgz'.*\.svg"):
        t.render(tmp_path / "x.svgz")
    with pytest.raises(gradtrace.RenderError, match=r"unknown format 'jpeg' \(must be one of \['svg'"):
        t.render(tmp_path / "x", format="jpeg")
    with pytest.raises(gradtrace.RenderError, match="does not match"):
        t.render(tmp_path / "x.png", format="dot")
    with pytest.raises(gradtrace.RenderError, match="does not exist"):
        t.render(tmp_path / "missing" / "x.dot")
    assert t.render(tmp_path / "plain", format="dot").read_text().startswith("digraph")


def test_unwritable_folder(tmp_path):
    # /proc takes no new files, even from root (CI runs as root, where chmod would not stop it).
    with pytest.raises(gradtrace.RenderError, match=r"cannot write '/proc/x.dot'"):
        mlp_trace().render("/proc/x.dot")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(gradtrace.RenderError, match="cannot write"):
            mlp_trace().render(ro / "x.dot")


@pytest.mark.dot
def test_render_time_budget(monkeypatch):
    t = mlp_trace()
    from gradtrace.render import execute

    def slow_run(*args, **kwargs):
        import subprocess

        raise subprocess.TimeoutExpired(cmd="dot", timeout=kwargs.get("timeout"))

    monkeypatch.setattr(execute.subprocess, "run", slow_run)
    with pytest.raises(gradtrace.RenderTimeoutError, match="max_nodes"):
        t.render("never.svg", timeout=0.5)
    assert not Path("never.svg").exists()


@pytest.mark.dot
def test_jupyter_svg():
    svg = mlp_trace()._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_text_table():
    t = mlp_trace()
    from gradtrace.render.text import to_text

    lines = to_text(t).splitlines()
    header = re.split(r"\s{2,}", lines[0])
    assert header[:6] == ["step", "node", "module", "shape", "value", "grad"] and header[6:] in ([], ["source"])
    assert lines[1].startswith("1 ") and "nll_loss (loss)" in lines[1]
    steps = [ln.split()[0] for ln in lines[1:]]
    assert steps[: len(t.backward_order())] == [str(i) for i in range(1, len(t.backward_order()) + 1)]
    rows = lines[: 1 + len(t.nodes)]  # the table; what each edge carried follows it once capture records that
    assert rows[-1].startswith("-") and " x " in rows[-1]


def test_every_finding_kind_has_a_badge_in_words():
    """A new kind of finding must read as words on the diagram, never as its identifier."""
    from gradtrace.diagnose.finding import KINDS
    from gradtrace.render.labels import _BADGES

    assert set(KINDS) <= set(_BADGES), sorted(set(KINDS) - set(_BADGES))


def _png_rows(png: bytes) -> list[list[tuple[int, ...]]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Graphviz's cairo writes) into rows of (r, g, b)."""
    pos, idat, w = 8, b"", 0
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            bpp = 4 if ctype == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, prev, rows = zlib.decompress(idat), w * bpp, bytearray(w * bpp), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return rows


@pytest.mark.dot
@pytest.mark.parametrize("color", [b.color for b in BANDS] + [ALARM])
def test_node_header_has_no_seam_in_png(color):
    """The header is two cells (label, #n) of one colour; abutting fills left a light vertical line
    between them in a PNG. One row through the header, away from the text, must be one colour."""
    import subprocess

    from gradtrace.render.labels import HtmlLabel, _header, _row, _table

    label: HtmlLabel = _table([_header(color, "<B>mul</B>", 2), _row("value [1, 2] a longer line than the header")])
    source = f'digraph {{ a [shape=box style="rounded,filled" fillcolor="#ffffff" label={label}] }}'
    png = subprocess.run(["dot", "-Tpng", "-Gdpi=300"], input=source.encode(), capture_output=True, check=True).stdout
    want = tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
    rows = _png_rows(png)
    band = max(rows, key=lambda r: sum(p == want for p in r))
    xs = [x for x, p in enumerate(band) if p == want]
    assert len(xs) > 300, "the header band is there"
    off = {p for p in band[xs[0]:xs[-1] + 1] if max(abs(a - b) for a, b in zip(p, want)) > 3}  # (rounding: ±1)
    assert not off, sorted(off)
