"""Trace.diagnose() on models whose answer is known (torch computes the truth), and `gradtrace check` exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import gradtrace
from gradtrace.cli import main
from gradtrace.diagnose import SEVERITY, Finding
from gradtrace.render.style import ALARM, MASKED_INF

from .corpus.cases import TutorialCNN
from .diagnose_models import DeadReLU, Healthy, LogOfNegative, SqrtAtZero, deep_sigmoid, huge_init

SCRIPTS = Path(__file__).parent / "scripts"


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


def faults(findings: list[Finding]) -> list[Finding]:
    """Alarms and warnings: what a healthy model must not have."""
    return [f for f in findings if f.severity != "note"]


# -- alarms: NaN and inf, where they start ---------------------------------------------------------


def test_nan_origin_is_the_log_not_what_follows():
    t = gradtrace.trace(LogOfNegative(), torch.randn(8, 4))
    findings = t.diagnose()
    nan = [f for f in findings if f.kind == "nan_forward"]
    assert len(nan) == 1, findings
    node = t.node(nan[0].node)
    assert node.label == "log" and node.module == "encoder.stem" and nan[0].module == "encoder.stem"
    assert nan[0].severity == "alarm" and "log" in nan[0].hint
    assert "'log' in module 'encoder.stem'" in nan[0].message
    assert nan[0].numbers["count"] == 32
    downstream = set(nx.descendants(t.graph, nan[0].node))
    assert not any(f.node in downstream for f in findings if f.alarm)
    assert findings[0].kind == "nan_forward", "NaN origins come first"
    dot = t.to_dot().source
    assert "NaN starts here" in dot and "⚠ alarm nan_forward" in dot


def test_inf_born_in_backward():
    t = gradtrace.trace(SqrtAtZero(), torch.randn(4, 3))
    assert all(s is None or s.finite for n in t.nodes for s in n.values), "the forward is finite"
    findings = [f for f in t.diagnose() if f.alarm]
    assert kinds(findings) == ["inf_backward"], findings
    assert t.node(findings[0].node).label == "sqrt"


def test_nan_in_the_input_batch_is_an_alarm_naming_the_input():
    net, x, y = Healthy(), torch.randn(16, 8), torch.randint(0, 3, (16,))
    x[3, 5] = float("nan")
    x[7, 1] = float("nan")
    t = gradtrace.trace(net, x, loss=lambda out: F.nll_loss(out, y))
    assert not torch.isfinite(F.nll_loss(net(x), y)), "torch: the loss is NaN"
    alarms = [f for f in t.diagnose() if f.alarm]
    assert kinds(alarms) == ["nan_data"], alarms
    assert t.node(alarms[0].node).kind == "input"
    assert alarms[0].numbers["nan"] == int(torch.isnan(x).sum())


def test_inf_in_the_targets_is_an_alarm_at_the_loss_naming_them():
    net, x, y = Healthy(), torch.randn(16, 8), torch.randn(16, 3)
    y[2, 1] = float("inf")
    t = gradtrace.trace(net, x, loss=lambda out: F.mse_loss(out, y))
    alarms = [f for f in t.diagnose() if f.alarm]
    assert alarms, "a non-finite loss is never 'no findings'"
    assert t.node(alarms[0].node).label == "mse_loss"
    assert "'y' [16, 3], which holds 1 inf" in alarms[0].message, "the target is named"
    assert "target" in alarms[0].hint
    assert any("'y'" in note for note in t.notes)


def test_nan_made_from_infinities_says_so():
    class InfThenLogSoftmax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x).masked_fill(torch.arange(6) < 3, float("inf"))  # +inf: not a mask softmax can absorb
            return torch.log_softmax(h, dim=1).sum()

    x = torch.randn(5, 4)
    t = gradtrace.trace(InfThenLogSoftmax(), x)
    found = {f.kind: f for f in t.diagnose()}
    assert "masked_inf" not in found
    inf, nan = found["inf_forward"], found["nan_forward"]
    assert t.node(inf.node).label == "masked_fill" and t.node(nan.node).label == "log_softmax"
    assert "its inputs are finite" not in nan.message
    assert f"{5 * 3} infinities" in nan.message


def test_intended_minus_inf_mask_is_a_quiet_note():
    from .models import Block

    t = gradtrace.trace(Block(), torch.randn(2, 5, 16))
    findings = t.diagnose()
    assert faults(findings) == []
    (mask,) = [f for f in findings if f.kind == "masked_inf"]
    assert mask.severity == "note" and t.node(mask.node).label == "masked_fill"
    dot = t.to_dot().source
    assert MASKED_INF in dot and ALARM not in dot.split("legend")[0], "the mask is drawn quietly, not alarm-red"
    assert "ⓘ" in dot


# -- warnings ----------------------------------------------------------------------------------------


def test_vanishing_in_deep_sigmoid_names_the_first_layers():
    net = deep_sigmoid(20)
    t = gradtrace.trace(net, torch.randn(16, 16), loss=lambda out: out.pow(2).mean())
    vanishing = [f for f in t.diagnose() if f.kind == "vanishing"]
    named = {t.node(k).label for f in vanishing for k in (f.node, *f.nodes)}
    assert "0.weight" in named and "0.bias" in named
    assert not any(label.startswith("38.") for label in named), "the last layer is healthy"
    assert "exploding" not in kinds(t.diagnose()), "layers near the loss are the healthy reference, not outliers"
    assert all(f.severity == "warning" and "residual" in f.hint for f in vanishing)


def test_exploding_with_huge_init():
    t = gradtrace.trace(huge_init(), torch.randn(8, 32), loss=lambda out: out.pow(2).mean())
    exploding = [f for f in t.diagnose() if f.kind == "exploding"]
    assert exploding, t.diagnose()
    assert "vanishing" not in kinds(t.diagnose())
    assert "0.0.bias" in {t.node(k).label for f in exploding for k in (f.node, *f.nodes)}


def test_one_scaled_layer_is_named_not_its_echoes():
    net = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(5)], nn.Linear(16, 4))
    with torch.no_grad():
        net[2][0].weight.mul_(1e4)
    t = gradtrace.trace(net, torch.randn(8, 16), loss=lambda out: F.cross_entropy(out, torch.randint(0, 4, (8,))))
    found = faults(t.diagnose())
    assert kinds(found) == ["exploding"], found
    assert found[0].module == "2.0" and t.node(found[0].node).label == "addmm"
    assert found[0].numbers["forward_gain"] > 1e3 and found[0].numbers["backward_gain"] > 1e3


def test_dead_relu():
    t = gradtrace.trace(DeadReLU(), torch.randn(8, 8))
    found = faults(t.diagnose())
    assert kinds(found) == ["dead"] and t.node(found[0].node).label == "relu"


def test_round_without_straight_through_stops_the_gradient():
    fc1, fc2 = nn.Linear(8, 8), nn.Linear(8, 2)
    x = torch.randn(4, 8)
    t = gradtrace.trace(lambda x: fc2(torch.round(fc1(x))).sum(), x)
    fc2(torch.round(fc1(x))).sum().backward()
    assert fc1.weight.grad is not None and fc1.weight.grad.abs().max() == 0, "torch: fc1 learns nothing"
    found = faults(t.diagnose())
    assert kinds(found) == ["zero_grad"] and t.node(found[0].node).label == "round"
    assert "straight-through" in found[0].hint


# -- what used to be false alarms ----------------------------------------------------------------------


def test_a_parameter_with_an_exactly_zero_gradient_does_not_crash(tmp_path):
    # c(a(x) + 0.0 * b(x)): b's gradient is exactly zero while a's and c's are not. This divided by zero.
    a, b, c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)
    model = nn.ModuleDict({"a": a, "b": b, "c": c})
    x = torch.randn(3, 4)
    with gradtrace.capture(model) as cap:
        c(a(x) + 0.0 * b(x)).sum().backward()
    assert b.weight.grad is not None and b.weight.grad.abs().max() == 0, "torch: b's gradient is exactly zero"
    findings = cap.trace.diagnose()
    assert faults(findings) == []
    (note,) = [f for f in findings if f.kind == "structural_zero"]
    assert cap.trace.node(note.node).label == "mul"
    assert {cap.trace.node(k).label for k in (note.node, *note.nodes)} >= {"b.weight", "b.bias"} or "b.weight" in note.message
    cap.trace.render(tmp_path / "step.svg")
    cap.trace.render(tmp_path / "step.html")


@pytest.mark.parametrize("batch", [1, 64])
def test_tutorial_cnn_is_healthy_at_any_batch_size(batch):
    torch.manual_seed(0)
    net = TutorialCNN()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for reduction in ("mean", "sum"):
        t = gradtrace.trace(net, x, loss=lambda out: F.cross_entropy(out, y, reduction=reduction))
        assert faults(t.diagnose()) == [], (batch, reduction)


def test_bias_before_batchnorm_is_a_note_not_vanishing():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.randn(4, 3, 12, 12), torch.randint(0, 3, (4,))
    F.cross_entropy(net(x), y).backward()
    bias_grad = net[0].bias.grad
    assert bias_grad is not None and bias_grad.norm() < 1e-5 * net[0].weight.grad.norm(), "torch: cancelled by BatchNorm"
    t = gradtrace.trace(net, x, loss=lambda out: F.cross_entropy(out, y))
    findings = t.diagnose()
    assert faults(findings) == []
    (note,) = [f for f in findings if f.kind == "structural_zero"]  # one grouped note, not one per conv
    named = {t.node(k).label for k in (note.node, *note.nodes)}
    assert named == {"0.bias", "3.bias", "6.bias"}


def test_attention_key_bias_is_a_note():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 2, batch_first=True)
    head = nn.Linear(16, 1)
    model = nn.ModuleDict({"attn": attn, "head": head})
    x = torch.randn(2, 6, 16)
    with gradtrace.capture(model) as cap:
        head(attn(x, x, x, need_weights=False)[0]).pow(2).mean().backward()
    t = cap.trace
    findings = t.diagnose()
    assert faults(findings) == [], findings


def test_softmax_over_thousands_of_positions_is_no_vanishing_layer():
    class Pool(nn.Module):
        """Attention pooling over 8,192 positions: each weight is about 1/8192, by design."""

        def __init__(self) -> None:
            super().__init__()
            self.score, self.out = nn.Linear(16, 1), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = torch.softmax(self.score(x).squeeze(-1), dim=1)
            return self.out((w.unsqueeze(-1) * x).sum(1))

    torch.manual_seed(0)
    t = gradtrace.trace(Pool(), torch.randn(2, 8192, 16), loss=lambda out: F.cross_entropy(out, torch.tensor([0, 2])))
    softmax = t.node(t.find("softmax")[0])
    assert softmax.value is not None and softmax.value.rms < 1e-3, "the softmax does divide its signal by thousands"
    assert faults(t.diagnose()) == []


def test_a_big_embedding_table_seen_through_two_tokens_is_no_vanishing():
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.l1, self.l2, self.out = nn.Embedding(400_000, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 5)

        def forward(self, i: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.l2(torch.tanh(self.l1(self.emb(i))))))

    torch.manual_seed(0)
    lm, ids, y = LM(), torch.tensor([[7, 123456]]), torch.tensor([1, 3])
    F.cross_entropy(lm(ids).view(-1, 5), y).backward()
    rows = lm.emb.weight.grad.abs().sum(1).nonzero().flatten().tolist()  # type: ignore[union-attr]
    assert rows == [7, 123456], "torch: only the two rows seen get a gradient"
    t = gradtrace.trace(lm, ids, loss=lambda out: F.cross_entropy(out.view(-1, 5), y))
    assert faults(t.diagnose()) == []


def test_a_few_relu_units_all_negative_at_batch_1_are_not_dead():
    torch.manual_seed(0)
    squeeze = nn.Linear(16, 8)
    with torch.no_grad():
        squeeze.bias.fill_(-5.0)  # all 8 units negative for this one sample, as happens by chance
    net = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), squeeze, nn.ReLU(), nn.Linear(8, 16))
    x = torch.randn(1, 16)
    assert (torch.relu(squeeze(torch.tanh(net[0](x)))) == 0).all(), "torch: the 8 units are all zero"
    t = gradtrace.trace(net, x, loss=lambda out: out.pow(2).mean())
    assert "dead" not in kinds(t.diagnose())


# -- update size -----------------------------------------------------------------------------------------


def test_course_example_update_is_no_warning():
    point = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = torch.optim.SGD([point], lr=0.2)
    with gradtrace.capture() as cap:
        (point[0] ** 2 + 2 * point[1] ** 2).backward()
        opt.step()
    assert cap.trace.diagnose() == []


def test_huge_learning_rate_is_one_grouped_warning_naming_the_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)], nn.Linear(8, 3))
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=50.0)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with gradtrace.capture(net) as cap:
        F.cross_entropy(net(x), y).backward()
        opt.step()
    ratios = {k: float((p.detach() - before[k]).norm() / before[k].norm()) for k, p in net.named_parameters()}
    found = [f for f in cap.trace.diagnose() if f.kind == "update_ratio"]
    assert len(found) == 1, found
    worst = max(ratios, key=ratios.get)  # type: ignore[arg-type]
    assert cap.trace.node(found[0].node).label == worst and f"'{worst}'" in found[0].message
    assert found[0].numbers["update_ratio"] == pytest.approx(ratios[worst], rel=1e-4)
    over = {k for k, r in ratios.items() if r > 3}
    assert {cap.trace.node(k).label for k in (found[0].node, *found[0].nodes)} == over
    assert "learning rate" in found[0].hint


def test_every_finding_has_a_known_severity():
    for f in gradtrace.trace(LogOfNegative(), torch.randn(8, 4)).diagnose():
        assert f.severity == SEVERITY[f.kind]
        assert set(f.to_dict()) >= {"kind", "severity", "node", "module", "message", "hint", "numbers"}


def test_source_is_named_when_recorded():
    from dataclasses import replace

    t = gradtrace.trace(LogOfNegative(), torch.randn(8, 4))
    key = next(f.node for f in t.diagnose() if f.kind == "nan_forward")
    nodes = tuple(replace(n, source="model.py:57 in forward") if n.key == key else n for n in t.nodes)
    t2 = gradtrace.Trace(nodes, t.edges, t.loss, t.modules, t.optimizer, t.notes)
    f = next(f for f in t2.diagnose() if f.kind == "nan_forward")
    assert "(model.py:57 in forward)" in f.message


# -- gradtrace check ---------------------------------------------------------------------------------------


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gradtrace", "check", *args], capture_output=True, text=True, timeout=120)


def test_check_exit_statuses(tmp_path):
    nan_script = tmp_path / "nan_train.py"
    nan_script.write_text(
        "import torch\nw = torch.tensor([1.0, -2.0], requires_grad=True)\n"
        "loss = torch.log(w).sum()\nloss.backward()\n"
    )
    proc = _check(str(nan_script))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[0].split()[:4] == ["severity", "kind", "node", "module"]
    assert "nan_forward" in proc.stdout and "log" in proc.stdout and "try:" in proc.stdout
    proc = _check(str(nan_script), "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["exit_status"] == 1
    assert data["findings"][0]["kind"] == "nan_forward" and data["findings"][0]["label"] == "log"
    assert data["findings"][0]["severity"] == "alarm"

    data_nan = tmp_path / "data_nan.py"
    data_nan.write_text(
        "import torch\nnet = torch.nn.Linear(3, 1)\nx = torch.randn(4, 3)\nx[1, 1] = float('nan')\n"
        "loss = net(x).pow(2).mean()\nloss.backward()\n"
    )
    proc = _check(str(data_nan))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no alarms" not in proc.stdout and "nan_data" in proc.stdout

    target_inf = tmp_path / "target_inf.py"
    target_inf.write_text(
        "import torch\nnet = torch.nn.Linear(3, 2)\ntarget = torch.zeros(4, 2)\ntarget[0, 1] = float('inf')\n"
        "loss = torch.nn.functional.mse_loss(net(torch.randn(4, 3)), target)\nloss.backward()\n"
    )
    proc = _check(str(target_inf))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "'target' [4, 2], which holds 1 inf" in proc.stdout

    lr_script = tmp_path / "big_lr.py"
    lr_script.write_text(
        "import torch\ntorch.manual_seed(0)\nnet = torch.nn.Linear(8, 3)\nopt = torch.optim.SGD(net.parameters(), lr=100.0)\n"
        "loss = torch.nn.functional.cross_entropy(net(torch.randn(16, 8)), torch.randint(0, 3, (16,)))\nloss.backward()\nopt.step()\n"
    )
    proc = _check(str(lr_script))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "update_ratio" in proc.stdout and "warning" in proc.stdout

    proc = _check(str(SCRIPTS / "course_loop.py"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _check(str(tmp_path / "missing.py"))
    assert proc.returncode == 2
    proc = _check(str(nan_script), "--step", "0")
    assert proc.returncode == 2


def test_check_shows_notes_apart_and_exits_0(tmp_path):
    script = tmp_path / "bn.py"
    script.write_text(
        "import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
        "net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))\n"
        "loss = net(torch.randn(4, 3, 8, 8)).pow(2).mean()\nloss.backward()\n"
    )
    proc = _check(str(script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no alarms or warnings" in proc.stdout
    assert "notes (facts, not faults):" in proc.stdout and "structural_zero" in proc.stdout


def test_check_internal_error_is_not_exit_1(monkeypatch):
    def broken(self):  # a bug inside gradtrace while diagnosing
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(gradtrace.Trace, "diagnose", broken)
    result = CliRunner().invoke(main, ["check", str(SCRIPTS / "course_loop.py")])
    assert result.exit_code == 70, result.output
    assert "internal error" in result.output and "ZeroDivisionError" in result.output


def test_check_help_documents_exit_statuses():
    result = CliRunner().invoke(main, ["check", "--help"])
    assert result.exit_code == 0
    for line in ("0  healthy", "1  the step's numbers are broken", "2  usage error", "3  warnings only", "5  there was no step to check",
                 "70 internal error"):
        assert line in result.output


def test_check_without_a_step_is_not_exit_1(tmp_path):
    """A script that fails or ends before its step has nothing to check: exit 5, never "NaN found" (1)."""
    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('data file missing')\n")
    result = CliRunner().invoke(main, ["check", str(raises)])
    assert result.exit_code == 5, result.output
    assert "data file missing" in result.output
    result = CliRunner().invoke(main, ["check", str(SCRIPTS / "no_backward.py")])
    assert result.exit_code == 5, result.output
    assert "backward() call" in result.output


def test_check_output_cannot_drive_the_terminal(tmp_path):
    """Module names come from user code: check prints them with escape sequences spelled out."""
    script = tmp_path / "ansi.py"
    script.write_text(
        "import torch\nfrom torch import nn\n"
        "net = nn.Sequential()\nnet.add_module('x\\x1b[2J\\x1b]0;owned\\x07', nn.Linear(3, 1))\n"
        "with torch.no_grad():\n    net[0].weight[0, 0] = float('nan')\n"
        "net(torch.randn(4, 3)).sum().backward()\n"
    )
    result = CliRunner().invoke(main, ["check", str(script)])
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "x\\x1b[2J" in result.output, result.output


# -- a constant applied to the loss is no layer gain; an infinity absorbed before any parameter is no alarm ----


def _mlp_and_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    return net, torch.randn(16, 8) * 100, torch.randn(16, 1)


def _param_grads(t: gradtrace.Trace) -> dict[str, float]:
    return {n.label: n.grad.norm for n in t.nodes if n.kind == "param"}


_AMP_SCRIPT = """
import torch, torch.nn as nn
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)); opt = torch.optim.SGD(net.parameters(), lr=0.1)
scaler = torch.amp.GradScaler('cpu', init_scale=1024.)
x = torch.randn(16, 8) * 100; y = torch.randn(16, 1)
for i in range(2):
    opt.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = nn.functional.mse_loss(net(x).float(), y)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    nn.utils.clip_grad_norm_(net.parameters(), 0.5)
    scaler.step(opt); scaler.update()
