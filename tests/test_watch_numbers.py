"""watch's numbers in the cases the tester found wrong (tryout5 01-04), each against torch computed here.

- an optimizer that steps another inside its own step (Lookahead-style) and a parameter two optimizers hold:
  each optimizer's update measured on its own, shown as its own series;
- a sparse gradient (``nn.Embedding(sparse=True)``): measured, and its NaN caught at its own step;
- float16/bfloat16 tensors: norms in float32, no false "not finite" alarm from a norm past float16's range.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from gradtrace.watching.assemble import assemble_history
from gradtrace.watching.engine import Watcher


def ratio(after: torch.Tensor, before: torch.Tensor) -> float:
    return ((after.double() - before.double()).norm() / before.double().norm()).item()


class Lookahead(torch.optim.Optimizer):
    """An optimizer whose step() calls another's (torch-optimizer's Lookahead and similar wrappers)."""

    def __init__(self, inner: torch.optim.Optimizer, alpha: float = 0.5) -> None:
        self.inner, self.alpha = inner, alpha
        super().__init__(inner.param_groups, dict(lr=inner.defaults["lr"]))
        self.slow = {id(p): p.detach().clone() for g in inner.param_groups for p in g["params"]}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001
        self.inner.step()
        for g in self.param_groups:
            for p in g["params"]:
                s = self.slow[id(p)]
                s.add_(p - s, alpha=self.alpha)
                p.copy_(s)


@pytest.mark.parametrize("sentinel", [False, True])
def test_an_optimizer_wrapping_another_has_its_own_update_ratio(sentinel):
    # Each optimizer's copy of the weights is its own: the inner step no longer overwrites the outer's copy
    # (update_ratio 0.70 where torch says 0.15, before the fix).
    torch.manual_seed(0)
    m = nn.Linear(8, 4)
    opt = Lookahead(torch.optim.SGD(m.parameters(), lr=0.5))
    x = torch.randn(16, 8)
    outer, inner, total = [], [], []
    real_inner_step = opt.inner.step

    def inner_step(*a, **k):
        w0 = m.weight.detach().clone()
        out = real_inner_step(*a, **k)
        inner.append(ratio(m.weight.detach(), w0))
        return out

    with Watcher(m, every=1, sentinel=sentinel) as w:
        for _ in range(3):
            opt.zero_grad()
            (m(x) ** 2).mean().backward()
            total.append(math.hypot(m.weight.grad.norm().item(), m.bias.grad.norm().item()))
            w0 = m.weight.detach().clone()
            with torch.no_grad():
                opt.inner.step = inner_step  # (torch's numbers, measured inside the same step)
            opt.step()
            outer.append(ratio(m.weight.detach(), w0))
    d = assemble_history(w).to_dict()
    series = d["series"]["param"]
    assert series["weight"]["update_ratio"] == pytest.approx(outer, rel=1e-5)
    assert series["weight (opt1)"]["update_ratio"] == pytest.approx(inner, rel=1e-5)
    assert outer != pytest.approx(inner, rel=1e-2), "the two updates really differ"
    assert any(e["kind"] == "warning" and e["param"] == "weight" and "stepped by 2 optimizers" in e["text"] for e in d["events"])
    # the model's gradient norm counts each gradient once (not the weight's twice, once per optimizer)
    assert d["series"]["module"][""]["grad_norm"] == pytest.approx(total, rel=1e-5)
    if sentinel:
        assert w.alarm is None


def test_a_parameter_two_optimizers_hold_shows_each_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    shared = model[0].weight
    o0 = torch.optim.SGD([shared, model[0].bias], lr=0.3)
    o1 = torch.optim.SGD([shared, *model[2].parameters()], lr=0.1, momentum=0.9)
    x = torch.randn(8, 4)
    want0, want1 = [], []
    with Watcher(model, every=1) as w:
        for _ in range(3):
            o0.zero_grad()
            o1.zero_grad()
            model(x).pow(2).mean().backward()
            w0 = shared.detach().clone()
            o0.step()
            want0.append(ratio(shared.detach(), w0))
            w1 = shared.detach().clone()
            o1.step()
            want1.append(ratio(shared.detach(), w1))
    d = assemble_history(w).to_dict()
    p = d["series"]["param"]
    assert p["0.weight"]["update_ratio"] == pytest.approx(want0, rel=1e-5)
    assert p["0.weight (opt1)"]["update_ratio"] == pytest.approx(want1, rel=1e-5)
    names = {q["name"]: q for q in d["params"]}
    assert names["0.weight (opt1)"]["module"] == "0" and names["0.weight (opt1)"]["shape"] == [4, 4]


def sparse_run(steps: int, nan_step: int | None, watcher: Watcher | None):
    torch.manual_seed(0)
    emb, lin = nn.Embedding(50, 8, sparse=True), nn.Linear(8, 1)
    model = nn.Sequential(emb, lin)
    o1, o2 = torch.optim.SGD(emb.parameters(), lr=0.1), torch.optim.SGD(lin.parameters(), lr=0.1)
    idx = torch.tensor([3, 7, 3, 9, 12, 7, 3, 40])  # repeated indices: the sparse gradient stores some rows twice
    dense_grads = []
    with watcher if watcher is not None else contextlib.nullcontext():
        for step in range(1, steps + 1):
            o1.zero_grad()
            o2.zero_grad()
            e = emb(idx)
            if step == nan_step:
                e.register_hook(lambda g: torch.where(torch.arange(8)[:, None] == 3, torch.full_like(g, math.nan), g))
            (lin(e) ** 2).mean().backward()
            dense_grads.append(emb.weight.grad.to_dense().clone())
            o1.step()
            o2.step()
    return model, dense_grads


def test_a_sparse_gradient_is_measured_as_its_dense_gradient():
    w = Watcher(None, every=1)
    _, grads = sparse_run(4, None, w)
    d = assemble_history(w).to_dict()
    p = d["series"]["param"]
    name = "Embedding.weight"
    assert p[name]["grad_norm"] == pytest.approx([g.norm().item() for g in grads], rel=1e-5)
    assert p[name]["grad_nonfinite"] == [0, 0, 0, 0]
    assert all(r is not None and r > 0 for r in p[name]["update_ratio"])


def test_a_nan_in_a_sparse_gradient_is_caught_at_its_own_step():
    # before: the embedding was left out, and the first broken step was the next one (its loss NaN)
    w = Watcher(None, every=1, sentinel=True)
    _, grads = sparse_run(8, 5, w)
    assert w.alarm is not None and w.alarm.step == 5, w.alarm
    assert "gradients are not finite" in w.alarm.text
    d = assemble_history(w).to_dict()
    name = "Embedding.weight"
    assert d["series"]["param"][name]["grad_nonfinite"][4] == int((~torch.isfinite(grads[4])).sum()) > 0


@pytest.mark.parametrize("sentinel", [False, True])
def test_float16_gradients_whose_norm_passes_float16s_range_are_finite(sentinel):
    # every element 320: finite; the norm 81,920 is past float16's 65,504 (read 'inf' before: a false alarm)
    torch.manual_seed(0)
    m = nn.Linear(256, 256).half()
    opt = torch.optim.SGD(m.parameters(), lr=1e-9)
    x = torch.ones(8, 256, dtype=torch.float16)
    want = []
    with Watcher(m, every=1, sentinel=sentinel, sample=not sentinel) as w:
        for _ in range(3):
            opt.zero_grad()
            (m(x).float().sum() * 40.0).backward()
            assert torch.isfinite(m.weight.grad).all()
            want.append(m.weight.grad.float().norm().item())
            opt.step()
    if sentinel:
        assert w.alarm is None, w.alarm
        return
    p = assemble_history(w).to_dict()["series"]["param"]["weight"]
    assert p["grad_norm"] == pytest.approx(want, rel=1e-5) and want[0] > 65504
    assert p["grad_nonfinite"] == [0, 0, 0]


def test_bfloat16_norms_are_float32_norms_of_the_values():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)).to(torch.bfloat16)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    x = torch.randn(16, 32, dtype=torch.bfloat16)
    want = []
    with Watcher(m, every=1) as w:
        for _ in range(3):
            opt.zero_grad()
            m(x).float().pow(2).mean().backward()
            before = {n: p.detach().clone() for n, p in m.named_parameters()}
            grads = {n: p.grad.double().norm().item() for n, p in m.named_parameters()}
            opt.step()
            want.append((grads, {n: ratio(p.detach(), before[n]) for n, p in m.named_parameters()}))
    p = assemble_history(w).to_dict()["series"]["param"]
    for name in ("0.weight", "2.weight"):
        # float32 sums of bfloat16 values: as torch's float64 norm of the same values, to float32's precision
        assert p[name]["grad_norm"] == pytest.approx([g[name] for g, _ in want], rel=1e-5)
        assert p[name]["update_ratio"] == pytest.approx([r[name] for _, r in want], rel=1e-5)


def test_an_optimizer_gone_before_the_history_is_written_keeps_its_type_and_size():
    # tryout5 10: the usual `def main():` script frees its optimizer before the history is assembled: it read
    # type '?' and params null (page header 'opt0 ?')
    import gc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))

    def main() -> None:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})  # one tensor no module holds
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()

    with Watcher(model, every=1) as w:
        main()
    gc.collect()
    assert all(o.ref() is None for o in w.opts.values()), "the optimizer really is gone"
    (opt,) = assemble_history(w).to_dict()["optimizers"]
    assert opt["type"] == "AdamW" and opt["params"] == len(list(model.parameters())) + 1 and opt["steps"] == 3
    assert opt["roots"] == [""]


def test_a_sweep_keeps_no_weight_copies_of_the_models_it_is_done_with():
    # tryout5 13: the weights' copies kept for the update ratio (one per parameter) stayed for the whole run, so a
    # sweep training fresh model after fresh model grew by a copy of each; they now go with their optimizer.
    import gc

    with Watcher(None, every=1, sentinel=True) as w:
        for _ in range(4):
            m = nn.Linear(64, 64)
            opt = torch.optim.SGD(m.parameters(), lr=0.1)
            for _ in range(2):
                opt.zero_grad()
                m(torch.randn(4, 64)).sum().backward()
                opt.step()
            assert len(w._before._kept) == 2  # this model's weight and bias, while its optimizer lives
            del opt
            gc.collect()
            assert len(w._before._kept) == 0
            del m


def test_a_sweep_frees_each_model_and_still_names_and_measures_it():
    # tryout5 13: the engine held every root module (for its names) to the end of the run, with its gradients, so a
    # k-fold or lr sweep grew without bound. Roots are now held weakly; names and shapes are taken while they live.
    import gc
    import weakref

    gone, grads = [], []
    with Watcher(None, every=1) as w:
        for k in range(3):
            torch.manual_seed(k)
            m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
            opt = torch.optim.SGD(m.parameters(), lr=0.1)
            for _ in range(2):
                opt.zero_grad()
                m(torch.randn(4, 8)).pow(2).mean().backward()
                grads.append(m[0].weight.grad.norm().item())
                opt.step()
            gone.append(weakref.ref(m))
            del m, opt
            gc.collect()
            assert gone[-1]() is None, "the engine let the finished model go"
    d = assemble_history(w).to_dict()
    # three models met: named by class, numbered (each optimizer counts its own steps: 2 each, at steps 1 and 2)
    p = d["series"]["param"]
    assert {"Sequential.0.weight", "Sequential2.0.weight", "Sequential3.0.weight"} <= set(p)
    for k, name in enumerate(("Sequential.0.weight", "Sequential2.0.weight", "Sequential3.0.weight")):
        assert p[name]["grad_norm"] == pytest.approx(grads[2 * k:2 * k + 2], rel=1e-5)
    assert {q["name"]: q["shape"] for q in d["params"]}["Sequential3.2.weight"] == [2, 16]
    assert [o["roots"] for o in d["optimizers"]] == [["Sequential"], ["Sequential2"], ["Sequential3"]]
    assert [o["type"] for o in d["optimizers"]] == ["SGD"] * 3


def test_a_zero_initialised_model_trained_healthily_raises_no_update_alarm():
    # tryout5 17: from zero weights every early update is bigger than the weights (momentum makes the second 1.9x
    # the first): 'update ratio 1.9' stopped a healthy run at step 2. An update alarm needs a jump over its own past.
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(64, 5)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0], [-1.0]]) + 0.3
    losses = []
    with Watcher(model, sentinel=True, sample=False) as w:
        for _ in range(200):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, "a healthy run: the loss falls"
    assert w.alarm is None, w.alarm


def test_an_update_that_explodes_is_still_caught_at_its_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    with Watcher(model, sentinel=True, sample=False) as w:
        for step in range(1, 30):
            if step == 20:
                opt.param_groups[0]["lr"] = 1e4  # a schedule gone wrong: the update dwarfs the weights
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            if w.alarm is not None:
                break
    assert w.alarm is not None and w.alarm.step == 20 and "update ratio" in w.alarm.text, w.alarm


class Grow(torch.optim.SGD):
    """An optimizer that grows a parameter inside its step (growing/pruning optimizers)."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001
        super().step()
        p = self.param_groups[0]["params"][0]
        p.data = torch.cat([p.data, p.data[:1]])


