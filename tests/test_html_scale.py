"""The replay page at 30,000 nodes: bounded DOM, groups, search, replay and findings (Chromium).

Timing is measured in benchmarks/html_scale.py, not here; these tests assert what must hold
whatever the machine: the DOM holds what is in view, never every node.
"""

from __future__ import annotations

import json
import re

import pytest

from gradtrace.render.hierarchy import RUN_MAX, build_hierarchy
from gradtrace.render.html import page_data, to_html
from gradtrace.render.options import RenderOptions

from .big_trace import big_trace
from .browser import chromium_page

#: Far below 30,000 boxes of six elements each; what a screenful of boxes and the page's chrome need.
DOM_BOUND = 6000


@pytest.fixture(scope="module")
def big():
    return big_trace(30_000)


@pytest.fixture(scope="module")
def big_page(big, tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.html"
    path.write_text(to_html(big), encoding="utf-8")
    return path


def elements(page):
    return page.evaluate("document.getElementsByTagName('*').length")


def open_big(page, path):
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready]", timeout=60_000)
    return errors, requests


def test_big_trace_is_what_it_claims(big):
    assert len(big.nodes) >= 30_000
    assert any(s is not None and s.nan for n in big.nodes for s in n.values), "it holds a NaN"
    assert all(e.grad is not None for e in big.edges if big.node(e.src).kind != "input"), "a gradient on every edge"
    assert [f.kind for f in big.diagnose()][:1] == ["nan_forward"]


def test_groups_fold_repeats_at_every_level_and_cut_flat_runs(big):
    h = build_hierarchy(big, big.forward_order())
    folds = [g for g in h.groups if g.kind == "fold"]
    assert [(g.path, g.repeat) for g in folds[:1]] == [("stages.0", 6)], "six equal stages fold as one"
    inner = [g for g in folds if g.path.startswith("stages.0.blocks.")]
    blocks = {n.module.split(".")[3] for n in big.nodes if n.module.startswith("stages.0.blocks.")}
    assert inner and inner[0].repeat == len(blocks) > 100, "and inside a stage, its equal blocks fold too"
    children: dict[int, int] = {}
    for g in h.node_group:
        children[g] = children.get(g, 0) + 1
    for grp in h.groups:
        if grp.parent >= 0:
            children[grp.parent] = children.get(grp.parent, 0) + 1
    assert max(children.values()) <= RUN_MAX, "no group lays out more than RUN_MAX items at once"


def test_flat_trace_is_cut_into_runs():
    t = big_trace(3_000, stages=1)
    # the same trace without modules: 3,000 loose nodes at the top level
    from dataclasses import replace

    from gradtrace.steptrace import Trace

    flat = Trace(tuple(replace(n, module="", scope="") for n in t.nodes), t.edges, t.loss)
    h = build_hierarchy(flat, flat.forward_order())
    runs = [g for g in h.groups if g.kind == "run"]
    assert runs and all(g.parent == 0 for g in runs[:1])
    top = sum(1 for g in h.node_group if g == 0) + sum(1 for g in h.groups if g.parent == 0)
    assert top <= RUN_MAX


def test_file_size_is_linear_in_nodes():
    sizes = {}
    for n in (3_000, 12_000):
        t = big_trace(n)
        sizes[len(t.nodes)] = len(to_html(t).encode("utf-8"))
    (n1, b1), (n2, b2) = sorted(sizes.items())
    assert abs(b2 / n2 - b1 / n1) / (b1 / n1) < 0.15, sizes


def test_page_data_names_every_node_once(big):
    d = page_data(big, RenderOptions())
    assert len(d["nodes"]) == len(big.nodes) and len(d["nodeGroup"]) == len(big.nodes)
    assert [d["nodes"][i]["k"] for i in d["backward"]] == big.backward_order()
    assert json.dumps(d, allow_nan=False)


def test_big_page_opens_with_bounded_dom_and_stays_bounded(big, big_page):
    with chromium_page() as page:
        errors, requests = open_big(page, big_page)
        assert errors == [] and requests == [big_page.as_uri()], (errors, requests[:3])
        assert elements(page) < DOM_BOUND
        assert page.locator("#graph .node, #graph .group").count() >= 1, "something is drawn where the page opens"
        page.click("#expandall")  # every one of the 30,000 nodes shows, fitted: painted, not built
        assert elements(page) < DOM_BOUND
        page.mouse.move(300, 400)
        for _ in range(12):
            page.mouse.wheel(0, -600)
        page.wait_for_timeout(200)
        assert elements(page) < DOM_BOUND and page.locator("#graph .node").count() >= 1, "zoomed in: the boxes in view are elements"
        assert errors == []


def test_search_reveals_a_node_in_a_closed_group(big, big_page):
    (key,) = big.find("div", module="stages.2.blocks.7.attn")
    with chromium_page() as page:
        errors, _ = open_big(page, big_page)
        assert page.locator(f'#graph .node[data-key="{key}"]').count() == 0
        page.fill("#search", "stages.2.blocks.7.attn")
        assert page.text_content("#matchinfo").endswith("found · Enter: next")
        page.click("#fit")
        badges = page.eval_on_selector_all("#graph .group.match .badge", "els => els.map(e => e.textContent)")
        assert any(re.fullmatch(r"\d+ match(es)? inside", b) for b in badges), "a closed group holding matches says so"
        page.focus("#search")
        hits = [big.node(k) for k in big.forward_order() if (big.node(k).scope or "").startswith("stages.2.blocks.7.attn")]
        for _ in range(len(hits)):
            page.keyboard.press("Enter")
            if page.text_content("#panel h2") == "div":
                break
        node = page.locator(f'#graph .node[data-key="{key}"]')
        assert node.count() == 1 and "match" in node.get_attribute("class") and "selected" in node.get_attribute("class")
        crumbs = page.text_content("#crumbs")
        assert "blocks.7" in crumbs or "7" in crumbs
        assert errors == []


def test_findings_panel_jumps_to_the_nan(big, big_page):
    nan = next(f for f in big.diagnose() if f.kind == "nan_forward")
    with chromium_page() as page:
        errors, _ = open_big(page, big_page)
        page.click("#findings li.sev-alarm")
        node = page.locator(f'#graph .node[data-key="{nan.node}"]')
        assert node.count() == 1 and "selected" in node.get_attribute("class")
        assert page.text_content("#panel h2") == big.node(nan.node).label
        assert "nan_forward" in page.text_content("#panel")
        assert errors == []


def test_replay_runs_across_closed_groups(big, big_page):
    with chromium_page() as page:
        errors, _ = open_big(page, big_page)
        groups = 0
        for _ in range(40):
            page.click("#next")
            if page.locator("#graph .group.current").count():
                groups += 1
                text = page.text_content("#stepinfo")
                first, last = map(int, re.findall(r"#(\d+)", text))
                assert last > first, "a closed group takes all its backprop steps as one"
                if page.locator("#graph .edge-label.flow.in").count():
                    break
        assert groups >= 1
        labels = page.eval_on_selector_all("#graph .edge-label.flow", "els => els.map(e => e.textContent)")
        assert labels and all(t.startswith(("grad", "‖grad‖", "Σ", "out:")) for t in labels), labels
        assert elements(page) < DOM_BOUND
        assert errors == []
