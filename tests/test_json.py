"""JSON: every attribute survives a round trip, and a loaded trace renders without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import gradtrace
from gradtrace import Trace

from .models import MLP


def _trace_with_everything():
    net = MLP()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(3, 8)
    with gradtrace.capture(net) as cap:
        out = net(x)
        loss = (out.sum() + torch.log(-out.mean().abs()))  # a NaN in the forward
        loss.backward()
        opt.step()
    return cap.trace


def test_round_trip_keeps_every_attribute():
    t = _trace_with_everything()
    text = t.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    back = Trace.from_json(text)
    assert back.to_json() == text
    assert [n.to_dict() for n in back.nodes] == [n.to_dict() for n in t.nodes]
    assert back.edges == t.edges and back.loss == t.loss and back.modules == t.modules
    assert back.optimizer == t.optimizer
    assert back.forward_order() == t.forward_order() and back.backward_order() == t.backward_order()
    assert back.to_dot().source == t.to_dot().source
    assert any(n.update is not None for n in back.nodes)
    assert any(v is not None and v.nan for n in back.nodes for v in n.values)


@pytest.mark.parametrize(
    "text,message",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "format"),
        ('{"format": "gradtrace-trace", "version": 99}', "version 99"),
        ('{"format": "gradtrace-trace", "version": 1, "nodes": []}', "malformed"),
    ],
)
def test_bad_json_is_refused(text, message):
    with pytest.raises(gradtrace.GradtraceError, match=message):
        Trace.from_json(text)


def test_loaded_trace_renders_without_torch(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(_trace_with_everything().to_json())
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import gradtrace
t = gradtrace.Trace.from_json(open({str(path)!r}).read())
t.render({str(tmp_path / 'out.dot')!r})
t.render({str(tmp_path / 'out.txt')!r})
print(len(t.graph), "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, torch_loaded = out.stdout.split()
    assert int(n) > 5 and torch_loaded == "False"
    assert (tmp_path / "out.dot").read_text().startswith("digraph")