@pytest.mark.parametrize("sentinel", [False, True])
def test_a_parameter_that_changes_shape_inside_the_step_gets_no_ratio_and_the_run_goes_on(sentinel):
    # tryout5 19: the copy taken before the step no longer fits: the hook raised into the user's opt.step()
    torch.manual_seed(0)
    w_ = nn.Parameter(torch.randn(3, 4))
    b_ = nn.Parameter(torch.randn(4))
    opt = Grow([w_, b_], lr=0.1)
    want_b = []
    with Watcher(None, every=1, sentinel=sentinel) as w:
        for _ in range(3):
            opt.zero_grad()
            (w_.sum(0) * b_).pow(2).sum().backward()
            before = b_.detach().clone()
            opt.step()
            want_b.append(ratio(b_.detach(), before))
    assert w_.shape == (6, 4), "the user's optimizer ran every step"
    d = assemble_history(w).to_dict()
    p = d["series"]["param"]
    (wname,) = [n for n in p if n.endswith("param0")]
    (bname,) = [n for n in p if n.endswith("param1")]
    assert p[wname]["update_ratio"] == [None, None, None]
    assert p[bname]["update_ratio"] == pytest.approx(want_b, rel=1e-5)
    if sentinel:
        assert w.alarm is None, w.alarm


