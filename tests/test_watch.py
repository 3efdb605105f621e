"""gradtrace.watch, the Python API: every number in the history against torch, computed independently."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace
from gradtrace.errors import GradtraceError
from gradtrace import watch
from gradtrace.watching import History

from .watch_schema import validate

REL = 1e-5


def close(a, b, rel=REL):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def data(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def oracle_run(model, opt, steps, sampled, micro=1, clip=None, sched=None):
    """Train without gradtrace; at each sampled step keep what the history must hold (torch's own numbers)."""
    out = {}
    for step in range(1, steps + 1):
        opt.zero_grad()
        losses, acts = [], {}
        hooks = [m.register_forward_hook(lambda m, a, o, name=name: acts.setdefault(name, []).append(o.detach().clone()))
                 for name, m in model.named_modules()]
        for k in range(micro):
            x, y = data(step * 10 + k)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.item())
        for h in hooks:
            h.remove()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        clipped = None
        if clip is not None:
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            clipped = (total.item(), min(total.item(), clip))
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        lr = opt.param_groups[0]["lr"]
        opt.step()
        if sched is not None:
            sched.step()
        if step in sampled:
            out[step] = {
                "loss": sum(losses) / len(losses),
                "grad_norm": {n: g.norm().item() for n, g in grads.items()},
                "grad_rms": {n: g.pow(2).mean().sqrt().item() for n, g in grads.items()},
                "value_norm": {n: w.norm().item() for n, w in before.items()},
                "update_ratio": {n: (p.detach() - before[n]).norm().item() / before[n].norm().item() for n, p in model.named_parameters()},
                "out_rms": {n: math.sqrt(sum(a.pow(2).sum().item() for a in v) / sum(a.numel() for a in v)) for n, v in acts.items()},
                "lr": lr, "clip": clipped,
                "module_grad": {"0": math.sqrt(sum(grads[n].norm().item() ** 2 for n in ("0.weight", "0.bias"))),
                                "": math.sqrt(sum(g.norm().item() ** 2 for g in grads.values()))},
            }
    return out


def watched_run(every, steps, micro=1, clip=None, sched_factory=None, opt_factory=None):
    model = mlp()
    opt = (opt_factory or (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)))(model.parameters())
    sched = sched_factory(opt) if sched_factory else None
    twin = copy.deepcopy(model)
    twin_opt = (opt_factory or (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)))(twin.parameters())
    twin_sched = sched_factory(twin_opt) if sched_factory else None
    with watch(model, every=every) as w:
        for step in range(1, steps + 1):
            opt.zero_grad()
            for k in range(micro):
                x, y = data(step * 10 + k)
                F.cross_entropy(model(x), y).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
    h = w.history
    expected = oracle_run(twin, twin_opt, steps, set(h.steps), micro, clip, twin_sched)
    return h, expected


def check_against(h, expected):
    d = h.to_dict()
    assert set(expected) == set(d["steps"])
    for i, step in enumerate(d["steps"]):
        e = expected[step]
        assert close(d["loss"][i], e["loss"]), (step, d["loss"][i], e["loss"])
        for name in e["grad_norm"]:
            p = d["series"]["param"][name]
            for metric in ("grad_norm", "grad_rms", "value_norm", "update_ratio"):
                assert close(p[metric][i], e[metric][name], rel=1e-4), (step, name, metric, p[metric][i], e[metric][name])
            assert p["grad_nonfinite"][i] == 0
        for path, rms in e["out_rms"].items():
            assert close(d["series"]["module"][path]["out_rms"][i], rms, rel=1e-4), (step, path)
            assert d["series"]["module"][path]["out_nonfinite"][i] == 0
        for path, g in e["module_grad"].items():
            assert close(d["series"]["module"][path]["grad_norm"][i], g, rel=1e-4), (step, path)
        assert close(d["lr"]["opt0/group0"][i], e["lr"])
        if e["clip"] is not None:
            assert close(d["clip"]["before"][i], e["clip"][0], rel=1e-4) and close(d["clip"]["after"][i], e["clip"][1], rel=1e-4)


def test_every_number_matches_torch():
    h, expected = watched_run(every=3, steps=10)
    assert h.steps == [1, 4, 7, 10] and h.steps_run == 10 and h.first_alarm is None
    check_against(h, expected)
    validate(h.to_dict())


def test_gradient_accumulation_a_step_is_an_optimizer_step():
    h, expected = watched_run(every=2, steps=6, micro=3)
    assert h.steps_run == 6 and h.steps == [1, 3, 5]  # 18 backward() calls, 6 steps
    check_against(h, expected)  # loss: the mean of the 3 micro-steps; module RMS over the 3 calls


