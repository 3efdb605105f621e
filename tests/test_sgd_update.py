"""SGD's intended update (−lr·grad, with weight decay and momentum) beside the applied w_after − w_before."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace


def _data():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)), torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])


def test_plain_sgd_update_is_minus_lr_times_grad_exactly():
    net, x, y = _data()
    ref = copy.deepcopy(net)
    F.cross_entropy(ref(x), y).backward()
    lr = 0.037
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    with gradtrace.capture(net) as cap:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    params = {n.label: n for n in cap.trace.nodes if n.kind == "param"}
    for name, p in ref.named_parameters():
        node = params[name]
        expected = p.grad * -lr  # what SGD means to add, in float32, computed by torch
        assert node.sgd_update is not None
        if expected.numel() <= 16:
            assert node.sgd_update.values == tuple(expected.flatten().tolist()), name
        else:
            assert math.isclose(node.sgd_update.norm, expected.norm().item(), rel_tol=1e-6)
    bias = params["2.bias"]
    # The applied change is rounded by float32 w; the intended one is what "Δw = −lr × grad" says.
    assert bias.update is not None and bias.update.numel == bias.sgd_update.numel


@pytest.mark.parametrize("settings", [
    dict(momentum=0.9),
    dict(momentum=0.9, weight_decay=0.01, dampening=0.1),
    dict(momentum=0.8, nesterov=True, weight_decay=0.05),
    dict(weight_decay=0.1, maximize=True),
])
def test_sgd_update_with_momentum_and_weight_decay_matches_torch(settings):
    """Second step (the momentum buffer exists): compare with torch's SGD run in float64 on a copy."""
    net, x, y = _data()
    ref = copy.deepcopy(net).double()
    lr = 0.05
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr, **settings)
    opt = torch.optim.SGD(net.parameters(), lr=lr, **settings)
    before = None
    for step in range(2):
        ref_opt.zero_grad()
        F.cross_entropy(ref(x.double()), y).backward()
        if step == 1:
            before = {n: p.detach().clone() for n, p in ref.named_parameters()}
        ref_opt.step()
    with gradtrace.capture(net, step=2) as cap:
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    params = {n.label: n for n in cap.trace.nodes if n.kind == "param"}
    for name, p in ref.named_parameters():
        delta = (p.detach() - before[name]).flatten()
        got = params[name].sgd_update
        assert got is not None, name
        scale = delta.abs().max().item()
        assert got.min == pytest.approx(delta.min().item(), abs=1e-5 * scale)
        assert got.max == pytest.approx(delta.max().item(), abs=1e-5 * scale)
        assert got.mean == pytest.approx(delta.mean().item(), abs=1e-5 * scale)
        assert got.norm == pytest.approx(delta.norm().item(), rel=1e-5)


def test_other_optimizers_have_no_sgd_update():
    net, x, y = _data()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    with gradtrace.capture(net) as cap:
        F.cross_entropy(net(x), y).backward()
        opt.step()
    params = [n for n in cap.trace.nodes if n.kind == "param"]
    assert all(n.update is not None and n.sgd_update is None for n in params)
