"""Where each op came from, and what else it read (its args), against the code that made it."""

from __future__ import annotations

import inspect
import os

import torch
import torch.nn.functional as F
from torch import nn

import gradtrace


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # LINE_FC1
        return F.log_softmax(h.relu(), dim=1)  # LINE_OUT


def _line(fn, marker: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, text in enumerate(lines) if marker in text)


def test_source_is_the_users_line():
    net = Net()
    t = gradtrace.trace(net, torch.randn(2, 4), loss=lambda out: out.sum())  # LINE_LOSS
    here = os.path.basename(__file__)
    by_label = {n.label: n for n in t.nodes if n.kind == "op"}
    fc1, out = _line(Net.forward, "LINE_FC1"), _line(Net.forward, "LINE_OUT")
    assert by_label["addmm"].source == f"{here}:{fc1} in forward"
    assert by_label["t"].source == f"{here}:{fc1} in forward"
    assert by_label["relu"].source == f"{here}:{out} in forward"
    assert by_label["log_softmax"].source == f"{here}:{out} in forward"
    assert by_label["sum"].source == f"{here}:{_line(test_source_is_the_users_line, 'LINE_LOSS')} in <lambda>"
    assert all(n.source is None for n in t.nodes if n.kind != "op")
    assert t.graph.nodes[by_label["addmm"].key]["source"] == by_label["addmm"].source


def test_source_of_a_script():
    from gradtrace.script import run_script

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "course_cnn.py")
    t = run_script(script, step=2)
    with open(script) as f:
        lines = f.read().splitlines()
    for n in t.nodes:
        if n.kind != "op":
            continue
        name, _, rest = n.source.partition(":")
        assert name == "course_cnn.py", n.source
        line = int(rest.split(" ")[0])
        assert lines[line - 1].strip(), n.source  # a real line of the script
    loss = t.node(t.loss)
    assert "criterion(" in lines[int(loss.source.split(":")[1].split(" ")[0]) - 1]


def test_args_show_indices_constants_and_plain_operands():
    point = torch.tensor([300.0, -200.0], requires_grad=True)
    batch = torch.randn(32, 784)
    small = torch.tensor([1.0, 2.0])
    w = torch.randn(784, 2, requires_grad=True)

    def f(p):
        x, y = p[0], p[1]
        z = (batch @ w).sum(0) * small  # a big plain tensor and a small one
        return x * x + 2 * y * y + z.sum() + p[1:].sum() + p[torch.tensor([0])].sum()

    t = gradtrace.trace(f, point)
    args = [(n.label, n.args) for n in sorted(t.nodes, key=lambda n: n.forward_step or 0) if n.kind == "op"]
    assert ("select", "dim=0, index=0") in args and ("select", "dim=0, index=1") in args
    assert ("mul", "other=2") in args  # the 2 of 2y
    assert ("mm", "self=tensor (32, 784)") in args
    assert ("mul", "other=[1.0, 2.0]") in args
    assert ("slice", "start=1, end=9223372036854775807") in args or any(l == "slice" and "start=1" in a for l, a in args)
    assert any(l == "index" and a == "indices=[[0]]" for l, a in args), args
    assert dict(args)["add"] == ""  # two edges, nothing else


def test_installed_model_libraries_count_as_the_users_code():
    """A model from an installed package (site-packages, beside torch) is where its ops were written."""
    from gradtrace.recorder import provenance

    site = os.path.dirname(os.path.dirname(torch.__file__))  # .../site-packages
    code = compile("pass", os.path.join(site, "transformers", "models", "gpt2", "modeling_gpt2.py"), "exec")
    assert not provenance._is_library(code)
    assert provenance._is_library(compile("pass", torch.nn.functional.__file__, "exec"))
    assert provenance._is_library(compile("pass", os.__file__, "exec"))  # the standard library


def test_args_of_conv_and_losses_say_what_matters():
    conv = torch.nn.Conv2d(1, 2, 3, stride=2)
    t = gradtrace.trace(conv, torch.randn(1, 1, 7, 7), loss=lambda out: F.nll_loss(out.flatten(1)[:, :2].log_softmax(1),
                                                                                  torch.tensor([1]), reduction="sum"))
    args = {n.label: n.args for n in t.nodes if n.kind == "op"}
    assert args["convolution"] == "stride=[2, 2]"
    assert args["nll_loss"] == "target=[1], reduction=sum"  # the target is a plain operand here
    assert args["log_softmax"] == "dim=1"
