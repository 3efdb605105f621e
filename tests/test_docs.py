"""Docs and examples stay current: every example runs, every embedded SVG is a fresh render, the site builds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .golden import masked

ROOT = Path(__file__).resolve().parent.parent

# Each example with arguments that keep its loop short.
EXAMPLES = [
    ("gradient_descent.py", ["--max-iters", "20"], "iterations : 20"),
    ("sgd_minibatch.py", ["--mode", "full", "--epochs", "2"], "epoch 2: w ="),
    ("sgd_minibatch.py", ["--mode", "sgd", "--epochs", "1"], "epoch 1: w ="),
    ("sgd_minibatch.py", ["--mode", "minibatch", "--epochs", "1"], "epoch 1: w ="),
    ("training_loop.py", ["--epochs", "1"], "epoch 1: loss"),
    ("vanishing_gradients.py", ["--net", "sigmoid", "--steps", "2"], "step 0: loss"),
    ("vanishing_gradients.py", ["--net", "residual", "--steps", "2"], "step 0: loss"),
    ("nan_hunt.py", [], "loss = nan"),
    ("nan_hunt.py", ["--fixed"], "loss = "),
    ("transformer_block.py", [], "next-token loss"),
]


@pytest.mark.parametrize("script,args,expect", EXAMPLES, ids=[f"{s} {' '.join(a)}" for s, a, _ in EXAMPLES])
def test_example_runs_with_python(script, args, expect):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_gradient_descent_converges_like_the_course():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "gradient_descent.py")], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    iterations = int(next(ln for ln in lines if ln.startswith("iterations")).split(":")[1])
    assert 30 < iterations < 200, "stops once the squared gradient norm is at most 1e-20"
    final = lines[-1]
    assert final.startswith("((") and float(final.rsplit(",", 1)[1].rstrip(")")) < 1e-19


@pytest.mark.dot
def test_committed_svgs_are_fresh_renders():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import docs_images
    finally:
        sys.path.pop(0)
    fresh = docs_images.render_all()
    # Numbers are masked: their last digits follow the CPU's float kernels (see tests/golden.py).
    stale = [name for name, data in fresh.items()
             if masked((ROOT / "docs" / "images" / name).read_text(encoding="utf-8")) != masked(data.decode("utf-8"))]
    assert not stale, f"stale docs diagrams {stale}: run python3 scripts/docs_images.py and commit the result"
    embedded = {p.name for p in (ROOT / "docs" / "images").iterdir()}
    assert embedded == set(fresh), "every committed diagram is one the script renders"
    pages = " ".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    assert all(f"images/{name}" in pages for name in fresh), "every rendered diagram is used by a page"


def test_readme_shows_a_diagram_near_the_top():
    head = (ROOT / "README.md").read_text().splitlines()[:25]
    assert any("docs/images/gradient_descent.svg" in line for line in head)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The docs site, built once with ``mkdocs build --strict``."""
    mkdocs = shutil.which("mkdocs")
    assert mkdocs, "mkdocs is installed by the test extras"
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([mkdocs, "build", "--strict", "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_docs_build_strict(site):
    cli = (site / "cli" / "index.html").read_text()
    assert "--max-nodes" in cli and "gradtrace check" in cli, "the CLI reference is generated from the click commands"
    api = (site / "api" / "index.html").read_text()
    assert "Run one forward and backward" in api, "the API reference comes from the docstrings"


def test_api_reference_names_every_object_with_its_signature(site):
    api = (site / "api" / "index.html").read_text()
    for name in ("trace", "capture", "Capture", "Trace", "TraceNode", "TraceEdge", "TensorStats", "RenderOptions"):
        assert f'id="gradtrace.{name}"' in api, f"a heading for gradtrace.{name}"
    assert re.search(r'class="doc-signature[^"]*".*?trace.*?model', api, re.S), "trace's signature is shown"
    assert "doctest" not in api, "doctest markers are for the test runner, not readers"
    assert not re.search(r":(func|class|meth|attr):", api), "Sphinx roles become links or code"
    assert '<a href="#gradtrace.trace"><code>gradtrace.trace</code></a>' in api
    assert "&gt;&gt;&gt;" in api and "<blockquote" not in api, "doctest examples are code blocks, not nested quotes"
    options = api[api.index('id="gradtrace.RenderOptions"'):api.index('id="diagnosis"')]
    assert "edge_grads: bool | None = None" in re.sub(r"<[^>]+>", "", options), "a dataclass shows its fields and defaults"
    assert "<li><code>edge_grads</code>:" in options, "the fields' descriptions are a list, not one run-on paragraph"


def pages_and_diagrams() -> list[tuple[str, list[str]]]:
    out = []
    for md in sorted((ROOT / "docs").glob("*.md")):
        prose = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)  # an example in a code block is no figure
        names = re.findall(r"\]\(images/([\w-]+)\.svg\)", prose)
        if names:
            out.append((md.stem, names))
    return out


def test_every_diagram_is_inline_with_its_tooltips(site):
    for page, names in pages_and_diagrams():
        text = (site / page / "index.html").read_text() if page != "index" else (site / "index.html").read_text()
        assert not re.search(r'<img[^>]+images/[\w-]+\.svg', text), f"{page}: an <img> SVG shows no tooltips"
        figures = re.findall(r'<figure class="gt-diagram".*?</figure>', text, re.S)
        assert len(figures) == len(names), page
        for fig in figures:
            assert "<svg class=\"gt-svg\"" in fig and "<script" not in fig.lower() and " onload" not in fig.lower()
            assert re.search(r"<a xlink:title=\"[^\"]+\"><title>", fig), "each tooltip is also a <title>, shown on hover"


def test_svg_sanitizer_strips_what_could_run_or_fetch():
    sys.path.insert(0, str(ROOT / "docs" / "_hooks"))
    try:
        from diagrams import sanitize_svg
    finally:
        sys.path.pop(0)
    hostile = ('<?xml version="1.0"?>\n<!DOCTYPE svg>\n<!-- c --><svg width="10pt" height="10pt" onload="alert(1)">'
               '<script>alert(2)</script><g id="node1"><image href="http://example.com/x.png"/>'
               '<a xlink:href="javascript:alert(3)" xlink:title="t&#10;u">x</a>'
               '<foreignObject><div>y</div></foreignObject></g></svg>')
    clean = sanitize_svg(hostile, "fig")
    assert clean.startswith("<svg ") and "alert" not in clean and "example.com" not in clean and "foreignObject" not in clean
    assert 'id="fig-node1"' in clean


def test_docs_diagrams_read_at_page_width(site):
    """In a browser, the tutorial's diagrams draw their text at a readable size and show tooltips."""
    from .browser import chromium_page

    artifacts = Path(os.environ.get("GRADTRACE_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with chromium_page(1280, 900) as page:
        page.goto((site / "tutorial" / "index.html").as_uri())
        figs = page.locator("figure.gt-diagram")
        assert figs.count() >= 6
        for i in range(figs.count()):
            # The smallest node text in each diagram, as drawn on the screen, in CSS pixels.
            size = figs.nth(i).evaluate("f => Math.min(...[...f.querySelectorAll('svg text')].map(t => t.getBoundingClientRect().height).filter(h => h > 0))")
            assert size >= 10, f"diagram {i}: text {size:.1f} px high cannot be read"
        first = figs.nth(0)
        first.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "docs-tutorial-gd.png"))
        sgd = page.locator("figure.gt-diagram", has=page.locator('svg[aria-label="Mini-batch SGD"]'))
        sgd.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "docs-tutorial-sgd.png"))
        assert "(4, 1) float32" in sgd.inner_text(), "the mini-batch's shapes are on the page as text"
        before = sgd.locator("svg").evaluate("s => s.getBoundingClientRect().width")
        sgd.locator(".gt-zoom").click()
        after = sgd.locator("svg").evaluate("s => s.getBoundingClientRect().width")
        assert after < before, "fit to width shrinks a diagram wider than the column"
        tip = first.locator("a title").first.text_content()
        assert "grad" in tip and "\n" in tip, "a node's tooltip lists its statistics"