class SparseOut(nn.Module):
    def forward(self, x):
        return x.to_sparse()


class NestedOut(nn.Module):
    def forward(self, x):
        return torch.nested.as_nested_tensor([x[0, :2], x[1]], layout=torch.jagged)


@pytest.mark.parametrize("odd", [SparseOut, NestedOut])
def test_a_module_returning_a_sparse_or_nested_tensor_is_measured_and_never_breaks_the_forward(odd):
    # tryout5 20: the output statistics raised NotImplementedError into the user's forward (nested) or crashed the run
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    m = odd()
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    with Watcher(nn.ModuleDict({"lin": lin, "odd": m}), every=1) as w:
        for _ in range(2):
            opt.zero_grad()
            h = lin(torch.randn(2, 4))
            out = m(h)
            (out.values() if out.is_nested else out.to_dense()).pow(2).sum().backward()
            opt.step()
    d = assemble_history(w).to_dict()
    rms = d["series"]["module"]["odd"]["out_rms"]
    assert all(r is not None and r > 0 for r in rms)
    assert not any(e["kind"] == "warning" for e in d["events"]), d["events"]


class Clipped(torch.optim.SGD):
    """An SGD subclass whose step() calls super().step(): torch runs the step hooks in both (once SGD.step is hooked)."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001
        for g in self.param_groups:
            for p in g["params"]:
                p.grad.clamp_(-1, 1)
        return super().step()


def test_an_optimizer_subclass_calling_super_step_is_one_step_and_a_step_that_raised_is_not_remembered():
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # (any SGD: torch hooks SGD.step for every instance)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = Clipped(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    want = []
    with Watcher(model, every=1) as w:
        for step in range(1, 5):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            if step == 2:  # a step that raises: its post hook never runs
                saved = model.weight.grad
                model.weight.grad = None
                with pytest.raises(AttributeError):
                    opt.step()
                model.weight.grad = saved
            before = model.weight.detach().clone()
            opt.step()
            want.append(ratio(model.weight.detach(), before))
    d = assemble_history(w).to_dict()
    assert d["optimizers"][0]["steps"] == 4, "one step per outermost step() that ran to its end"
    assert d["series"]["param"]["weight"]["update_ratio"] == pytest.approx(want, rel=1e-5)


def test_a_sweep_of_models_and_optimizers_lists_each_optimizer_and_frees_each_model():
    # tryout5 28: an optimizer made where a freed one lived was merged with it (8 of 10 listed); 13: each optimizer's
    # last parameters were still held, so the models were kept after all.
    import gc
    import weakref

    refs, losses = [], []
    with Watcher(None, every=1, sentinel=True) as w:
        for k in range(6):
            torch.manual_seed(k)
            m = nn.Linear(32, 8)
            opt = torch.optim.SGD(m.parameters(), lr=0.1 * (k + 1))
            for _ in range(2):
                opt.zero_grad()
                loss = m(torch.randn(4, 32)).pow(2).mean()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            refs.append(weakref.ref(m))
            del m, opt
            gc.collect()
            assert refs[-1]() is None, "the finished model is let go"
    d = assemble_history(w).to_dict()
    assert [o["name"] for o in d["optimizers"]] == [f"opt{k}" for k in range(6)]
    assert [o["steps"] for o in d["optimizers"]] == [2] * 6
    assert sorted(d["lr"]) == [f"opt{k}/group0" for k in range(6)]
    assert [d["lr"][f"opt{k}/group0"][0] for k in range(6)] == pytest.approx([0.1 * (k + 1) for k in range(6)])
    assert w.alarm is None


def test_a_loss_module_made_anew_every_step_is_one_module():
    # tryout5 25: `criterion = nn.MSELoss()` inside the loop added a module per step (3004 heat-map rows)
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with Watcher(m, every=1) as w:
        for _ in range(30):
            criterion = nn.MSELoss()
            opt.zero_grad()
            criterion(m(torch.randn(8, 4)), torch.randn(8, 1)).backward()
            opt.step()
    d = assemble_history(w).to_dict()
    assert [x["path"] for x in d["modules"]] == ["", "MSELoss"]
    assert len([r for r in d["series"]["module"]["MSELoss"]["out_rms"] if r is not None]) == 30


@pytest.mark.parametrize("sentinel", [False, True])
def test_a_closure_optimizer_step_is_measured_from_its_own_evaluations(sentinel):
    # tryout5 23: LBFGS's backward() calls run inside step(closure): step 1 was unmeasured (no gradient yet at the
    # pre-step hook), later gradients were the previous step's, and the loss the mean of the line search's evaluations
    torch.manual_seed(0)
    m = nn.Linear(5, 1)
    opt = torch.optim.LBFGS(m.parameters(), lr=0.5, max_iter=5)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1) + 0.1
    want = []
    with Watcher(m, every=1, sentinel=sentinel) as w:
        for _ in range(4):
            calls = []

            def closure():
                opt.zero_grad()
                loss = (m(x) - y).pow(2).mean()
                loss.backward()
                calls.append(loss.item())
                return loss

            w0 = m.weight.detach().clone()
            opt.step(closure)
            want.append({"loss": calls[0], "grad": m.weight.grad.norm().item(), "ratio": ratio(m.weight.detach(), w0),
                         "calls": len(calls), "total": math.hypot(m.weight.grad.norm().item(), m.bias.grad.norm().item())})
    assert want[0]["calls"] > 1, "a real line search: several evaluations in one step"
    d = assemble_history(w).to_dict()
    assert d["optimizers"][0]["steps"] == 4
    assert [v for _, v in d["loss_all"]] == pytest.approx([s["loss"] for s in want], rel=1e-6)
    if not sentinel:
        p = d["series"]["param"]["weight"]
        assert p["grad_norm"] == pytest.approx([s["grad"] for s in want], rel=1e-5)
        assert p["update_ratio"] == pytest.approx([s["ratio"] for s in want], rel=1e-5)
    else:  # the sentinel's total gradient norm: weight and bias, as the step left them
        assert [f[3] for f in w.fingerprints] == pytest.approx([s["total"] for s in want], rel=1e-5)
        assert w.alarm is None


def test_the_adaptive_period_moves_at_most_twofold_per_sample_and_needs_three_measurements_to_go_below_ten():
    # tryout5 21: on a loaded machine one noisy measurement swung the period from 1 to 539 and back, so the history
    # was bunched into the first steps. The plan is fed timings directly here (no clock).
    from gradtrace.watching.engine import START_EVERY

    w = Watcher(None)
    w._step_times = [0.1] * 50
    w._sample_extra = [0.0]  # sampling looks free: wants every step
    w._plan(11)
    assert w._period == START_EVERY, "one measurement does not go below the start"
    w._sample_extra = [0.0, 0.0, 0.0]
    periods = []
    for step in range(20, 80, 10):
        w._plan(step)
        periods.append(w._period)
    assert periods == [5, 2, 1, 1, 1, 1], periods  # halving, not a jump to 1
    w._sample_extra = [0.0, 0.0, 0.0, 50.0, 50.0, 50.0]  # a noisy spell: sampling now looks 500x a step
    w._plan(100)
    assert w._period == 2, "doubling, not a jump to the thousands"