def test_clipping_before_and_after():
    h, expected = watched_run(every=1, steps=4, clip=0.05)
    d = h.to_dict()
    assert all(b > a for b, a in zip(d["clip"]["before"], d["clip"]["after"]))  # it did clip
    check_against(h, expected)


def test_lr_scheduler_and_adam():
    h, expected = watched_run(every=1, steps=6, sched_factory=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
                              opt_factory=lambda p: torch.optim.Adam(p, lr=0.01))
    assert h.to_dict()["lr"]["opt0/group0"] == [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]
    check_against(h, expected)


def test_two_optimizers_step_n_is_each_ones_nth_step():
    torch.manual_seed(0)
    G, D = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)), nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    og, od = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.SGD(D.parameters(), 0.01)
    gnorms = {}
    with watch(every=2) as w:
        for step in range(1, 6):
            od.zero_grad()
            real, z = torch.randn(8, 2), torch.randn(8, 2)
            d_loss = F.softplus(-D(real)).mean() + F.softplus(D(G(z).detach())).mean()
            d_loss.backward()
            od.step()
            og.zero_grad()
            g_loss = F.softplus(-D(G(z))).mean()
            g_loss.backward()
            gnorms[step] = G[0].weight.grad.norm().item()
            og.step()
    d = w.history.to_dict()
    assert d["steps_run"] == 5 and d["steps"] == [1, 3, 5]
    assert [o["name"] for o in d["optimizers"]] == ["opt0", "opt1"] and [o["steps"] for o in d["optimizers"]] == [5, 5]
    assert "opt0/group0" in d["lr"] and "opt1/group0" in d["lr"] and set(d["losses"]) == {"opt0", "opt1"}
    # G is the second model called: named by its class; its parameters sampled at G's own steps 1, 3, 5.
    g_first = [p for p in d["series"]["param"] if p.startswith("Sequential")]
    assert g_first, sorted(d["series"]["param"])
    series = d["series"]["param"]
    gname = next(n for n in series if n.endswith("0.weight") and d["params"][list(series).index(n)]["shape"] == [4, 2]
                 and series[n]["grad_norm"][0] is not None and close(series[n]["grad_norm"][0], gnorms[1]))
    assert [round(x, 6) for x in series[gname]["grad_norm"]] == [round(gnorms[s], 6) for s in (1, 3, 5)]
    validate(d)


def test_no_optimizer_a_step_is_a_backward():
    w_ = torch.tensor([1.0, -2.0], requires_grad=True)
    with watch(every=1) as w:
        for _ in range(3):
            loss = (w_ ** 2).sum()
            loss.backward()
            with torch.no_grad():
                w_ -= 0.1 * w_.grad
            w_.grad = None
    d = w.history.to_dict()
    assert d["steps_run"] == 3 and d["steps"] == [1, 2, 3]
    assert [round(x, 5) for x in d["loss"]] == [5.0, 3.2, 2.048]
    assert d["optimizers"] == []


