"""The teaching views (issue #14): per-edge gradients and their sums, source lines, op args,
scopes, SGD's −lr·grad and finite-part statistics, in the SVG, the text table and the replay page.

Torch is the oracle: the gradient sent back along each edge comes from calling each
autograd node's backward by hand (tests/teaching.py), never from gradtrace.
"""

from __future__ import annotations

import dataclasses
import math
import re

import networkx as nx
import pytest
import torch

import gradtrace
from gradtrace import RenderOptions
from gradtrace.records import TensorStats
from gradtrace.render import fmt
from gradtrace.render.text import to_text

from .browser import chromium_page
from .golden import masked
from .teaching import course_step, filled, pool_twice_trace
from .test_render import GOLDEN, mlp_trace

@pytest.fixture(scope="module")
def course():
    t, oracle, sgd = course_step()
    return t, oracle, sgd, filled(t, oracle, sgd)


def keys_of(t):
    """Trace keys of the course example's nodes, by role."""
    sel = sorted((n for n in t.nodes if n.label == "select"), key=lambda n: n.forward_step)
    muls = {n.value.values[0]: n.key for n in t.nodes if n.label == "mul"}
    (leaf,) = [n.key for n in t.nodes if n.kind != "op"]
    return {"x": sel[0].key, "y": sel[1].key, "xx": muls[90000.0], "2y": muls[-400.0], "2yy": muls[80000.0], "point": leaf}


def dot_edges(source: str) -> dict[tuple[str, str], str]:
    """(src, dst) -> the edge's attribute text in DOT source."""
    return {(m[1], m[2]): m[3] for m in re.finditer(r"^\s*(\w+) -> (\w+) \[(.*?)\]$", source, re.S | re.M)}


def node_line(source: str, key: str) -> str:
    return re.search(rf"^\s*{key} \[label=(.*?)\]$", source, re.S | re.M)[1]


def test_edge_gradients_match_torch(course):
    t, oracle, sgd, f = course
    assert {(e.src, e.dst) for e in f.edges} == set(oracle)
    for e in f.edges:
        want, uses = oracle[e.src, e.dst]
        assert torch.tensor(e.grad.values).reshape(want.shape).equal(want) and e.uses == uses
    # The lesson: a node's gradient is the sum of what its consumers sent back.
    p = torch.tensor([300.0, -200.0], requires_grad=True)
    (p[0] * p[0] + 2 * p[1] * p[1]).backward()
    k = keys_of(f)
    assert f.node(k["point"]).grad.values == tuple(p.grad.tolist())
    assert oracle[k["y"], k["2y"]][0] + oracle[k["y"], k["2yy"]][0] == torch.tensor(-800.0)


def test_svg_labels_each_edge_and_the_sum(course):
    *_, f = course
    k = keys_of(f)
    source = f.to_dot().source
    edges = dot_edges(source)
    assert 'label="grad -400"' in edges[k["y"], k["2y"]] and 'label="grad -400"' in edges[k["y"], k["2yy"]]
    assert 'label="grad 600 ×2 (summed)"' in edges[k["x"], k["xx"]], "x * x: one edge, two uses, their sum"
    assert 'label="grad [0, -800]"' in edges[k["point"], k["y"]]
    assert "grad = -400 + -400 = -800" in node_line(source, k["y"])
    assert "grad = [600, 0] + [0, -800] = [600, -800]" in node_line(source, k["point"])
    assert "grad sent back: -400" in edges[k["y"], k["2y"]], "the edge's tooltip says it too"
    tip = node_line(source, k["y"])
    two_y = f.node(k["2y"]).backward_step
    assert "gradient sent back along each edge:" in tip and f"to mul #{two_y}: -400" in tip


