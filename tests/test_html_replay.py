"""The replay page's hierarchy, teaching and debugging features, against torch, in Chromium."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import gradtrace
from gradtrace.errors import RenderError
from gradtrace.render.html import to_html_multi, to_iframe
from gradtrace.render.options import RenderOptions

from .browser import chromium_page
from .models import MLP


class Triple(nn.Module):
    def forward(self, h):
        return h * 3.0


class FanOut(nn.Module):
    """h feeds two consumers, a module (×3) and an add: its gradient is the sum 3 + 1 per element."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.triple = Triple()

    def forward(self, x):
        h = self.fc(x)
        return self.triple(h) + h


def open_page(page, uri):
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(uri)
    page.wait_for_selector("body[data-ready]")
    return errors, requests


def numbers(text):
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]


@pytest.fixture(scope="module")
def fanout():
    torch.manual_seed(0)
    net, x = FanOut(), torch.tensor([[0.7]])
    t = gradtrace.trace(net, x, loss=lambda out: out.sum())
    # torch, independently: what each consumer of h sends back, and their sum
    h = net.fc(x)
    via_triple, = torch.autograd.grad(net.triple(h).sum(), h)
    via_add, = torch.autograd.grad(h.sum(), h)
    h2 = net.fc(x)
    h2.retain_grad()
    net(x).sum().backward() if False else (net.triple(h2) + h2).sum().backward()
    return t, float(via_triple), float(via_add), float(h2.grad)


def test_replay_shows_each_edge_gradient_and_the_fan_out_sum(fanout, tmp_path):
    t, via_triple, via_add, total = fanout
    path = t.render(tmp_path / "fan.html")
    (h,) = t.find("addmm", module="fc")
    with chromium_page() as page:
        errors, _ = open_page(page, path.as_uri())
        for _ in range(len(t.backward_order())):
            page.click("#next")
            if page.eval_on_selector("#graph .current", "e => e.dataset.key") == h:
                break
        labels = page.eval_on_selector_all("#graph .edge-label.flow", "els => els.map(e => [e.dataset.dst, e.textContent])")
        by_dst = {t.node(dst).label: numbers(text) for dst, text in labels}
        assert by_dst == {"mul": [via_triple], "add": [via_add]}, labels
        note = page.text_content("#graph .sumnote")
        assert numbers(note) == [via_triple, via_add, total], note
        assert errors == []


def test_replay_steps_through_a_closed_group_as_one(fanout, tmp_path):
    t, via_triple, via_add, _ = fanout
    path = t.render(tmp_path / "closed.html", max_nodes=3)  # opens with fc and triple closed
    with chromium_page() as page:
        errors, _ = open_page(page, path.as_uri())
        assert page.locator("#graph .group").count() == 2 and page.locator("#graph .frame").count() == 0
        seen = []
        for _ in range(8):
            page.click("#next")
            seen.append(page.eval_on_selector("#graph .current", "e => e.dataset.group || e.dataset.key"))
            if seen[-1] == "module:fc":
                break
        assert "module:triple" in seen and seen[-1] == "module:fc"
        assert len(seen) == len(set(seen)), "each closed group is one step"
        flows = page.eval_on_selector_all("#graph .edge-label.flow.in", "els => els.map(e => [e.dataset.dst, e.textContent])")
        # The gradient entering fc: what triple and add sent back along their edges.
        got = sorted(numbers(text)[0] for _, text in flows)
        assert got == sorted([via_triple, via_add]), flows
        assert "–" in page.text_content("#stepinfo"), "the step shows the range of backprop steps the group took"
        page.click("#prev")
        assert page.eval_on_selector("#graph .current", "e => e.dataset.group || e.dataset.key") == seen[-2]
        assert errors == []


def test_groups_open_and_close_and_escape_goes_up(tmp_path):
    torch.manual_seed(0)
    t = gradtrace.trace(MLP(4, 6, 3), torch.randn(5, 4), loss=lambda out: out.sum())
    path = t.render(tmp_path / "mlp.html", max_nodes=3)
    with chromium_page() as page:
        errors, _ = open_page(page, path.as_uri())
        before = page.locator("#graph .node").count()
        page.click('#graph .group[data-group="module:fc1"]')
        assert page.locator('#graph .frame[data-group="module:fc1"]').count() == 1
        page.keyboard.press("f")  # fit: the DOM holds what is in view
        assert page.locator("#graph .node").count() == before + 4, "fc1's weight, bias, t and addmm show"
        page.click('#graph .node[data-key="%s"]' % t.find("fc1.weight")[0])
        assert "fc1" in page.text_content("#crumbs")
        page.keyboard.press("Escape")
        assert page.locator('#graph .group[data-group="module:fc1"]').count() == 1, "Esc closes the group around the selection"
        assert page.text_content("#panel h2").startswith("fc1")
        page.keyboard.press("/")
        assert page.evaluate("document.activeElement.id") == "search"
        assert errors == []


