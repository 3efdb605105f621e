"""Real 2-process runs (gloo on CPU) of ``watch`` and ``check --every-step`` under torch.distributed.run.

- watch of a DDP script: one file holding both ranks' histories, each rank's every-step loss equal to torch's
  (the test replays DDP in this process: both ranks' local gradients, averaged, one SGD step), the same sampled
  steps on both ranks, and the spread of the loss across ranks;
- check --every-step with a NaN on rank 1 only at step 7 (through gradtrace's own --nproc-per-node): step 7,
  rank 1, the op, its line, exit 1, the ranks stopped together at their first meeting (step 32, not 40), and the
  re-run's multi-rank trace written;
- check --every-step of a healthy run: exit 0;
- watch where rank 1 raises at step 5 while rank 0 waits in the all-reduce: no hang, rank 1 named, and its 4
  steps kept (in the one file, or in run.rank1.json when rank 0 could not collect them);
- watch where rank 1 SIGKILLs itself at step 5 (the out-of-memory killer) and torchrun SIGTERMs rank 0: rank 0
  still writes the file with its own 4 steps, rank 1 named missing, before torchrun's SIGKILL;
- check --every-step of uneven step counts (rank 0 makes 6 steps, rank 1 breaks at step 9): the step is traced on
  the rank that reaches it, and rank 0 is named as ended before it.

The four runs start together and each test waits for its own, with a timeout: a hang fails the test.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gradtrace.watching.rankhistory import RankHistories, load_history

from tests.test_distributed_runs import SCRIPTS, _module, _Run

SCRIPT = str(SCRIPTS / "dist_watch_ddp.py")
KILL_SCRIPT = str(SCRIPTS / "dist_watch_kill.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Run]:
    base = tmp_path_factory.mktemp("distwatch")
    started = {}
    for name, args, launcher in [
        ("watch", ["watch", SCRIPT, "-o", "run.json", "--", "12"], False),
        ("nan", ["check", "--every-step", "--json", SCRIPT, "-o", "bad.json", "--", "40", "nan", "7"], True),
        ("healthy", ["check", "--every-step", SCRIPT, "--", "10"], False),
        ("die", ["watch", SCRIPT, "-o", "run.json", "--rank-timeout", "200", "--", "12", "die", "5"], False),
        ("kill", ["watch", KILL_SCRIPT, "-o", "run.json", "--every", "1", "--", "12", "5"], False),
        ("uneven", ["check", "--every-step", "--json", str(SCRIPTS / "dist_uneven.py"), "-o", "u.json", "--", "6", "12", "9"],
         False),
    ]:
        (base / name).mkdir()
        started[name] = _Run(args, base / name, launcher)
        started[name].started = time.monotonic()  # type: ignore[attr-defined]
    yield started
    for r in started.values():
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.communicate()


def _ddp_losses(steps: int) -> dict[int, list[float]]:
    """Each rank's local loss at every step of dist_watch_ddp.py, by plain torch: DDP is the mean of the ranks'
    local gradients, applied by the same SGD on every rank."""
    mod = _module("dist_watch_ddp")
    model = mod.build()
    losses: dict[int, list[float]] = {0: [], 1: []}
    for step in range(1, steps + 1):
        grads = []
        for rank in (0, 1):
            model.zero_grad()
            x, y = mod.batch(rank, step)
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            losses[rank].append(float(loss.detach()))
            grads.append([p.grad.clone() for p in model.parameters()])
        with torch.no_grad():
            for p, g0, g1 in zip(model.parameters(), *grads):
                p -= mod.LR * (g0 + g1) / 2
    return losses


def test_watch_writes_one_file_with_every_rank_and_torch_losses(runs: dict[str, _Run]) -> None:
    rc, out, err = runs["watch"].result()
    assert rc == 0, err[-3000:]
    assert err.count("gradtrace: wrote run.json (2 ranks") == 1, err[-2000:]  # rank 0 alone writes and says so
    assert not list(runs["watch"].cwd.glob("run.rank*"))
    doc = load_history(runs["watch"].cwd / "run.json")
    assert isinstance(doc, RankHistories) and doc.world_size == 2
    assert [r["status"] for r in doc.ranks] == ["ok", "ok"]
    expected = _ddp_losses(12)
    h = {r: doc.history(r) for r in (0, 1)}
    for rank in (0, 1):
        history = h[rank]
        assert history is not None and history.steps_run == 12
        got = [v for _, v in history.to_dict()["loss_all"]]
        assert got == pytest.approx(expected[rank], rel=1e-5)
    assert expected[0] != pytest.approx(expected[1], rel=1e-3)  # (each rank's own batch: the two differ)
    assert h[0].steps == h[1].steps == [1, 11]  # the same sampled steps on both ranks, by the step-number rule
    loss = doc.spread["loss"]
    assert loss["steps"] == list(range(1, 13))
    for i in range(12):
        lo, hi = sorted((expected[0][i], expected[1][i]))
        assert loss["min"][i] == pytest.approx(lo, rel=1e-5) and loss["max"][i] == pytest.approx(hi, rel=1e-5)
        assert loss["rel"][i] == pytest.approx((hi - lo) / ((lo + hi) / 2), rel=1e-4)
    assert set(doc.spread["out_rms"]["module"]) >= {"module.0", "module.2"}


def test_check_every_step_names_step_rank_op_and_line_of_a_nan_on_rank_1(runs: dict[str, _Run]) -> None:
    rc, out, err = runs["nan"].result()
    assert rc == 1, err[-3000:]
    doc = json.loads(out)
    assert doc["first_bad_step"] == 7 and doc["rank"] == 1 and doc["exit_status"] == 1
    assert doc["steps_run"] == 32  # every rank stopped at the first meeting after step 7, not at the script's 40
    assert {a["rank"] for a in doc["alarms"]} == {0, 1}  # rank 0's gradients are NaN too, after the all-reduce
    assert doc["finding"] == "loss is NaN"  # rank 1's own words: the rank where it started
    origin = [f for f in doc["findings"] if f["kind"] == "nonfinite_origin_rank"]
    assert len(origin) == 1 and origin[0]["rank"] == 1 and origin[0]["op"] == "sqrt"
    line = next(i for i, t in enumerate(Path(SCRIPT).read_text().splitlines(), 1) if "torch.sqrt(out - 100.0)" in t)
    assert origin[0]["source"].startswith(f"dist_watch_ddp.py:{line}")
    assert doc["replay_mismatch"] is None  # the re-run on a fresh group reproduced both ranks' steps bit for bit
    written = json.loads((runs["nan"].cwd / "bad.json").read_text())
    assert written["world_size"] == 2 and len(written["ranks"]) == 2
    assert "step 7 went wrong" in err and "again on 2 ranks" in err


def test_check_every_step_of_a_healthy_run_exits_0(runs: dict[str, _Run]) -> None:
    rc, out, err = runs["healthy"].result()
    assert rc == 0, err[-3000:]
    assert "every step healthy on all 2 ranks (10 steps" in out


def test_a_rank_dying_mid_watch_is_named_and_nothing_hangs(runs: dict[str, _Run]) -> None:
    rc, out, err = runs["die"].result()
    took = time.monotonic() - runs["die"].started  # type: ignore[attr-defined]
    assert rc != 0
    assert took < 150, f"took {took:.0f} s: a rank waited for the --rank-timeout instead of ending"
    assert "rank 1 lost its data at step 5" in err
    assert "rank 1 of 2 ended: dist_watch_ddp.py raised an exception (RuntimeError: rank 1 lost its data" in err
    cwd = runs["die"].cwd
    # Rank 0 waits in the all-reduce of step 5 for a rank that is gone: rank 1 keeps its own 4 steps beside the
    # output; if rank 0 got out first (gloo's connection closed), it wrote both ranks, rank 1 as failed.
    kept = []
    if (cwd / "run.rank1.json").exists():
        kept.append(load_history(cwd / "run.rank1.json"))
    if (cwd / "run.json").exists():
        doc = load_history(cwd / "run.json")
        assert isinstance(doc, RankHistories) and doc.ranks[1]["status"] == "failed"
        assert "rank 1 lost its data" in doc.ranks[1]["why"]
        kept.append(doc.history(1))
    assert kept, err[-3000:]
    expected = _ddp_losses(4)[1]
    for h in kept:
        assert h.steps_run == 4
        # each rank's own page says where its history ends, in the words of its rank record
        assert any(e["kind"] == "warning" and "dist_watch_ddp.py raised an exception (RuntimeError: rank 1 lost its data "
                   "at step 5) after step 4: the history ends there" in e["text"] for e in h.events), h.events
        assert [v for _, v in h.to_dict()["loss_all"]] == pytest.approx(expected, rel=1e-5)
        assert all(math.isfinite(v) for v in expected)


def test_a_rank_killed_by_sigkill_loses_no_other_ranks_steps(runs: dict[str, _Run]) -> None:
    """Rank 1 is SIGKILLed at step 5 (the OOM killer: it says nothing); torchrun then SIGTERMs rank 0. Rank 0 keeps
    its 4 steps (torch's losses) in run.json, names rank 1 as missing, and ends as SIGTERM-ed (143), within torchrun's
    grace (30 s), not killed by it."""
    rc, out, err = runs["kill"].result()
    took = time.monotonic() - runs["kill"].started  # type: ignore[attr-defined]
    assert rc != 0
    cwd = runs["kill"].cwd
    assert (cwd / "run.json").exists(), err[-3000:]
    doc = load_history(cwd / "run.json")
    assert isinstance(doc, RankHistories) and doc.world_size == 2
    assert doc.ranks[1]["status"] == "missing" and doc.history(1) is None
    assert "torchrun stopped the run" in doc.ranks[1]["why"] and "killed" in doc.ranks[1]["why"]
    assert doc.ranks[0]["status"] == "failed"  # its script raised gloo's "Connection reset by peer"
    h = doc.history(0)
    assert h is not None and h.steps_run == 4
    assert [v for _, v in h.to_dict()["loss_all"]] == pytest.approx(_ddp_losses(4)[0], rel=1e-5)
    assert "gradtrace: wrote run.json (2 ranks, 0 ran to their end; 4 steps" in err
    assert "exitcode  : 143" in err  # rank 0 wrote, then ended as SIGTERM-ed; torchrun did not have to SIGKILL it
    assert took < 120, f"took {took:.0f} s"


def test_check_every_step_traces_a_step_that_only_some_ranks_reach(runs: dict[str, _Run]) -> None:
    """Rank 0 ends after 6 steps, rank 1 breaks at step 9: the re-run traces step 9 on rank 1 (its weights are torch's
    after 8 SGD steps) and names rank 0 as ended before it, instead of writing nothing."""
    from gradtrace.distributed import MultiTrace

    rc, out, err = runs["uneven"].result()
    assert rc == 1, err[-3000:]
    doc = json.loads(out)
    assert doc["first_bad_step"] == 9 and doc["rank"] == 1, doc
    assert doc["ended_before"] == {"0": "dist_uneven.py finished after 6 backward() calls, before call 9"}
    assert "rank 0 ended before step 9 (dist_uneven.py finished after 6 backward() calls" in err
    multi = MultiTrace.from_json((runs["uneven"].cwd / "u.json").read_text())
    assert [r.rank for r in multi.ranks] == [1] and multi.world_size == 2 and set(multi.ended) == {0}
    mod = _module("dist_uneven")
    m, opt = mod.build(1)
    for step in range(1, 9):
        loss = m(mod.batch(1, step, 9)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = mod.batch(1, 9, 9)
    assert not math.isfinite(float(m(x).pow(2).mean().detach()))  # torch: the loss of step 9 on rank 1 is not finite
    trace = multi.trace(1)
    weight = next(n for n in trace.nodes if n.kind == "param" and n.label.endswith("weight"))
    assert weight.values[0].norm == pytest.approx(float(m.weight.norm()), rel=1e-6)
    origin = [f for f in doc["findings"] if f["kind"] == "nonfinite_origin_rank"]
    assert len(origin) == 1 and origin[0]["rank"] == 1
