"""Sampling around GradScaler's skipped steps: a sample that falls on a skipped step goes to that optimizer's next
real step, whatever the sampling (fixed --every, the adaptive default, --steps A:B, several optimizers).

torch is the oracle: which steps were real is read off ``scaler.get_scale()`` (a skipped step backs the scale off),
and every sampled number is compared with torch's own, taken in the loop after ``scaler.unscale_``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gradtrace import watch

from .test_watch import close, data, mlp


def amp_run(skip: set[int], n_steps: int, *, seed: int = 0, **watch_kwargs):
    """Train ``n_steps`` steps under watch with a GradScaler; the steps in ``skip`` get an inf gradient, so the scaler
    skips them. Returns the history's dict and torch's record: {real step: (loss, grad norm of each parameter)}."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=10_000)
    real: dict[int, tuple[float, dict[str, float]]] = {}
    skipped: list[int] = []
    with watch(model, **watch_kwargs) as w:
        for step in range(1, n_steps + 1):
            opt.zero_grad()
            x, y = data(step + 100 * seed)
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            if step in skip:
                with torch.no_grad():
                    model[0].weight.grad[0, 0] = math.inf
            scaler.unscale_(opt)
            norms = {n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()}
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if scaler.get_scale() < before:  # torch's own word: the scaler backed off, the step was skipped
                skipped.append(step)
            else:
                real[step] = (loss.item(), norms)
    assert sorted(skip) == skipped  # (the oracle's premise: exactly the poisoned steps were skipped)
    return w.history.to_dict(), real


def expected_samples(real: list[int], steps: int, every: int, first: int = 1, last: int | None = None) -> list[int]:
    """The rule: every ``every`` steps from ``first``; a sample due on a skipped step is taken at the next real one."""
    out, due = [], first
    for s in range(1, steps + 1):
        if last is not None and s > last:
            break
        if s >= due and s in real:
            out.append(s)
            due = s + every
    return out


def check_values(d: dict, real: dict[int, tuple[float, dict[str, float]]]) -> None:
    """Every sampled step's loss and per-parameter gradient norm are torch's (a skipped step is never sampled)."""
    for i, step in enumerate(d["steps"]):
        assert step in real, f"step {step} was skipped by GradScaler, yet sampled"
        loss, norms = real[step]
        assert close(d["loss"][i], loss)
        for name, norm in norms.items():
            assert close(d["series"]["param"][name]["grad_norm"][i], norm), (step, name)


def test_every_1_samples_every_real_step_between_skipped_ones():
    skip = {1, 2, 3, 4, 5, 7, 8, 10}
    d, real = amp_run(skip, 12, every=1)
    assert d["steps"] == sorted(real) == [6, 9, 11, 12]
    check_values(d, real)
    assert sorted(e["step"] for e in d["events"] if e["kind"] == "skipped") == sorted(skip)
    assert d["steps_run"] == 12 and d["first_alarm"] is None


def test_a_sample_due_on_a_skipped_step_moves_to_the_next_real_step():
    skip = {1, 2, 5, 9, 10, 11}
    d, real = amp_run(skip, 16, every=4)
    want = expected_samples(sorted(real), 16, 4)
    assert want == [3, 7, 12, 16]
    assert d["steps"] == want
    check_values(d, real)


def test_steps_window_starting_on_skipped_steps():
    skip = {1, 4, 5, 6, 9}
    d, real = amp_run(skip, 12, every=1, steps=(4, 10))
    assert d["steps"] == [s for s in sorted(real) if 4 <= s <= 10] == [7, 8, 10]
    check_values(d, real)
    d, real = amp_run(skip, 12, every=3, steps=(5, 11))
    assert d["steps"] == expected_samples(sorted(real), 12, 3, 5, 11) == [7, 10]
    check_values(d, real)


def test_adaptive_default_samples_after_skipped_first_steps():
    skip = set(range(1, 8))
    d, real = amp_run(skip, 14)  # the adaptive default: step 1 due (then a period of 10 until measured)
    assert d["steps"] and d["steps"][0] == 8 == min(real)
    check_values(d, real)


def test_two_optimizers_one_skipping_each_samples_its_next_real_step():
    # A GAN's D and G, each with its own GradScaler: D skips some steps G does not. With every=3, steps 1, 4, 7, ...
    # are due; each optimizer whose due step was skipped is sampled at its own next real step.
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)) for _ in range(2)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.05) for n in nets]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=10_000) for _ in range(2)]
    root = nn.ModuleDict({"d": nets[0], "g": nets[1]})
    skip_d = {1, 2, 4, 8}
    real: list[dict[int, dict[str, float]]] = [{}, {}]
    with watch(root, every=3) as w:
        for step in range(1, 10):
            x, y = data(step)
            for k, (net, opt, scaler) in enumerate(zip(nets, opts, scalers)):
                opt.zero_grad()
                scaler.scale(F.cross_entropy(net(x), y)).backward()
                if k == 0 and step in skip_d:
                    with torch.no_grad():
                        net[0].weight.grad[0, 0] = math.inf
                scaler.unscale_(opt)
                norms = {f"{'dg'[k]}.{n}": torch.linalg.vector_norm(p.grad).item() for n, p in net.named_parameters()}
                before = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                if scaler.get_scale() >= before:  # torch: this optimizer's step was real
                    real[k][step] = norms
    assert sorted(set(range(1, 10)) - set(real[0])) == sorted(skip_d) and len(real[1]) == 9
    d = w.history.to_dict()
    # The run's due steps are G's (never skipped): 1, 4, 7. D's samples are at its next real step after each.
    due = expected_samples(sorted(real[1]), 9, 3)
    assert due == [1, 4, 7]
    wants = (sorted({min(s for s in real[0] if s >= t) for t in due}), due)
    assert wants[0] == [3, 5, 7]
    for k, want in enumerate(wants):
        got = [s for i, s in enumerate(d["steps"])
               if d["series"]["param"][f"{'dg'[k]}.0.weight"]["grad_norm"][i] is not None]
        assert set(want) <= set(got), (k, want, got)
        assert all(s in real[k] for s in got), (k, got)  # never a sample of a skipped step
        for i, s in enumerate(d["steps"]):
            for name, norm in real[k].get(s, {}).items():
                value = d["series"]["param"][name]["grad_norm"][i]
                assert value is None or close(value, norm), (s, name)
