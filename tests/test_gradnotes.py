"""Notes that say when the gradients drawn are not the ones the optimizer used (recorder/gradnotes.py)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace


def _data():
    torch.manual_seed(0)
    return nn.Linear(4, 3), torch.randn(8, 4), torch.randint(0, 3, (8,))


def test_clipping_between_backward_and_step():
    net, x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradtrace.capture(net) as cap:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        before = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()])))
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)
        opt.step()
    (note,) = [n for n in cap.trace.notes if "changed between backward() and SGD.step()" in n]
    assert f"{before:.4g} → 0.01" in note and "clip" in note
    assert "clip" in cap.trace.to_dot().source, "the diagram carries the note"


def test_no_note_when_the_optimizer_uses_the_recorded_gradient():
    net, x, y = _data()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with gradtrace.capture(net) as cap:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert cap.trace.notes == ()


def test_gradient_accumulation():
    net, x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradtrace.capture(net, step=2) as cap:
        opt.zero_grad()
        for half in (x[:4], x[4:]):
            F.cross_entropy(net(half), y[:4]).backward()
        opt.step()
    assert any("gradient accumulation" in n for n in cap.trace.notes), cap.trace.notes


def test_backward_inside_lbfgs_closure():
    net, x, y = _data()
    opt = torch.optim.LBFGS(net.parameters(), max_iter=3)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    with gradtrace.capture(net) as cap:
        opt.step(closure)
    assert any("inside LBFGS.step(closure)" in n for n in cap.trace.notes), cap.trace.notes


def test_distributed_data_parallel_gradients_are_before_the_all_reduce():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        net, x, y = _data()
        ddp = nn.parallel.DistributedDataParallel(net)
        with gradtrace.capture(ddp) as cap:
            F.cross_entropy(ddp(x), y).backward()
        assert any("DistributedDataParallel" in n and "all-reduce" in n for n in cap.trace.notes), cap.trace.notes
    finally:
        dist.destroy_process_group()


def test_a_non_finite_buffer_is_named():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).eval()
    with torch.no_grad():
        net[1].running_var[2] = float("nan")  # a corrupted checkpoint, say
    x = torch.randn(8, 4)
    assert not torch.isfinite(net(x)).all(), "torch: the buffer poisons the output"
    t = gradtrace.trace(net, x)
    assert any("buffer '1.running_var'" in n and "1 NaN" in n for n in t.notes), t.notes
    alarms = [f for f in t.diagnose() if f.alarm]
    assert alarms and "buffer '1.running_var'" in alarms[0].message
    assert t.node(alarms[0].node).module == "1"


def test_no_data_note_on_a_finite_step():
    net, x, y = _data()
    t = gradtrace.trace(net, x, loss=lambda out: F.cross_entropy(out, y))
    assert not any(n.startswith("non-finite data") for n in t.notes)


def test_a_failing_check_is_a_note_not_a_broken_step(monkeypatch):
    from gradtrace.recorder import gradnotes

    def broken(tensors):
        raise RuntimeError("no norm for you")

    monkeypatch.setattr(gradnotes, "_total_norm", broken)
    net, x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradtrace.capture(net) as cap:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert [n for n in cap.trace.notes if "could not check" in n and "no norm for you" in n], cap.trace.notes
    assert sum("could not check" in n for n in cap.trace.notes) == 1, "said once"
    assert all(p.grad is not None for p in net.parameters()), "the step itself went through"


def _gan():
    torch.manual_seed(0)
    g, d = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)), nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 1))
    return g, d, torch.optim.Adam(g.parameters(), lr=1e-3), torch.optim.Adam(d.parameters(), lr=1e-3)


def _gan_step(g, d, opt_g, opt_d):
    """The DCGAN tutorial's step: D on real, D on fake (two backward()), D steps; G's loss through D, G steps."""
    real, noise = torch.randn(4, 3), torch.randn(4, 2)
    d.zero_grad()
    F.binary_cross_entropy_with_logits(d(real), torch.ones(4, 1)).backward()
    fake = g(noise)
    F.binary_cross_entropy_with_logits(d(fake.detach()), torch.zeros(4, 1)).backward()
    opt_d.step()
    g.zero_grad()
    F.binary_cross_entropy_with_logits(d(fake), torch.ones(4, 1)).backward()  # D's parameters still hold their gradient
    opt_g.step()


def test_two_optimizers_no_accumulation_note_for_the_other_optimizers_parameters():
    g, d, opt_g, opt_d = _gan()
    with gradtrace.capture(nn.ModuleDict({"g": g, "d": d}), step=3) as cap:
        _gan_step(g, d, opt_g, opt_d)
    assert not any("already held a gradient" in n for n in cap.trace.notes), cap.trace.notes
    updated = [n for n in cap.trace.nodes if n.kind == "param" and n.update is not None]
    assert {n.label.split(".")[0] for n in updated} == {"g"}, "only G's optimizer stepped"


def test_two_optimizers_the_stepping_optimizers_own_parameters_count():
    g, d, opt_g, opt_d = _gan()
    with gradtrace.capture(nn.ModuleDict({"g": g, "d": d}), step=2) as cap:  # errD_fake: D's parameters hold errD_real's
        _gan_step(g, d, opt_g, opt_d)
    (note,) = [n for n in cap.trace.notes if "already held a gradient" in n]
    assert note.startswith(f"{len(list(d.parameters()))} parameter(s) that Adam.step() updates"), note


def test_an_update_after_more_backward_calls_says_so():
    g, d, opt_g, opt_d = _gan()
    with gradtrace.capture(nn.ModuleDict({"g": g, "d": d}), step=1) as cap:  # errD_real; errD_fake adds to .grad before the step
        _gan_step(g, d, opt_g, opt_d)
    assert any("came after 1 more backward() call(s)" in n and "sum" in n for n in cap.trace.notes), cap.trace.notes


def test_gradient_held_without_a_step_claims_nothing_about_an_optimizer():
    net, x, y = _data()
    with gradtrace.capture(net, step=2) as cap:
        for half in (x[:4], x[4:]):
            F.cross_entropy(net(half), y[:4]).backward()
    (note,) = [n for n in cap.trace.notes if "already held a gradient" in n]
    assert "optimizer" not in note, note


def test_a_loss_that_is_not_differentiable_says_so():
    net, x, _ = _data()
    assert all(p.requires_grad for p in net.parameters())
    for loss in (lambda o: o.argmax(), lambda o: (o > 0).float().sum(), lambda o: o.detach().sum()):
        with pytest.raises(gradtrace.GradtraceError, match="the loss is not differentiable") as e:
            gradtrace.trace(net, x, loss=loss)
        assert "no parameter or input" not in str(e.value)
    net.requires_grad_(False)
    with pytest.raises(gradtrace.GradtraceError, match="no parameter or input of the model requires grad"):
        gradtrace.trace(net, x, loss=lambda o: o.sum())