def test_big_tensor_sums_show_norms_from_torch():
    """A (2, 4) tensor read by relu and tanh: edges carry ‖grad‖, the node sums norms; all from torch."""
    from .teaching import edge_oracle, stats_of

    def model(x):
        h = x * 3
        return h.relu().sum() + h.tanh().sum()

    torch.manual_seed(0)
    x = torch.randn(2, 4, requires_grad=True)
    t = gradtrace.trace(model, x)
    x2 = x.detach().clone().requires_grad_()
    h = x2 * 3
    h.retain_grad()
    loss = h.relu().sum() + h.tanh().sum()
    oracle = {(type(a_fn).__name__, type(b_fn).__name__): v for (a, b), v in edge_oracle(loss).items()
              for a_fn in [_fn_by_id(loss, a)] for b_fn in [_fn_by_id(loss, b)]}
    loss.backward()
    names = {n.key: n.grad_fn for n in t.nodes}
    edges = tuple(dataclasses.replace(e, grad=stats_of(oracle[names[e.src], names[e.dst]][0]))
                  if (names[e.src], names[e.dst]) in oracle and names[e.src] == "MulBackward0" else e for e in t.edges)
    t = dataclasses.replace(t, edges=edges) if all(e.grad is None for e in t.edges) else t
    (mul,) = t.find("mul")
    relu, tanh = oracle["MulBackward0", "ReluBackward0"][0], oracle["MulBackward0", "TanhBackward0"][0]
    assert torch.allclose(relu + tanh, h.grad)
    want = f"grad = Σ 2 edges (‖grad‖ {fmt.num(relu.norm().item(), 3)}, {fmt.num(tanh.norm().item(), 3)}) → ‖grad‖ {fmt.num(h.grad.norm().item(), 3)}"
    source = t.to_dot().source
    assert want in node_line(source, mul)
    (relu_key,) = t.find("relu")
    assert f'label="‖grad‖ {fmt.num(relu.norm().item(), 3)}"' in dot_edges(source)[mul, relu_key]


