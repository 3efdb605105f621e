"""A comparison drawn: text, JSON, DOT/SVG coloured by the change, and the HTML page in a real browser."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradtrace
from gradtrace import Trace
from gradtrace.diff import TraceDiff
from gradtrace.records import TraceNode
from gradtrace.render.diff_dot import diff_dot, node_id
from gradtrace.render.diff_html import to_html
from gradtrace.render.diff_style import DIFF_BANDS, band_of
from gradtrace.render.diff_text import factor
from gradtrace.render.inert import printable

from .browser import chromium_page
from .test_diff import Stack, data, traced
from .test_inert import PAYLOADS, UNSAFE, assert_inert_svg, hostile, hostile_trace

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def stack_diff() -> TraceDiff:
    torch.manual_seed(0)
    a_net, b_net = Stack(), Stack(extra=True)
    b_net.layers[0].load_state_dict(a_net.layers[0].state_dict())
    b_net.layers[4].load_state_dict(a_net.layers[2].state_dict())
    x, y = data()
    return traced(a_net, x, y).diff(traced(b_net, x, y), names=("before.json", "after.json"))


def scaled(t: Trace, factor: float) -> Trace:
    """``t`` with every gradient statistic times ``factor`` (a trace whose gradients grew)."""
    def grow(s):
        if s is None:
            return None
        return s.__class__(**{**s.__dict__, "norm": None if s.norm is None else s.norm * factor})

    nodes = tuple(TraceNode(**{**n.__dict__, "grads": tuple(grow(g) for g in n.grads)}) for n in t.nodes)
    return Trace(nodes=nodes, edges=t.edges, loss=t.loss, modules=t.modules, optimizer=t.optimizer, notes=t.notes)


def test_text_lists_changes_parameters_and_structure(stack_diff):
    text = stack_diff.to_text()
    assert text.startswith("gradtrace diff: A = before.json, B = after.json\n")
    assert "largest changes" in text and "parameters (all):" in text
    assert "parameters (the 2 that changed most of 4):" in stack_diff.to_text(top=2)
    assert "modules only in after.json: layers.2 (Linear), layers.3 (Tanh)" in text
    assert "modules matched under another path: layers.2 → layers.4" in text
    rows = [line for line in text.splitlines() if line.startswith("addmm in layers.0 ")]
    (c,) = [c for c in stack_diff.changes if c.label == "addmm" and c.scope == "layers.0"]
    assert rows and f"{c.grad_log2:+.3f}" in rows[0]


def test_text_of_identical_traces_says_nothing_changed():
    x, y = data()
    t = traced(Stack(), x, y)
    text = t.diff(t).to_text()
    assert "no matched node changed" in text and "structural differences: none" in text


def test_json_holds_every_matched_node(stack_diff, tmp_path):
    path = stack_diff.render(tmp_path / "d.json")
    d = json.loads(path.read_text())
    assert d["format"] == "gradtrace-diff" and d["version"] == 1 and d["names"] == ["before.json", "after.json"]
    assert len(d["matched"]) == len(stack_diff.changes)
    by_b = {m["b"]: m for m in d["matched"]}
    for c in stack_diff.changes:
        m = by_b[c.b]
        assert m["grad_log2"] == (c.grad_log2 if c.grad_log2 is not None else None)
        assert m["grad_norm"] == [c.grad_a, c.grad_b]
    assert d["modules_only_b"] == ["layers.2", "layers.3"]
    assert {x["label"] for x in d["only_b"]} == {"t", "addmm", "tanh", "layers.2.weight", "layers.2.bias"}


def test_colour_follows_the_log_ratio():
    x, y = data()
    a = traced(Stack(), x, y)
    for factor, expected in ((1.0, "about the same"), (3.0, "×2 – ×4"), (1 / 20, "÷16 or more"), (1.2, "×1.07 – ×1.41")):
        d = a.diff(scaled(a, factor))
        band = band_of(math.log2(factor))
        assert band is not None and band.label.startswith(expected)
        source = diff_dot(d).source
        for c in d.changes:
            if c.grad_a:  # a node with a gradient is filled with its band's colour
                line = next(line for line in source.splitlines() if f'id={node_id(c.b)} ' in line or f'id={node_id(c.b)}]' in line)
                assert f"fillcolor=\"{band.color}\"" in line, (factor, line)
    assert len({b.color for b in DIFF_BANDS}) == len(DIFF_BANDS)


def test_dot_is_deterministic(stack_diff):
    assert diff_dot(stack_diff).source == diff_dot(stack_diff).source


@pytest.mark.dot
def test_svg_marks_new_and_gone_nodes(stack_diff, tmp_path):
    path = stack_diff.render(tmp_path / "d.svg")
    root = ET.fromstring(path.read_bytes())
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    for k in stack_diff.only_b:
        assert node_id(k) in ids
    for c in stack_diff.changes:
        assert node_id(c.b) in ids
    back = stack_diff.b.diff(stack_diff.a)  # the layer removed: drawn as ghosts of A
    root = ET.fromstring(back.render(tmp_path / "back.svg").read_bytes())
    ghosts = {g.get("id") for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("g_")}
    assert ghosts == {node_id(k, "a") for k in back.only_a}


def _hostile_pair(strings: list[str]) -> TraceDiff:
    a = hostile_trace(strings)
    return a.diff(scaled(a, 2.0), names=(strings[0], strings[-1]))


@pytest.mark.dot
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile, min_size=1, max_size=5))
def test_hostile_strings_are_inert_in_text_svg_and_json(strings):
    d = _hostile_pair(strings)
    text = d.to_text()
    assert not UNSAFE.search(text.replace("\n", "")), "no control character reaches the terminal"
    source = diff_dot(d).source
    proc = subprocess.run(["dot", "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode(errors="replace")
    assert_inert_svg(proc.stdout)
    for g in ET.fromstring(proc.stdout).iter(f"{SVG}g"):
        assert re.fullmatch(r"[A-Za-z0-9_]+", g.get("id") or "x")
    json.loads(d.to_json())


def _page(d: TraceDiff, tmp_path, name: str = "d.html"):
    path = tmp_path / name
    path.write_text(to_html(d), encoding="utf-8")
    return path


def _open(page, path):
    errors, requests, dialogs = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_selector("#changes tbody tr")
    return errors, requests, dialogs


@pytest.mark.dot
def test_page_is_self_contained_with_csp_by_hash(stack_diff, tmp_path):
    path = _page(stack_diff, tmp_path)
    text = path.read_text()
    assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "").replace(
        "http://www.w3.org/1999/xlink", "")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    assert "default-src 'none'" in csp and "unsafe" not in csp
    for tag in ("script", "style"):
        (body,) = re.findall(f"<{tag}>(.*?)</{tag}>", text, re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp, tag
    with chromium_page() as page:
        errors, requests, _ = _open(page, path)
        assert errors == [] and requests == [path.as_uri()]
        assert page.locator("#graph svg g.node").count() == len(stack_diff.b.nodes) + len(stack_diff.only_a) + 1  # + legend


@pytest.mark.dot
def test_clicking_a_row_highlights_its_node_and_headers_sort(stack_diff, tmp_path):
    path = _page(stack_diff, tmp_path)
    with chromium_page() as page:
        _open(page, path)
        first = page.eval_on_selector("#changes tbody tr", "r => r.dataset.node")
        assert first == node_id(stack_diff.largest(1)[0].b), "the largest change comes first"
        rows = page.locator("#changes tbody tr")
        third = rows.nth(2)
        target = third.get_attribute("data-node")
        third.click()
        assert page.eval_on_selector_all("#graph g.node.hl", "els => els.map(e => e.id)") == [target]
        assert "hl" in (third.get_attribute("class") or "")
        # Sort by B's gradient norm: the rows follow the numbers, the ones without a number last.
        page.click("#changes th:nth-child(5)")
        shown = page.eval_on_selector_all("#changes tbody tr td:nth-child(5)", "tds => tds.map(t => t.dataset.v)")
        numbers = [float(v) for v in shown if v]
        assert numbers == sorted(numbers, reverse=True) and all(v for v in shown[: len(numbers)])
        page.click("#changes th:nth-child(5)")
        shown = page.eval_on_selector_all("#changes tbody tr td:nth-child(5)", "tds => tds.map(t => t.dataset.v)")
        assert [float(v) for v in shown if v] == sorted(numbers)
        # A structural difference finds its node too; clicking a node finds its row.
        page.click(f'#structural li[data-node="{node_id(stack_diff.only_b[0])}"]')
        assert page.eval_on_selector_all("#graph g.node.hl", "els => els.map(e => e.id)") == [node_id(stack_diff.only_b[0])]
        page.click(f"#graph g#{target} text")
        assert page.eval_on_selector_all("#changes tr.hl", "els => els.map(e => e.dataset.node)") == [target]


@pytest.mark.dot
def test_hostile_names_are_inert_text_on_the_page(tmp_path):
    strings = [PAYLOADS[0], "</script><script>alert(1)</script>", "<img src=x onerror=alert(2)>", "\x1b[31m", "\u202e"]
    d = _hostile_pair(strings)
    path = _page(d, tmp_path)
    with chromium_page() as page:
        errors, requests, dialogs = _open(page, path)
        page.wait_for_timeout(100)
        assert dialogs == [] and errors == [] and requests == [path.as_uri()]
        assert page.locator("img").count() == 0 and page.locator("script").count() == 1
        assert printable("<img src=x onerror=alert(2)>") in page.text_content("#side")


def test_html_says_when_graphviz_is_missing(stack_diff, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(gradtrace.DotNotFoundError, match="Graphviz"):
        stack_diff.render(tmp_path / "d.html")
    assert stack_diff.render(tmp_path / "d.json").exists(), "JSON and text need no Graphviz"


def test_render_refuses_a_bad_format_or_colouring(stack_diff, tmp_path):
    with pytest.raises(gradtrace.RenderError, match="unknown suffix"):
        stack_diff.render(tmp_path / "d.xyz")
    with pytest.raises(gradtrace.RenderError, match="does not match"):
        stack_diff.render(tmp_path / "d.svg", format="json")
    with pytest.raises(gradtrace.RenderError, match="unknown colouring"):
        stack_diff.render(tmp_path / "d.dot", by="loss")
    with pytest.raises(gradtrace.RenderError, match="does not exist"):
        stack_diff.render(tmp_path / "nope" / "d.json")


def test_value_colouring_uses_the_value_ratio(stack_diff):
    source = diff_dot(stack_diff, by="value").source
    assert "value rms after.json / before.json" in source
    c = next(c for c in stack_diff.changes if c.rms_log2 not in (None, 0.0) and c.grad_log2 is not None
             and band_of(c.rms_log2) != band_of(c.grad_log2))
    line = next(line for line in source.splitlines() if f"id={node_id(c.b)}" in line)
    assert f'fillcolor="{band_of(c.rms_log2).color}"' in line


@pytest.mark.dot
def test_a_layout_past_its_time_says_what_to_do(stack_diff, tmp_path):
    with pytest.raises(gradtrace.RenderTimeoutError, match="json or text.*timeout="):
        stack_diff.render(tmp_path / "d.svg", timeout=1e-6)
    assert not (tmp_path / "d.svg").exists()


def test_text_shows_update_ratios_only_where_a_step_was_captured(stack_diff):
    assert "update ratio" not in stack_diff.to_text(), "no optimizer step in these traces: no empty columns"
    torch.manual_seed(0)
    net = Stack()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    traces = []
    for seed in (1, 2):
        x, y = data(seed)
        with gradtrace.capture(net) as cap:
            opt.zero_grad()
            torch.nn.functional.nll_loss(net(x), y).backward()
            opt.step()
        traces.append(cap.trace)
    d = traces[0].diff(traces[1])
    text = d.to_text()
    assert "update ratio A" in text
    for c in d.params:
        row = next(line for line in text.split("parameters")[1].splitlines() if line.startswith(c.label + " "))
        assert row.split()[-1] == factor(c.update_log2)
