"""Docs and examples stay current: every example runs, every embedded SVG is a fresh render, the site builds."""

from __future__ import annotations

import os
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


def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs")
    assert mkdocs, "mkdocs is installed by the test extras"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "--max-nodes" in cli and "gradtrace check" in cli, "the CLI reference is generated from the click commands"
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "Run one forward and backward" in api, "the API reference comes from the docstrings"
