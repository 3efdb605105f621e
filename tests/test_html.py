"""The backprop replay page, in a real browser (Debian's Chromium through Playwright)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace

from .browser import chromium_page
from .models import MLP

ARTIFACTS = Path(os.environ.get("GRADTRACE_ARTIFACTS", Path(__file__).resolve().parent.parent / "build" / "test-artifacts"))


class Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("<img src=x onerror=alert(1)>", nn.Linear(4, 4))
        self.add_module("</script><script>alert(2)</script>", nn.Linear(4, 3))

    def forward(self, x):
        a, b = self.children()
        return F.log_softmax(b(torch.relu(a(x))), dim=1)


@pytest.fixture(scope="module")
def trace():
    torch.manual_seed(0)
    net = MLP(4, 6, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    return gradtrace.trace(net, x, loss=lambda out: F.nll_loss(out, y))


def open_page(page, path):
    errors, requests, dialogs = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready]")
    return errors, requests, dialogs


def panel_values(page):
    return page.eval_on_selector_all("#panel td[data-value]", "tds => tds.map(t => [t.closest('table').previousElementSibling?.textContent || '', t.dataset.field, t.dataset.value])")


def as_number(text):
    return {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}.get(text, None) if text in ("NaN", "inf", "-inf") else float(text)


def test_page_is_self_contained_and_quiet(trace, tmp_path):
    path = trace.render(tmp_path / "step.html")
    text = path.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    with chromium_page() as page:
        errors, requests, _ = open_page(page, path)
        assert errors == []
        assert requests == [path.as_uri()], "the page makes no request of its own"
        assert page.locator("#graph .node").count() == len(trace.nodes)


def test_clicking_a_node_shows_its_statistics(trace, tmp_path):
    path = trace.render(tmp_path / "step.html")
    (key,) = trace.find("addmm", module="fc1")
    node = trace.node(key)
    with chromium_page() as page:
        open_page(page, path)
        page.click(f'#graph .node[data-key="{key}"]')
        assert page.text_content("#panel h2") == "addmm"
        fields = {f: page.text_content(f'#panel td[data-field="{f}"]') for f in ("kind", "grad_fn", "module", "backward step")}
        assert fields == {"kind": "op", "grad_fn": "AddmmBackward0", "module": "fc1", "backward step": str(node.backward_step)}
        shown = panel_values(page)
        value = {f: v for title, f, v in shown if title == "value"}
        grad = {f: v for title, f, v in shown if title == "gradient"}
        for stats, seen in ((node.value, value), (node.grad, grad)):
            for f in ("min", "max", "mean", "std", "norm"):
                assert float(seen[f]) == getattr(stats, f), f
            assert int(seen["numel"]) == stats.numel and int(seen["NaN"]) == stats.nan and int(seen["inf"]) == stats.inf


def test_replay_lights_the_first_k_nodes(trace, tmp_path):
    path = trace.render(tmp_path / "step.html")
    order = trace.backward_order()
    with chromium_page() as page:
        open_page(page, path)
        for k in range(1, 5):
            page.click("#next")
            lit = page.eval_on_selector_all("#graph .node.visited", "els => els.map(e => e.dataset.key)")
            assert sorted(lit) == sorted(order[:k])
            assert page.eval_on_selector("#graph .node.current", "e => e.dataset.key") == order[k - 1]
            assert page.text_content("#panel h2") == trace.node(order[k - 1]).label
        page.keyboard.press("ArrowRight")
        assert page.locator("#graph .node.visited").count() == 5
        page.keyboard.press("ArrowLeft")
        assert page.locator("#graph .node.visited").count() == 4
        flows = page.eval_on_selector_all("#graph .edge-label.flow", "els => els.map(e => [e.dataset.src, e.dataset.dst, e.textContent])")
        assert flows and all(src == order[3] for src, _, _ in flows)
        # Each edge carries what was sent back along it (or, unrecorded, the node's ‖grad‖ or a share of it).
        assert all(t.startswith(("grad ", "‖grad‖", "part of ‖grad‖")) for _, _, t in flows)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "replay-mid.png"))
        page.click("#last")
        assert page.locator("#graph .node.visited").count() == len(order)


def test_search_and_zoom(trace, tmp_path):
    path = trace.render(tmp_path / "step.html")
    with chromium_page() as page:
        open_page(page, path)
        page.fill("#search", "fc2")
        matches = page.eval_on_selector_all("#graph .node.match", "els => els.map(e => e.dataset.key)")
        expected = {n.key for n in trace.nodes if "fc2" in n.module or "fc2" in n.label}
        assert set(matches) == expected and expected
        page.fill("#search", "fc2.weight")
        page.click("#results li")
        assert page.text_content("#panel h2") == "fc2.weight", "a search result selects its node"
        page.fill("#search", "")
        page.click("#fit")
        before = page.get_attribute("#graph", "viewBox")
        page.mouse.move(400, 400)
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(100)
        after = page.get_attribute("#graph", "viewBox")
        assert after != before and float(after.split()[2]) < float(before.split()[2]), "zooming in narrows the view"
        page.click("#fit")
        x, y, w, h = map(float, page.get_attribute("#graph", "viewBox").split())
        boxes = page.eval_on_selector_all("#graph .node", "els => els.map(e => e.transform.baseVal[0].matrix).map(m => [m.e, m.f])")
        assert len(boxes) == len(trace.nodes), "fit shows every node"
        assert all(x <= bx and bx + 230 <= x + w + 1e-6 and y <= by and by + 88 <= y + h + 1e-6 for bx, by in boxes), "inside the fitted view"


def test_hostile_names_are_inert_text(tmp_path):
    torch.manual_seed(0)
    t = gradtrace.trace(Hostile(), torch.randn(3, 4), loss=lambda out: out.sum())
    path = t.render(tmp_path / "hostile.html")
    with chromium_page() as page:
        errors, _, dialogs = open_page(page, path)
        page.wait_for_timeout(200)
        assert dialogs == [] and errors == []
        assert page.locator("img").count() == 0
        page.fill("#search", "onerror")
        assert page.text_content("#results li").startswith("<img src=x onerror=alert(1)>")
        page.click("#results li")
        assert page.text_content("#panel h2").startswith("<img src=x onerror=alert(1)>")
        assert page.locator("script").count() == 2, "no script element was injected"


def test_html_needs_no_graphviz(trace, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    path = trace.render(tmp_path / "no_dot.html")
    assert path.read_text().startswith("<!DOCTYPE html>")
    html = trace._repr_html_()
    assert html.startswith("<iframe srcdoc=") and "&lt;!DOCTYPE html&gt;" in html
    assert trace._repr_svg_() is None, "without dot, Jupyter falls back to the HTML view instead of an error"


def test_statistics_of_a_tensor_without_a_finite_element_read_as_dashes(tmp_path):
    # tryout5 14a: every element NaN, so min/max/mean/std/norm have no value: the panel printed the word 'null'
    class AllNaN(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x) * torch.tensor(math.nan)

    torch.manual_seed(0)
    t = gradtrace.trace(AllNaN(), torch.randn(4, 3))
    (key,) = t.find("mul")
    node = t.node(key)
    assert node.value.nan == node.value.numel == 8 and node.value.mean is None  # torch's: no finite element
    path = t.render(tmp_path / "nan.html")
    with chromium_page() as page:
        errors, _, _ = open_page(page, path)
        page.click(f'#graph .node[data-key="{key}"]')
        cells = {f: page.text_content(f'#panel td[data-field="{f}"]') for f in ("min", "max", "mean", "std", "norm", "NaN")}
        assert cells == {"min": "-", "max": "-", "mean": "-", "std": "-", "norm": "-", "NaN": "8"}, cells
        assert "no finite element" in page.text_content("#panel")
        assert "null" not in page.text_content("#panel")
        assert errors == []
