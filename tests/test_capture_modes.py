"""A user's own dispatch mode sees the user's ops only, never gradtrace's bookkeeping.

Whether the user's mode is entered outside the capture or inside it, the list of ATen ops it sees
is the one it sees without gradtrace, and FlopCounterMode counts the same flops.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import gradtrace

from .leave_no_trace import assert_untouched, snapshot

torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # (torch wraps step() when the first is made)


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    before = snapshot()
    yield
    assert_untouched(before)


class Recording(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _model() -> nn.Module:
    torch.manual_seed(0)
    # big enough for every statistics path: held groups, tensors reduced at once, integer targets
    return nn.Sequential(nn.Linear(40, 300), nn.Tanh(), nn.Linear(300, 5))


def _step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def _run(where: str, mode_factory):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 40, generator=g), torch.randint(0, 5, (8,), generator=g)
    _step(model, opt, x, y)  # (momentum buffers exist: the step below is an ordinary one)
    mode = mode_factory()
    if where == "plain":
        with mode:
            _step(model, opt, x, y)
    elif where == "outside":
        with mode, gradtrace.capture(model):
            _step(model, opt, x, y)
    else:
        with gradtrace.capture(model), mode:
            _step(model, opt, x, y)
    return mode, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_a_recording_mode_sees_the_same_ops(where):
    plain, params_plain = _run("plain", Recording)
    traced, params = _run(where, Recording)
    assert traced.ops == plain.ops
    assert all(torch.equal(a, b) for a, b in zip(params, params_plain))


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_flop_counter_counts_the_same(where):
    plain, _ = _run("plain", lambda: FlopCounterMode(display=False))
    traced, _ = _run(where, lambda: FlopCounterMode(display=False))
    assert traced.get_total_flops() == plain.get_total_flops() > 0
    assert traced.get_flop_counts() == plain.get_flop_counts()


def test_trace_inside_a_users_mode():
    model, x = _model(), torch.randn(8, 40)
    plain = Recording()
    with plain:
        out = model(x).sum()
        out.backward()
    for p in model.parameters():
        p.grad = None
    traced = Recording()
    with traced:
        gradtrace.trace(model, x)
    assert traced.ops == plain.ops