def _fn_by_id(root, ident):
    """The autograd node with this id in root's graph."""
    stack, seen = [root.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        if id(fn) == ident:
            return fn
        seen.add(id(fn))
        stack += [n for n, _ in fn.next_functions]
    raise KeyError(ident)


def test_edge_grads_switch(course):
    *_, f = course
    k = keys_of(f)
    off = dot_edges(f.to_dot(edge_grads=False).source)
    assert "label=" not in off[k["y"], k["2y"]] and "grad sent back: -400" in off[k["y"], k["2y"]]
    assert "label=" not in dot_edges(f.to_dot(show_grads=False).source)[k["y"], k["2y"]]
    with pytest.raises(gradtrace.RenderError, match="edge_grads must be True, False or None"):
        RenderOptions(edge_grads="yes")


def big_filled_trace(n: int = 70):
    """A chain of n ops: more items than edges are labelled for by default. In a chain each node has
    one consumer, so what flowed along its out-edge is its own (captured) gradient."""

    def chain(x):
        for _ in range(n):
            x = x * 1.01
        return x.sum()

    t = gradtrace.trace(chain, torch.ones(2, requires_grad=True))
    return dataclasses.replace(t, edges=tuple(dataclasses.replace(e, grad=e.grad or t.node(e.src).grad) for e in t.edges))


def test_edge_labels_default_only_on_small_diagrams():
    t = big_filled_trace()
    assert len(t.nodes) > 60
    labels = lambda src: sum("label=\"grad" in a for a in dot_edges(src).values())  # noqa: E731
    assert labels(t.to_dot().source) == 0, "a big diagram keeps its edges clean by default"
    assert labels(t.to_dot(edge_grads=True).source) == len(t.edges)
    assert labels(t.to_dot(depth=None, max_nodes=None).source) == 0


def test_text_table_lists_each_edge_and_the_sums(course):
    t, oracle, sgd, f = course
    text = to_text(f)
    assert "gradient sent back along each edge (producer ← consumer):" in text
    assert re.search(r"#\d+ select ← #\d+ mul: -400\n.*#\d+ select ← #\d+ mul: -400\n\s+select: grad = -400 \+ -400 = -800", text)
    assert "point: grad = [600, 0] + [0, -800] = [600, -800]" in text
    assert "select ← #4 mul: 600 ×2 (summed)" in text or "600 ×2 (summed)" in text
    # −lr·grad beside the applied Δw, both checked against torch.
    assert f"Δ point: applied {fmt.summary(f.node(keys_of(f)['point']).update)}; −lr·grad [-120, 160]" in text
    assert f.node(keys_of(f)["point"]).update.values == tuple(sgd.tolist())
    assert "sent back" not in to_text(f, RenderOptions(show_grads=False))


def with_teaching_fields(f):
    """The course trace with args and source set by hand on every node (as capture sets them, but fixed
    here, so that the golden file does not follow capture's wording)."""
    k = keys_of(f)
    extra = {k["2y"]: {"args": "× 2", "source": "gradient_descent.py:18 in f"},
             k["y"]: {"args": "dim=0, index=1", "source": "gradient_descent.py:17 in f"}}
    plain = {"args": "", "source": None}
    return dataclasses.replace(f, nodes=tuple(dataclasses.replace(n, **extra.get(n.key, plain)) for n in f.nodes))


def test_args_source_and_sgd_update_in_label_tooltip_and_table(course):
    *_, f = course
    t = with_teaching_fields(f)
    k = keys_of(t)
    source = t.to_dot().source
    assert "<B>mul</B> × 2<" in node_line(source, k["2y"]) and "<B>select</B> dim=0, index=1<" in node_line(source, k["y"])
    assert "source gradient_descent.py:18 in f" in node_line(source, k["2y"])
    point = node_line(source, k["point"])
    assert "Δw applied [-120, 160]" in point and "−lr·grad [-120, 160]" in point
    text = to_text(t)
    assert text.splitlines()[0].split()[-1] == "source"
    assert re.search(r"mul × 2 .*gradient_descent\.py:18 in f", text)


def test_teaching_golden(course, regen_golden):
    """A trace whose every teaching field is set (by hand or torch's oracle): the full DOT, reviewed once."""
    source = with_teaching_fields(course[3]).to_dot().source
    path = GOLDEN / "course_step.dot"
    if regen_golden:
        path.write_text(source, encoding="utf-8")
    assert masked(source) == masked(path.read_text(encoding="utf-8")), "rerun with --regen-golden and review the diff"


def test_finite_part_beside_nan_counts():
    s = TensorStats((100,), "float32", "cpu", 100, -0.5, 2.0, 0.25, 0.5, 3.0, 3, 1)
    assert fmt.summary(s) == "NaN×3 inf×1 · finite: 0.25 ± 0.5 [-0.5, 2]"
    lines = fmt.stats_lines(s)
    assert "NaN 3  inf 1" in lines and "finite: min -0.5  max 2" in lines
    none_finite = TensorStats((4,), "float32", "cpu", 4, None, None, None, None, None, 1, 3)
    assert fmt.summary(none_finite) == "NaN×1 inf×3 · no finite element"
    clean = dataclasses.replace(s, nan=0, inf=0)
    assert fmt.summary(clean) == "0.25 ± 0.5 [-0.5, 2]" and "min -0.5  max 2" in fmt.stats_lines(clean)


def test_a_module_called_twice_is_two_clusters_and_no_cycle():
    t = pool_twice_trace()
    source = t.to_dot(depth=None, max_nodes=None).source
    assert "<B>pool</B>" in source and "<B>pool (call 2)</B>" in source
    collapsed = t.to_dot(depth=0).source
    items = nx.DiGraph(list(dot_edges(collapsed)))
    assert nx.is_directed_acyclic_graph(items), "depth 0 must not draw pool feeding and reading conv2"
    assert "<B>pool (call 2)</B> <I>MaxPool2d</I>" in collapsed


def test_live_capture_labels_the_examples_edges():
    """Once capture fills edge gradients, a captured example shows them with no hand-filling."""
    t, oracle, _ = course_step()
    assert any(e.grad is not None for e in t.edges), "capture fills edge gradients"
    k = keys_of(t)
    assert 'label="grad -400"' in dot_edges(t.to_dot().source)[k["y"], k["2y"]]
    assert "grad = -400 + -400 = -800" in to_text(t)


def test_cli_edge_grads_flag(course, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import gradtrace.cli
    import gradtrace.cli._render

    *_, f = course
    k = keys_of(f)
    big = big_filled_trace()
    script = tmp_path / "s.py"
    script.write_text("")
    for trace, flag, labelled in ((f, [], True), (f, ["--no-edge-grads"], False), (big, [], False), (big, ["--edge-grads"], True)):
        monkeypatch.setattr(gradtrace.cli._render, "_run", lambda *a, t=trace, **kw: t)
        out = tmp_path / "o.dot"
        result = CliRunner().invoke(gradtrace.cli.main, ["render", str(script), "-o", str(out), *flag])
        assert result.exit_code == 0, result.output
        edges = dot_edges(out.read_text())
        first = (k["y"], k["2y"]) if trace is f else next(iter(edges))
        assert ('label="grad' in edges[first]) is labelled, (flag, trace is f)


# -- the replay page ----------------------------------------------------------------------


def test_replay_labels_each_edge_and_shows_source_and_sum(course, tmp_path):
    *_, f = course
    t = with_teaching_fields(f)
    k = keys_of(t)
    path = t.render(tmp_path / "course.html")
    with chromium_page() as page:
        page.goto(path.as_uri())
        page.wait_for_selector("#graph .node")
        for _ in range(t.node(k["y"]).backward_step):
            page.click("#next")
        assert page.text_content("#panel h2") == "select"
        flows = page.eval_on_selector_all("#graph .edge-label.flow", "els => els.map(e => [e.dataset.dst, e.textContent])")
        assert sorted(flows) == sorted([[k["2y"], "grad -400"], [k["2yy"], "grad -400"]]), "each edge its own share, not ‖grad‖ 800"
        assert page.text_content("#panel .sum") == "grad = -400 + -400 = -800"
        assert "grad = -400 + -400 = -800" in page.text_content(f'#graph .node[data-key="{k["y"]}"]'), "the node says it too"
        assert page.text_content(f'#panel table.sent td[data-dst="{k["2y"]}"]') == "-400"
        assert page.text_content('#panel td[data-field="source"]') == "gradient_descent.py:17 in f"
        assert page.text_content('#panel td[data-field="args"]') == "dim=0, index=1"
        page.click(f'#graph .node[data-key="{k["point"]}"]')
        assert "−lr·grad (plain SGD's step)" in page.text_content("#panel")


def test_replay_without_edge_grads_does_not_claim_the_total(tmp_path):
    """Without recorded edge gradients, an edge out of a node with several consumers shows 'part of'."""
    t, _, _ = course_step()
    t = dataclasses.replace(t, edges=tuple(dataclasses.replace(e, grad=None) for e in t.edges))
    k = keys_of(t)
    path = t.render(tmp_path / "bare.html")
    with chromium_page() as page:
        page.goto(path.as_uri())
        page.wait_for_selector("#graph .node")
        for _ in range(t.node(k["y"]).backward_step):
            page.click("#next")
        texts = page.eval_on_selector_all("#graph .edge-label.flow", "els => els.map(e => e.textContent)")
        assert texts == ["part of ‖grad‖ 800"] * 2




def test_replay_panel_says_stats_are_over_the_finite_part(tmp_path):
    x = torch.tensor([1.0, -1.0, 4.0], requires_grad=True)
    t = gradtrace.trace(lambda v: v.log().sum(), x)
    (log,) = t.find("log")
    assert math.isnan(torch.tensor([1.0, -1.0, 4.0]).log()[1].item()) and t.node(log).value.nan == 1
    path = t.render(tmp_path / "nan.html")
    with chromium_page() as page:
        page.goto(path.as_uri())
        page.wait_for_selector("#graph .node")
        page.click(f'#graph .node[data-key="{log}"]')
        assert page.locator("#panel .finite-note").count() >= 1
        page.click(f'#graph .node[data-key="{t.loss}"]')
        assert page.locator("#panel .finite-note").count() == 1, "the sum's value is NaN too; its gradient is finite"