def test_overlay_and_theme(tmp_path):
    torch.manual_seed(0)
    t = gradtrace.trace(MLP(4, 6, 3), torch.randn(5, 4), loss=lambda out: out.sum())
    path = t.render(tmp_path / "mlp.html")
    key = t.find("fc1.weight")[0]
    with chromium_page() as page:
        open_page(page, path.as_uri())
        header = f'#graph .node[data-key="{key}"] .header'
        band = page.get_attribute(header, "fill")
        page.select_option("#overlay", "nan")
        assert page.get_attribute(header, "fill") == "#b8b8b8", "no NaN: grey"
        assert "NaN count" in page.text_content("#legend")
        page.select_option("#overlay", "gn")
        from gradtrace.render.style import BANDS

        assert page.get_attribute(header, "fill") in {b.color for b in BANDS}, "a gradient RMS on the viridis scale"
        page.select_option("#overlay", "band")
        assert page.get_attribute(header, "fill") == band
        bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        page.click("#theme")
        assert page.evaluate("document.documentElement.classList.contains('dark')")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != bg


def test_works_inside_a_jupyter_iframe(tmp_path):
    torch.manual_seed(0)
    t = gradtrace.trace(MLP(4, 6, 3), torch.randn(5, 4), loss=lambda out: out.sum())
    host = tmp_path / "notebook.html"
    host.write_text(f"<!DOCTYPE html><html><body style='width:900px'><div class='output'>{to_iframe(t, height=500)}</div></body></html>")
    with chromium_page() as page:
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(host.as_uri())
        frame = page.frames[1]
        frame.wait_for_selector("body[data-ready]")
        assert frame.locator("#graph .node").count() >= 1
        frame.click("#fit")
        assert frame.locator("#graph .node").count() == len(t.nodes)
        page.screenshot(path=str(tmp_path / "iframe.png"))
        box = page.eval_on_selector("iframe", "e => [e.getBoundingClientRect().width, e.getBoundingClientRect().height]")
        assert box == [900, 500], "as wide as the notebook's output, as tall as asked"
        frame.click("#next")
        assert frame.locator("#graph .node.visited").count() == 1
        assert errors == [] and requests == [host.as_uri()], (errors, requests)


VALUE_NORM = """() => [...document.querySelectorAll('#panel h3')].find(h => h.textContent === 'value')
    .nextElementSibling.querySelector('td[data-field=norm]').dataset.value"""


def test_multi_trace_page_switches_and_keeps_the_selection(tmp_path):
    traces = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        traces.append(gradtrace.trace(MLP(4, 6, 3), torch.randn(5, 4), loss=lambda out: out.sum()))
    path = tmp_path / "ranks.html"
    path.write_text(to_html_multi([("rank 0", traces[0]), ("rank 1", traces[1])]))
    key = traces[0].find("fc2.weight")[0]
    with chromium_page() as page:
        errors, _ = open_page(page, path.as_uri())
        assert page.eval_on_selector_all("#traces option", "os => os.map(o => o.textContent)") == ["rank 0", "rank 1"]
        page.click(f'#graph .node[data-key="{key}"]')
        norm0 = page.evaluate(VALUE_NORM)
        page.select_option("#traces", "1")
        page.wait_for_selector('body[data-ready="1"]')
        assert page.text_content("#panel h2") == "fc2.weight", "the same key stays selected"
        norm1 = page.evaluate(VALUE_NORM)
        assert float(norm0) == traces[0].node(key).value.norm and float(norm1) == traces[1].node(key).value.norm
        assert errors == []


def test_multi_needs_labelled_traces():
    torch.manual_seed(0)
    t = gradtrace.trace(MLP(4, 6, 3), torch.randn(5, 4), loss=lambda out: out.sum())
    for bad in ([], [t], [("a", t), ("a", t)], "rank 0"):
        with pytest.raises(RenderError, match="to_html_multi needs"):
            to_html_multi(bad)


def test_multi_labels_cannot_close_the_script():
    torch.manual_seed(0)
    t = gradtrace.trace(MLP(4, 6, 3), torch.randn(5, 4), loss=lambda out: out.sum())
    page = to_html_multi([("</script><script>alert(1)</script>", t), ("rank 1", t)])
    assert "<script>alert(1)" not in page and page.count("</script>") == 2


def test_a_long_edge_keeps_a_lane_clear_of_the_boxes_it_passes(tmp_path):
    """y feeds exp (the next row) and add (three rows down): the edge y -> add runs beside exp and sin, not through them."""
    a = torch.tensor([1.5], requires_grad=True)
    t = gradtrace.trace(lambda v: (lambda y: y.exp().sin() + y)(v * 2.0), a)
    (y,) = t.find("mul")
    (add,) = t.find("add")
    with chromium_page() as page:
        errors, _ = open_page(page, t.render(tmp_path / "lane.html").as_uri())
        for _ in range(len(t.backward_order())):
            page.click("#next")
            if page.eval_on_selector("#graph .current", "e => e.dataset.key") == y:
                break
        d = page.get_attribute(f'#graph .edge.flow[data-src="{y}"][data-dst="{add}"] path', "d")
        points = [tuple(map(float, p.split(","))) for p in re.findall(r"(-?[\d.]+,-?[\d.]+)(?= [MC]|$)", d)]
        assert len(points) > 2, f"the long edge goes through lanes: {d}"
        boxes = page.eval_on_selector_all("#graph .node", "els => els.map(e => [e.dataset.key, e.transform.baseVal[0].matrix.e, e.transform.baseVal[0].matrix.f])")
        between = [(x, yy) for key, x, yy in boxes if t.node(key).label in ("exp", "sin")]
        assert len(between) == 2
        for px, py in points[1:-1]:
            for bx, by in between:
                assert not (bx <= px <= bx + 230 and by <= py <= by + 88), (px, py, bx, by)
        assert errors == []
