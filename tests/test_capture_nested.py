"""Backward calls that are not the user's step: a reentrant checkpoint's inner backward, autograd.grad.

torch is the oracle: the same model run plainly gives the gradients every parameter must show.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradtrace
from gradtrace.recorder.stats import stats_of

from .leave_no_trace import assert_untouched, snapshot
from .oracle import same


# torch wraps an optimizer class's step() once, when the first one is made: not gradtrace's doing.
torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    before = snapshot()
    yield
    assert_untouched(before)


class Checkpointed(nn.Module):
    """A block run under checkpoint, a parameter used both inside and outside it, and a head."""

    def __init__(self, reentrant: bool):
        super().__init__()
        self.reentrant = reentrant
        self.block = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 3))
        self.shared = nn.Parameter(torch.randn(3))
        self.head = nn.Linear(3, 1)

    def inner(self, v):
        return self.block(v) * self.shared

    def forward(self, v):
        h = checkpoint(self.inner, v * 1, use_reentrant=self.reentrant)
        return self.head(h + self.shared).sum()


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_parameters_have_torch_gradients_and_grad_is_left(reentrant):
    torch.manual_seed(0)
    model, v = Checkpointed(reentrant), torch.randn(2, 3, requires_grad=True)
    plain = copy.deepcopy(model)
    plain(v).backward()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # .grad the user had before: trace() must leave it
    before = snapshot(model)
    t = gradtrace.trace(model, v)
    assert_untouched(before, model)
    params = {n.label: n for n in t.nodes if n.kind == "param"}
    assert set(params) == {name for name, _ in model.named_parameters()}, "the block's parameters are in the trace"
    for name, p in plain.named_parameters():
        assert same(params[name].grad, stats_of(p.grad)), name
    assert t.node(t.loss).value.values == (plain(v).item(),)
    if reentrant:
        assert any("use_reentrant=True" in n for n in t.notes), "the undrawn inner ops are said"


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_inner_backward_is_no_step(reentrant):
    torch.manual_seed(0)
    model, v = Checkpointed(reentrant), torch.randn(2, 3, requires_grad=True)
    plain = copy.deepcopy(model)
    opt, opt_plain = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(plain.parameters(), lr=0.1)
    for _ in range(2):
        opt_plain.zero_grad()
        loss_plain = plain(v)
        loss_plain.backward()
        opt_plain.step()
    before = snapshot(model)
    with gradtrace.capture(model, step=2) as cap:
        for _ in range(2):
            opt.zero_grad()
            model(v).backward()
            opt.step()
    assert_untouched(before, model, grads=False)
    assert cap._session.backward_calls == 2
    t = cap.trace
    assert t.node(t.loss).label == "sum", "the loss of the user's second step, not the recompute's last op"
    assert t.node(t.loss).value.values == (loss_plain.item(),)
    for name, p in plain.named_parameters():
        assert torch.equal(dict(model.named_parameters())[name], p), f"{name}: same training as without capture"
        (k,) = t.find(name)
        assert same(t.node(k).grad, stats_of(p.grad)), name


def test_autograd_grad_is_a_step():
    """A gradient-descent loop written with torch.autograd.grad: each call is a step, traced like backward."""
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    w_plain = w.detach().clone().requires_grad_()
    for _ in range(2):
        (g_plain,) = torch.autograd.grad((w_plain ** 3).sum(), w_plain)
        with torch.no_grad():
            w_plain -= 0.1 * g_plain
    with gradtrace.capture(step=2) as cap:
        for _ in range(2):
            (g,) = torch.autograd.grad((w ** 3).sum(), w)
            with torch.no_grad():
                w -= 0.1 * g
    assert torch.equal(w, w_plain) and w.grad is None
    t = cap.trace
    assert cap._session.backward_calls == 2
    (leaf,) = [n for n in t.nodes if n.kind == "leaf"]
    assert same(leaf.grad, stats_of(g_plain))
    assert any("autograd.grad" in n for n in t.notes)


def test_gradient_penalty_grad_is_part_of_the_forward():
    """autograd.grad(create_graph=True) feeding the loss is no step: the step is the backward after it."""
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    with gradtrace.capture() as cap:
        y = (w ** 3).sum()
        (g,) = torch.autograd.grad(y, w, create_graph=True)
        (y + g.pow(2).sum()).backward()
    w2 = w.detach().clone().requires_grad_()
    y2 = (w2 ** 3).sum()
    (g2,) = torch.autograd.grad(y2, w2, create_graph=True)
    (y2 + g2.pow(2).sum()).backward()
    assert cap._session.backward_calls == 1
    (leaf,) = [n for n in cap.trace.nodes if n.kind == "leaf"]
    assert same(leaf.grad, stats_of(w2.grad))


@pytest.mark.parametrize("reentrant", [True, False])
def test_dropout_under_checkpoint_same_rng_and_gradients(reentrant):
    """Dropout inside a checkpointed block: the recompute replays the RNG; under capture the gradients
    and the generator's state afterwards are those of the plain run."""

    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.ReLU())
            self.head = nn.Linear(8, 1)

        def forward(self, v):
            return self.head(checkpoint(self.block, v, use_reentrant=reentrant)).sum()

    torch.manual_seed(0)
    model, v = Drop(), torch.randn(4, 3, requires_grad=True)
    plain = copy.deepcopy(model)
    torch.manual_seed(5)
    plain(v).backward()
    rng_plain = torch.get_rng_state()
    torch.manual_seed(5)
    with gradtrace.capture(model) as cap:
        model(v).backward()
    assert torch.equal(torch.get_rng_state(), rng_plain)
    for name, p in plain.named_parameters():
        q = dict(model.named_parameters())[name]
        assert torch.equal(q.grad, p.grad), f"{name}: bit-identical gradient"
        (k,) = cap.trace.find(name)
        assert same(cap.trace.node(k).grad, stats_of(p.grad)), name
