"""Capture and threads: node identity across threads, a step on a worker thread, one capture at a time.

Autograd numbers its nodes per thread, so nodes made on two threads can share a sequence number;
torch's dispatch modes are per thread too. torch is the oracle for every gradient.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import gradtrace
from gradtrace.recorder.stats import stats_of

from .leave_no_trace import assert_untouched, snapshot
from .oracle import assert_ops_match, autograd_walk, reference_step, same


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    before = snapshot()
    yield
    assert_untouched(before)


def _in_threads(x: torch.Tensor) -> torch.Tensor:
    """Two branches, each made on a fresh thread (so both number their nodes from 0), joined here."""
    outs: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        outs[i] = torch.tanh(x * (i + 2)).sum()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        t.join()  # one after the other: the same sequence numbers on both
    return outs[0] + outs[1] * 3


def test_nodes_from_two_threads_do_not_collide():
    torch.manual_seed(0)
    base = torch.randn(3)
    x_plain = base.clone().requires_grad_()
    loss = _in_threads(x_plain)
    ops, leaves = autograd_walk(loss)
    loss.backward()
    x = base.clone().requires_grad_()
    t = gradtrace.trace(_in_threads, x)
    assert sum(n.kind == "op" for n in t.nodes) == len(ops) == 8, "node for node, whichever thread made it"
    assert len(t.graph.edges) == len({(id(c), id(n)) for n in ops for c, _ in n.next_functions if c is not None})
    (leaf,) = [n for n in t.nodes if n.kind == "leaf"]
    assert same(leaf.grad, stats_of(x_plain.grad))
    tanhs = [t.node(k) for k in t.find("tanh")]
    assert len(tanhs) == 2
    # Their forward ran where gradtrace's recorder does not: no value shown, and the trace says why.
    assert all(n.value is None for n in tanhs)
    assert any("another thread" in n for n in t.notes)
    assert t.node(t.loss).value.values == (loss.item(),), "the op made on the recording thread keeps its value"


def test_a_step_run_in_a_worker_thread_is_recorded_fully():
    """The whole step, capture included, on a worker thread: every value and gradient is torch's."""
    result: dict[str, object] = {}

    def worker() -> None:
        try:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
            v = torch.randn(5, 3)
            ref = reference_step(model, (v,), lambda out: out.pow(2).mean())
            model.zero_grad()
            with gradtrace.capture(model) as cap:
                model(v).pow(2).mean().backward()
            result["ok"] = (cap.trace, ref)
        except BaseException as e:  # surfaced on the main thread
            result["error"] = e

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    trace, ref = result["ok"]  # type: ignore[misc]
    assert_ops_match(trace, ref)
    for name, g in ref.param_grads.items():
        (k,) = trace.find(name)
        assert same(trace.node(k).grad, stats_of(g)), name
    assert trace.notes == ()


def test_two_captures_at_once_are_refused_and_nothing_stays_patched():
    original = torch.autograd.backward
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            w = torch.ones(2, requires_grad=True)
            with gradtrace.capture() as cap:
                inside.set()
                release.wait(10)
                (w * 2).sum().backward()
            assert cap.trace.node(cap.trace.loss).label == "sum"
        except BaseException as e:
            errors.append(e)
            inside.set()

    th = threading.Thread(target=first)
    th.start()
    try:
        assert inside.wait(10)
        with pytest.raises(gradtrace.CaptureError, match="already running"):
            with gradtrace.capture():
                pass
        with pytest.raises(gradtrace.CaptureError, match="already running"):
            gradtrace.trace(nn.Linear(2, 1), torch.ones(1, 2))
    finally:
        release.set()
        th.join()
    assert errors == []
    assert torch.autograd.backward is original
    # and nested in one thread, too
    with gradtrace.capture():
        with pytest.raises(gradtrace.CaptureError, match="this thread"):
            gradtrace.trace(nn.Linear(2, 1), torch.ones(1, 2))
    assert torch.autograd.backward is original


def test_a_wrapper_installed_over_ours_is_left_to_its_owner():
    """Someone patches torch.autograd.backward inside the block: closing does not undo their patch,
    and ours, which they still call, passes straight through."""
    calls = []
    original = torch.autograd.backward
    w = torch.ones(2, requires_grad=True)
    with gradtrace.capture() as cap:
        inner = torch.autograd.backward

        def theirs(*args, **kwargs):
            calls.append(1)
            return inner(*args, **kwargs)

        torch.autograd.backward = theirs
        (w * 3).sum().backward()
    try:
        assert torch.autograd.backward is theirs
        (w * 3).sum().backward()
        assert calls == [1, 1] and torch.equal(w.grad, torch.full((2,), 6.0))
        assert cap.trace.node(cap.trace.loss).label == "sum"
    finally:
        torch.autograd.backward = original


def test_capture_entered_here_step_run_in_a_worker_thread():
    """The training loop runs in a worker thread, the capture in the main one: values and gradients are
    torch's, and nothing stays on the worker's dispatch stack."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    v = torch.randn(5, 3)
    ref = reference_step(model, (v,), lambda out: out.pow(2).mean())
    model.zero_grad()
    done, stacks, errors = threading.Event(), [], []

    def loop() -> None:
        try:
            model(v).pow(2).mean().backward()
            stacks.append(torch._C._len_torch_dispatch_stack())
        except BaseException as e:
            errors.append(e)

    with gradtrace.capture(model) as cap:
        th = threading.Thread(target=loop)
        th.start()
        th.join()
    assert errors == [] and stacks == [0], "the recorder left the worker's dispatch stack at its backward()"
    assert_ops_match(cap.trace, ref)
    for name, g in ref.param_grads.items():
        (k,) = cap.trace.find(name)
        assert same(cap.trace.node(k).grad, stats_of(g)), name
    assert not any("no forward value" in n for n in cap.trace.notes)
