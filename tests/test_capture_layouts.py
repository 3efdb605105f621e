"""Tensors that are not plain strided memory: sparse (COO, CSR), and torch.func transforms inside a step.

The user's own backward always works under capture, with torch's gradients; sparse tensors are
described by their stored values, and the trace says so.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import gradtrace
from gradtrace.recorder.stats import stats_of

from .leave_no_trace import assert_untouched, snapshot
from .oracle import same


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    before = snapshot()
    yield
    assert_untouched(before)


def _adjacency(layout: torch.layout) -> torch.Tensor:
    i = torch.tensor([[0, 1, 2, 2, 0], [1, 2, 0, 2, 0]])
    a = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0, 3.0, -1.0, 0.5]), (3, 3)).coalesce()
    return a.to_sparse_csr() if layout is torch.sparse_csr else a


class GCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, a, x):
        return torch.relu(self.lin(torch.sparse.mm(a, x) if a.layout is torch.sparse_coo else a @ x)).sum()


@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr])
def test_sparse_input_gcn(layout):
    torch.manual_seed(0)
    model, a, x = GCN(), _adjacency(layout), torch.randn(3, 4)
    plain = copy.deepcopy(model)
    loss = plain(a, x)
    loss.backward()
    t = gradtrace.trace(model, a, x)
    for name, p in plain.named_parameters():
        (k,) = t.find(name)
        assert same(t.node(k).grad, stats_of(p.grad)), name
    assert t.node(t.loss).value.values == (loss.item(),)
    (adj,) = [n for n in t.nodes if n.kind == "input" and n.label == "a"]
    stored = a.coalesce().values() if layout is torch.sparse_coo else a.values()
    s = adj.value
    assert s.shape == (3, 3) and s.numel == stored.numel()
    assert (s.min, s.max) == (stored.min().item(), stored.max().item())
    ref = stats_of(stored)
    assert (s.mean, s.std, s.nan, s.inf) == (ref.mean, ref.std, ref.nan, ref.inf)
    assert abs(s.norm - torch.linalg.vector_norm(stored).item()) < 1e-6
    assert any("sparse" in n and "stored values" in n for n in t.notes)


def test_sparse_leaf_requiring_grad():
    torch.manual_seed(0)
    a, x = _adjacency(torch.sparse_coo), torch.randn(3, 4)
    a_plain = a.clone().requires_grad_()
    torch.sparse.mm(a_plain, x).sum().backward()
    a2 = a.clone().requires_grad_()
    t = gradtrace.trace(lambda m, v: torch.sparse.mm(m, v).sum(), a2, x)
    (leaf,) = [n for n in t.nodes if n.kind == "leaf"]
    g = a_plain.grad.coalesce().values()
    assert leaf.grad.numel == g.numel() and abs(leaf.grad.norm - torch.linalg.vector_norm(g).item()) < 1e-6
    assert a2.grad is None


def test_sparse_embedding_gradients_under_capture():
    """nn.Embedding(sparse=True): the user's own backward works and fills the same sparse .grad."""
    torch.manual_seed(0)
    emb = nn.Embedding(10, 3, sparse=True)
    plain = copy.deepcopy(emb)
    idx = torch.tensor([1, 2, 1, 7])
    plain(idx).pow(2).sum().backward()
    with gradtrace.capture(emb) as cap:
        emb(idx).pow(2).sum().backward()
    assert emb.weight.grad.is_sparse
    assert torch.equal(emb.weight.grad.to_dense(), plain.weight.grad.to_dense())
    (w,) = cap.trace.find("weight")
    stored = plain.weight.grad.coalesce().values()
    assert cap.trace.node(w).grad.shape == (10, 3)
    assert abs(cap.trace.node(w).grad.norm - torch.linalg.vector_norm(stored).item()) < 1e-5


def test_vmap_of_grad_inside_a_step():
    """torch.func inside the traced step: per-sample gradients feeding the loss."""
    torch.manual_seed(0)
    lin, xs = nn.Linear(3, 1), torch.randn(4, 3)

    def step(model, x):
        params = dict(model.named_parameters())

        def sample_loss(p, xi):
            return functional_call(model, p, (xi,)).pow(2).sum()

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0))(params, x)
        return sum(g.pow(2).sum() for g in per_sample.values()) + model(x).sum()

    plain = copy.deepcopy(lin)
    loss = step(plain, xs)
    loss.backward()
    with gradtrace.capture(lin) as cap:
        step(lin, xs).backward()
    for name, p in plain.named_parameters():
        assert torch.equal(dict(lin.named_parameters())[name].grad, p.grad), "the user's backward is unchanged"
        (k,) = cap.trace.find(name)
        assert same(cap.trace.node(k).grad, stats_of(p.grad)), name
    assert abs(cap.trace.node(cap.trace.loss).value.values[0] - loss.item()) <= 1e-6 * abs(loss.item())
    t = gradtrace.trace(lambda v: step(lin, v), xs)
    assert t.node(t.loss).value is not None


def test_nested_tensor_step_is_traced_with_a_note():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    plain = copy.deepcopy(lin)

    def step(model, a, b):
        nt = torch.nested.nested_tensor([a, b], layout=torch.jagged)
        return torch.cat([o.sum().reshape(1) * (i + 1) for i, o in enumerate(model(nt).unbind())]).sum()

    a, b = torch.randn(2, 3), torch.randn(4, 3)
    loss = step(plain, a, b)
    loss.backward()
    t = gradtrace.trace(lambda x, y: step(lin, x, y), a, b)
    for name, p in plain.named_parameters():
        (k,) = t.find(name)
        assert same(t.node(k).grad, stats_of(p.grad)), name
    assert t.node(t.loss).value.values == (loss.item(),)
    assert any("nested" in n and "no statistics" in n for n in t.notes)