"""

_SQRT_RELU_SCRIPT = """
import torch, torch.nn as nn
torch.manual_seed(0)
w = nn.Parameter(torch.randn(4, 3)); x = torch.randn(8, 4); x[0] = 0
torch.sqrt(torch.relu(x @ w)).sum().backward()
"""


def test_amp_grad_scaler_is_a_note_not_a_gain(tmp_path):
    net, x, y = _mlp_and_data()
    # The oracle: torch's gradient of the unscaled loss, computed apart.
    F.mse_loss(net(x), y).backward()
    unscaled = {name: float(p.grad.norm()) for name, p in net.named_parameters()}
    net.zero_grad()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with gradtrace.capture(net) as cap:
        opt.zero_grad()
        scaler.scale(F.mse_loss(net(x), y)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
    t = cap.trace
    findings = t.diagnose()
    assert [f for f in findings if f.severity != "note"] == [], findings
    (note,) = [f for f in findings if f.kind == "loss_scale"]
    assert note.numbers["factor"] == pytest.approx(1024) and "AMP loss scaling" in note.message and "unscaled" in note.message
    assert t.node(note.node).label == "mul" and note.node == t.loss
    shown = _param_grads(t)
    for name, norm in unscaled.items():
        assert shown[name] == pytest.approx(1024 * norm, rel=1e-4), name  # the gradients shown are the scaled ones
    (tmp_path / "amp.py").write_text(_AMP_SCRIPT)
    result = CliRunner().invoke(main, ["check", str(tmp_path / "amp.py")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("scale", [lambda l: l * 1e4, lambda l: l / 1e4, lambda l: 1e4 * (l / 4) + 0.0])
def test_a_constant_applied_to_the_loss_is_not_a_layer_gain(scale):
    net, x, y = _mlp_and_data()
    t = gradtrace.trace(net, x, loss=lambda out: scale(F.mse_loss(out, y)))
    findings = t.diagnose()
    assert [f for f in findings if f.severity != "note"] == [], findings
    (note,) = [f for f in findings if f.kind == "loss_scale"]
    factor = scale(torch.tensor(1.0)).item()
    assert note.numbers["factor"] == pytest.approx(factor, rel=1e-4)
    net.zero_grad()
    scale(F.mse_loss(net(x), y)).backward()
    assert _param_grads(t)["0.weight"] == pytest.approx(float(net[0].weight.grad.norm()), rel=1e-4)


def test_averaging_over_accumulation_steps_says_nothing():
    net, x, y = _mlp_and_data()
    t = gradtrace.trace(net, x, loss=lambda out: F.mse_loss(out, y) / 4)
    assert t.diagnose() == []


def test_a_scaled_layer_inside_the_model_is_still_a_gain():
    net, x, y = _mlp_and_data()
    t = gradtrace.trace(lambda v: net(v) * 1e4, x / 100, loss=lambda out: F.mse_loss(out, y))
    assert "exploding" in kinds(t.diagnose())


class _SqrtOfRelu(nn.Module):
    """sqrt(relu(x @ w)) with a zero input row: sqrt's derivative at 0 is inf, and ReLU's backward at 0 zeroes it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.relu(x @ self.w)).sum()


