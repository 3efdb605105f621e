"""Trace.diagnose() on models whose answer is known, and `gradtrace check` exit statuses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gradtrace

from .diagnose_models import DeadReLU, Healthy, LogOfNegative, SqrtAtZero, deep_sigmoid, huge_init

SCRIPTS = Path(__file__).parent / "scripts"


def kinds(findings):
    return [f.kind for f in findings]


def test_nan_origin_is_the_log_not_what_follows():
    t = gradtrace.trace(LogOfNegative(), torch.randn(8, 4))
    findings = t.diagnose()
    nan = [f for f in findings if f.kind == "nan_forward"]
    assert len(nan) == 1, findings
    node = t.node(nan[0].node)
    assert node.label == "log" and node.module == "encoder.stem"
    assert "'log' in module 'encoder.stem'" in nan[0].message
    assert nan[0].numbers["count"] == 32
    downstream = set(__import__("networkx").descendants(t.graph, nan[0].node))
    assert not any(f.node in downstream for f in findings if f.alarm)
    assert findings[0].kind == "nan_forward", "NaN origins come first"
    dot = t.to_dot().source
    assert "NaN starts here" in dot and "⚠ nan_forward" in dot


def test_inf_born_in_backward():
    t = gradtrace.trace(SqrtAtZero(), torch.randn(4, 3))
    assert all(s is None or s.finite for n in t.nodes for s in n.values), "the forward is finite"
    findings = [f for f in t.diagnose() if f.alarm]
    assert kinds(findings) == ["inf_backward"], findings
    assert t.node(findings[0].node).label == "sqrt"


def test_vanishing_in_deep_sigmoid_names_the_first_layers():
    net = deep_sigmoid(20)
    t = gradtrace.trace(net, torch.randn(16, 16), loss=lambda out: out.pow(2).mean())
    vanishing = [f for f in t.diagnose() if f.kind == "vanishing"]
    named = {t.node(f.node).label for f in vanishing if t.node(f.node).kind == "param"}
    assert "0.weight" in named and "0.bias" in named
    assert not any(label.startswith("38.") for label in named), "the last layer is healthy"
    assert "exploding" not in kinds(t.diagnose()), "layers near the loss are the healthy reference, not outliers"
    trend = [f for f in vanishing if "shrinks" in f.message]
    assert trend and t.node(trend[0].node).module == "0"


def test_exploding_with_huge_init():
    t = gradtrace.trace(huge_init(), torch.randn(8, 32), loss=lambda out: out.pow(2).mean())
    exploding = [f for f in t.diagnose() if f.kind == "exploding"]
    assert exploding, t.diagnose()
    assert "vanishing" not in kinds(t.diagnose())
    assert "0.0.bias" in {t.node(f.node).label for f in exploding}
    assert any("grows" in f.message for f in exploding)


def test_dead_relu():
    t = gradtrace.trace(DeadReLU(), torch.randn(8, 8))
    dead = [f for f in t.diagnose() if f.kind == "dead"]
    assert len(dead) == 1 and t.node(dead[0].node).label == "relu"


def test_healthy_model_has_no_findings():
    net = Healthy()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with gradtrace.capture(net) as cap:
        opt.zero_grad()
        F.nll_loss(net(x), y).backward()
        opt.step()
    assert cap.trace.diagnose() == []


def test_update_ratio():
    net = Healthy()
    opt = torch.optim.SGD(net.parameters(), lr=50.0)
    with gradtrace.capture(net) as cap:
        F.nll_loss(net(torch.randn(32, 8)), torch.randint(0, 3, (32,))).backward()
        opt.step()
    found = [f for f in cap.trace.diagnose() if f.kind == "update_ratio"]
    assert found and all(f.numbers["update_ratio"] > 0.1 for f in found)


def test_masked_attention_is_no_finding():
    from .models import Block

    t = gradtrace.trace(Block(), torch.randn(2, 5, 16))
    assert [f for f in t.diagnose() if f.alarm] == []


@pytest.fixture(scope="module")
def exe():
    path = shutil.which("gradtrace")
    assert path, "the gradtrace console script is installed"
    return path


def test_check_exit_statuses(exe, tmp_path):
    nan_script = tmp_path / "nan_train.py"
    nan_script.write_text(
        "import torch\nw = torch.tensor([1.0, -2.0], requires_grad=True)\n"
        "loss = torch.log(w).sum()\nloss.backward()\n"
    )
    proc = subprocess.run([exe, "check", str(nan_script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[0].split()[:3] == ["kind", "node", "module"]
    assert "nan_forward" in proc.stdout and "log" in proc.stdout
    proc = subprocess.run([exe, "check", str(nan_script), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["findings"][0]["kind"] == "nan_forward" and data["findings"][0]["label"] == "log"

    proc = subprocess.run([exe, "check", str(SCRIPTS / "course_loop.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([exe, "check", str(tmp_path / "missing.py")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    proc = subprocess.run([exe, "check", str(nan_script), "--step", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