def test_amp_gradscaler_skipped_step_is_an_event_not_an_alarm():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # overflows the first steps' gradients to inf
    with watch(model, every=1) as w:
        for step in range(1, 6):
            opt.zero_grad()
            x, y = data(step)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss * 1e6).backward()
            scaler.step(opt)
            scaler.update()
    d = w.history.to_dict()
    skipped = [e for e in d["events"] if e["kind"] == "skipped"]
    assert skipped and skipped[0]["step"] == 1 and "GradScaler skipped" in skipped[0]["text"]
    assert d["first_alarm"] is None and not [e for e in d["events"] if e["kind"] == "alarm"]
    assert d["steps_run"] == 5
    # The loss recorded is the unscaled one, as torch computes it without the scaler.
    twin = mlp()
    x, y = data(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert close(d["loss_all"][0][1], 1e6 * F.cross_entropy(twin(x), y).item(), rel=1e-3)


def test_alarm_from_a_nonfinite_gradient_names_the_parameter():
    model = mlp()
    with watch(model, every=1) as w:
        for step in range(1, 5):
            model.zero_grad()
            x, y = data(step)
            if step in (2, 3):
                x = x.clone()
                x[0, 0] = math.inf if step == 2 else math.nan
            F.cross_entropy(model(x), y).backward()  # no optimizer: a step is a backward(); the weights stay finite
    d = w.history.to_dict()
    assert d["first_alarm"] == 2
    alarms = [e for e in d["events"] if e["kind"] == "alarm"]
    # step 2: tanh saturates, so the loss is finite, but 0.weight's gradient (x * upstream) is not
    assert any(e["step"] == 2 and e["param"] == "0.weight" and e["module"] == "0" for e in alarms), alarms
    p = d["series"]["param"]["0.weight"]["grad_nonfinite"]
    x, y = data(2)
    x[0, 0] = math.inf
    twin = mlp()
    F.cross_entropy(twin(x), y).backward()
    assert p[1] == int((~torch.isfinite(twin[0].weight.grad)).sum()) > 0 and p[0] == p[3] == 0
    assert d["series"]["module"]["0"]["out_nonfinite"][1] == int((~torch.isfinite(twin[0](x))).sum()) > 0
    # step 3: NaN all the way to the loss, written as the string "NaN" (JSON has no NaN)
    assert d["loss"][2] == "NaN" and any(e["step"] == 3 and e["text"] == "loss is NaN" for e in alarms)
    json.loads(w.history.to_json())


def test_steps_range_and_history_formats(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, every=2, steps=(3, 8)) as w:
        for step in range(1, 12):
            opt.zero_grad()
            x, y = data(step)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    h = w.history
    assert h.steps == [3, 5, 7] and h.steps_run == 11
    assert len(h.to_dict()["loss_all"]) == 11  # the loss of every step, cheap
    h.save(tmp_path / "run.json")
    h.save(tmp_path / "run.csv")
    again = History(json.loads((tmp_path / "run.json").read_text()))
    assert again.steps == h.steps and again.param("0.weight", "grad_norm") == h.param("0.weight", "grad_norm")
    rows = (tmp_path / "run.csv").read_text().splitlines()
    assert rows[0] == "step,series,name,metric,value" and "3,param,0.weight,grad_norm," in "\n".join(rows)
    with pytest.raises(GradtraceError, match="suffix"):
        h.save(tmp_path / "run.txt")
    with pytest.raises(GradtraceError, match="every must be"):
        watch(model, every=0)
    with pytest.raises(GradtraceError, match="needs the model as an nn.Module.*got str"):  # was an AttributeError
        watch("model")


def test_trace_steps_embed_the_full_trace_of_that_step():
    from gradtrace.watching.engine import Watcher
    from gradtrace.watching.assemble import assemble_history

    model = mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    with Watcher(model, every=5, trace_steps=(3,)) as w:
        for step in range(1, 6):
            opt.zero_grad()
            x, y = data(step)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    h = assemble_history(w, w.traces)
    assert 3 in h.steps
    trace = h.traces[3]
    for step in range(1, 4):  # torch: the loss of step 3
        twin_opt.zero_grad()
        x, y = data(step)
        loss = F.cross_entropy(twin(x), y)
        loss.backward()
        twin_opt.step()
    assert close(trace.node(trace.loss).value.values[0], loss.item())
    # the watch's own numbers at step 3 are unchanged by the capture
    i = h.steps.index(3)
    assert close(h.loss[i], loss.item())
    assert gradtrace.Trace  # (the embedded trace is a gradtrace.Trace)


def test_gradtrace_watch_is_the_function_after_the_package_is_imported():
    import gradtrace.watching.engine  # noqa: F401  (a submodule import sets the package as an attribute of gradtrace)

    assert gradtrace.watch is watch and callable(gradtrace.watch) and "watch" in gradtrace.__all__
    assert gradtrace.watch.__module__ == "gradtrace.watching"


def test_sentinel_finds_the_first_broken_step_of_each_kind():
    from gradtrace.watching.engine import Watcher

    # no optimizer: the loss of step 7 is NaN (a sqrt of a value that went negative)
    w_ = torch.tensor([3.0], requires_grad=True)
    with Watcher(sentinel=True, sample=False) as w:
        for step in range(1, 12):
            loss = torch.sqrt(w_ - 0.5 * step + 0.25).sum()
            loss.backward()
            w_.grad = None
    oracle = next(s for s in range(1, 12) if not math.isfinite(torch.sqrt(torch.tensor([3.0]) - 0.5 * s + 0.25).item()))
    assert w.alarm is not None and (w.alarm.step, w.alarm.backward_call) == (oracle, oracle) == (7, 7)
    assert w.alarm.text == "loss is NaN"
    assert len(w.fingerprints) == 11  # every step

    # the update larger than the weights: SGD with an absurd learning rate at step 4
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratios = []
    with Watcher(model, sentinel=True, sample=False) as w:
        for step in range(1, 7):
            opt.param_groups[0]["lr"] = 1e4 if step == 4 else 0.01
            opt.zero_grad()
            x, y = data(step)
            F.cross_entropy(model(x), y).backward()
            before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
            opt.step()
            after = torch.cat([p.detach().flatten() for p in model.parameters()])
            ratios.append(((after - before).norm() / before.norm()).item())
    first = next(i + 1 for i, r in enumerate(ratios) if r > 1)
    assert first == 4 and w.alarm is not None and w.alarm.step == 4 and "update ratio" in w.alarm.text
    assert math.isclose(float(w.alarm.text.split("= ")[1].split(" ")[0]), ratios[3], rel_tol=1e-2)

    # the loss finite, a gradient not: an inf in the data of step 2 (tanh saturates in the forward)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Watcher(model, sentinel=True, sample=False) as w:
        for step in range(1, 4):
            opt.zero_grad()
            x, y = data(step)
            if step == 2:
                x[0, 0] = math.inf
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert w.alarm is not None and w.alarm.step == 2 and w.alarm.text.startswith("gradients are not finite")


def test_sentinel_quiet_on_weights_that_start_at_zero():
    """A teaching example starts from w = 0: ‖Δw‖/‖w‖ is no ratio there, and no alarm."""
    from gradtrace.watching.engine import Watcher

    w_ = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([w_], lr=0.1)
    x, y = torch.randn(16, 3), torch.randn(16)
    with Watcher(sentinel=True, sample=False) as w:
        for _ in range(20):
            opt.zero_grad()
            ((x @ w_ - y) ** 2).mean().backward()
            opt.step()
    assert w.alarm is None and len(w.fingerprints) == 20


def test_no_optimizer_even_with_another_optimizer_alive():
    """An optimizer elsewhere in the process (a notebook's earlier one) does not make this loop's backward() a micro-step."""
    other = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    test_no_optimizer_a_step_is_a_backward()
    assert other.param_groups  # (kept alive through the loop)


def test_overflowing_norms_of_finite_values_count_no_nonfinite_and_a_real_nan_counts_exactly():
    # The non-finite counts are only computed where a norm is not finite (cheap.py): a norm can overflow to inf over
    # values that are all finite, and then the count must still be torch's (0), not the norm's word for it.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.fill_(1e20)  # outputs ~1e20: the output's norm (sum of squares in float32) overflows
    x = torch.ones(3, 4)
    with watch(model, every=1) as w:
        model(x).sum().backward()  # no optimizer: a step is a backward()
        model.zero_grad()
        xn = x.clone()
        xn[1, 2] = math.nan
        model(xn).sum().backward()
    d = w.history.to_dict()
    out0 = model[0](x).detach()
    assert torch.isfinite(out0).all() and not torch.isfinite(torch.linalg.vector_norm(out0))  # the case really arises
    mods, params = d["series"]["module"], d["series"]["param"]
    assert mods["0"]["out_nonfinite"][0] == 0 and mods["1"]["out_nonfinite"][0] == 0
    g = torch.autograd.grad(model(x).sum(), model[1].weight)[0]
    assert torch.isfinite(g).all() and not torch.isfinite(torch.linalg.vector_norm(g))
    assert params["1.weight"]["grad_nonfinite"][0] == 0
    # step 2: one NaN input poisons one row of every output and the first layer's weight gradient column-wise
    assert mods["0"]["out_nonfinite"][1] == int((~torch.isfinite(model[0](xn))).sum()) == 4
    gw = torch.autograd.grad(model(xn).sum(), model[0].weight)[0]
    assert params["0.weight"]["grad_nonfinite"][1] == int((~torch.isfinite(gw)).sum()) > 0


def test_update_ratio_stays_exact_when_the_weight_copies_are_reused_across_steps():
    # On the CPU the weights' copies are kept and overwritten each step (cheap.Before); with two optimizers over
    # different parameters, and the sentinel beside the sampling, every step's ratio must still be torch's.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    twin = copy.deepcopy(model)
    opts = [torch.optim.AdamW(model[0].parameters(), lr=0.05), torch.optim.SGD(model[2].parameters(), lr=0.3, momentum=0.9)]
    topts = [torch.optim.AdamW(twin[0].parameters(), lr=0.05), torch.optim.SGD(twin[2].parameters(), lr=0.3, momentum=0.9)]
    expect: list[dict[str, float]] = []
    for step in range(1, 6):
        x, y = data(step)
        for o in topts:
            o.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        ratios = {}
        for o in topts:
            before = {n: p.detach().clone() for n, p in twin.named_parameters()}
            o.step()
            ratios.update({n: (p.detach() - before[n]).norm().item() / before[n].norm().item()
                           for n, p in twin.named_parameters() if not torch.equal(p.detach(), before[n])})
        expect.append(ratios)
    with gradtrace.watching.engine.Watcher(model, every=1, sentinel=True) as w:
        for step in range(1, 6):
            x, y = data(step)
            for o in opts:
                o.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for o in opts:
                o.step()
    from gradtrace.watching.assemble import assemble_history

    d = assemble_history(w).to_dict()
    for name, ratios in ((n, [e[n] for e in expect]) for n in expect[0]):
        got = d["series"]["param"][name]["update_ratio"]
        assert all(close(a, b, rel=1e-4) for a, b in zip(got, ratios)), (name, got, ratios)
    assert w.alarm is None