def test_inf_gradient_absorbed_before_any_parameter_is_a_warning(tmp_path):
    torch.manual_seed(0)
    model, x = _SqrtOfRelu(), torch.randn(8, 4)
    x[0] = 0
    model(x).backward()
    assert torch.isfinite(model.w.grad).all(), "torch: the parameter's gradient is finite"
    oracle = float(model.w.grad.norm())
    model.w.grad = None
    t = gradtrace.trace(model, x)
    findings = t.diagnose()
    assert not any(f.alarm for f in findings), findings
    (f,) = [f for f in findings if f.severity == "warning"]
    assert f.kind == "absorbed_backward" and t.node(f.node).label == "sqrt" and "'relu' absorbed it" in f.message
    assert _param_grads(t)["w"] == pytest.approx(oracle, rel=1e-5)
    (tmp_path / "sqrt_relu.py").write_text(_SQRT_RELU_SCRIPT)
    result = CliRunner().invoke(main, ["check", str(tmp_path / "sqrt_relu.py")])
    assert result.exit_code == 3, result.output


def test_inf_gradient_that_reaches_a_parameter_stays_an_alarm():
    torch.manual_seed(0)
    model, x = _SqrtOfRelu(), torch.randn(8, 4)
    x[0] = 0
    # Without the ReLU, sqrt(0)'s infinite derivative reaches w (torch: w.grad holds NaN/inf).
    t = gradtrace.trace(lambda v: torch.sqrt((v @ model.w).abs()).sum(), x)
    torch.sqrt((x @ model.w).abs()).sum().backward()
    assert not torch.isfinite(model.w.grad).all()
    assert any(f.alarm and f.kind in ("inf_backward", "nan_backward") for f in t.diagnose()), t.diagnose()


def test_a_weighted_term_of_the_loss_scales_no_other_gradient():
    net, x, y = _mlp_and_data()
    t = gradtrace.trace(net, x, loss=lambda out: F.mse_loss(out, y) + 1e4 * net[0].weight.pow(2).sum())
    assert [f for f in t.diagnose() if f.kind == "loss_scale"] == [], "only the regulariser's gradient is ×1e4"
