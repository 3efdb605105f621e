"""Real 2-process runs (gloo on CPU) of gradient accumulation under DDP's no_sync(), a NaN on rank 1 in micro-step 1.

dist_accum_nan.py makes 2 micro-steps per optimizer step; at step 4 rank 1 alone has one NaN in its input in
micro-step 1 (backward() call 7) and nowhere else. Its .grad holds NaN from then on; at the last micro-step (call 8)
both ranks' own gradients are finite, and the all-reduce spreads rank 1's held NaN to rank 0, whose sentinel then
sees non-finite gradients at call 8.

- check --every-step must follow the single-process rule over the ranks: the first micro-step whose loss was
  non-finite, on the rank where it was (rank 1, call 7), not the lowest rank at the step (rank 0, call 8);
- tracing call 8 itself (check --step 8) must not blame "the reduction": the gradient rank 1 sent into the
  all-reduce was already non-finite (its .grad held it from micro-step 1), and the NaN count is torch's.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from tests.test_distributed_runs import SCRIPTS, _module, _Run

SCRIPT = str(SCRIPTS / "dist_accum_nan.py")
AT = 4  # the step whose micro-step 1 has the NaN on rank 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Run]:
    base = tmp_path_factory.mktemp("distaccum")
    started = {}
    for name, args in [
        ("every", ["check", "--every-step", "--json", SCRIPT, "-o", "bad.json", "--", "6", str(AT)]),
        ("call8", ["check", "--json", "--step", str(2 * AT), SCRIPT, "--", "6", str(AT)]),
    ]:
        (base / name).mkdir()
        started[name] = _Run(args, base / name)
    yield started
    for r in started.values():
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.communicate()


def _torch_run() -> dict[str, object]:
    """The script's training in plain torch: each rank's loss per backward() call, and what rank 1's .grad holds
    after micro-step 1 of step AT (the NaN count per parameter name)."""
    mod = _module("dist_accum_nan")
    model = mod.build()
    losses: dict[int, list[float]] = {0: [], 1: []}
    held: dict[str, int] = {}
    for step in range(1, AT + 1):
        total = [torch.zeros_like(p) for p in model.parameters()]
        for rank in (0, 1):
            model.zero_grad()
            for micro in range(mod.ACCUM):
                x, y = mod.batch(rank, step, micro, AT)
                loss = ((model(x) - y) ** 2).mean() / mod.ACCUM
                loss.backward()
                losses[rank].append(float(loss.detach()))
                if step == AT and rank == 1 and micro == 0:
                    held = {n: int(p.grad.isnan().sum()) for n, p in model.named_parameters()}
            for t, p in zip(total, model.parameters()):
                t += p.grad
        with torch.no_grad():
            for p, t in zip(model.parameters(), total):
                p -= mod.LR * t / 2
    return {"losses": losses, "held": held}


def test_every_step_retraces_the_micro_step_and_rank_where_the_loss_went_nan(runs: dict[str, _Run]) -> None:
    oracle = _torch_run()
    losses = oracle["losses"]
    call = 2 * (AT - 1) + 1  # micro-step 1 of step AT
    # torch: rank 1's loss is first non-finite at that call, rank 0's never (its NaN comes from the all-reduce).
    assert next(i for i, v in enumerate(losses[1], 1) if not math.isfinite(v)) == call  # type: ignore[index]
    assert all(math.isfinite(v) for v in losses[0])  # type: ignore[index]
    rc, out, err = runs["every"].result()
    assert rc == 1, err[-3000:]
    doc = json.loads(out)
    assert doc["first_bad_step"] == AT and doc["rank"] == 1, (doc, err[-2000:])
    assert doc["backward_call"] == call, doc
    assert "loss is NaN" in doc["finding"]
    assert f"(backward() call {call})" in err and "on rank 1" in out + err
    origin = [f for f in doc["findings"] if f["kind"] == "nonfinite_origin_rank"]
    assert len(origin) == 1 and origin[0]["rank"] == 1, doc["findings"]
    assert "the reduction made it" not in out
    assert doc["replay_mismatch"] is None


def test_the_last_micro_step_names_the_rank_whose_held_grad_went_into_the_all_reduce(runs: dict[str, _Run]) -> None:
    held = _torch_run()["held"]
    assert all(n > 0 for n in held.values())  # type: ignore[union-attr]  (the input's NaN reaches every gradient)
    rc, out, err = runs["call8"].result()
    assert rc == 1, err[-3000:]
    doc = json.loads(out)
    origin = [f for f in doc["findings"] if f["kind"] == "nonfinite_origin_rank"]
    assert len(origin) == 1, doc["findings"]
    f = origin[0]
    assert f["rank"] == 1 and "the reduction made it" not in f["message"], f
    assert "already held" in f["message"] and "no_sync()" in f["message"] and "spread it to ranks 0, 1" in f["message"]
    assert f"check --step {2 * AT - 1}" in f["hint"]
    name = next(n for n in held if f["label"].endswith(n))  # type: ignore[union-attr]
    assert f["numbers"]["held_nan"] == held[name]  # type: ignore[index]
