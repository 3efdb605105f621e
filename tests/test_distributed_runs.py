"""Real 2-process runs under torch.distributed.run (gloo on CPU): DDP with a rank-dependent branch and an
unused parameter, FSDP2, a NaN on rank 1 only, a rank that fails before its step.

torch is the oracle: the test rebuilds each rank's model and batch in this process, computes every local
gradient with plain torch, and the reduced gradient as the mean of the ranks' local gradients.

The four runs start together (they mostly wait on process start-up and the rendezvous) and each test
waits for its own, with a timeout: a hang fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import gradtrace
from gradtrace.distributed import MultiTrace

SCRIPTS = Path(__file__).parent / "scripts"
ENV = dict(os.environ, PYTHONPATH=str(Path(gradtrace.__file__).parent.parent), OMP_NUM_THREADS="1")
TIMEOUT = 240  # seconds for one run, on a loaded 2-core machine; a hang fails, it does not stall the suite


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


class _Run:
    def __init__(self, args: list[str], cwd: Path, launcher: bool = False) -> None:
        if launcher:  # gradtrace's own --nproc-per-node, which calls torch.distributed.run
            cmd = [sys.executable, "-m", "gradtrace", args[0], "--nproc-per-node", "2", *args[1:]]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "gradtrace", *args]
        self.cwd = cwd
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._out: tuple[int, str, str] | None = None

    def result(self) -> tuple[int, str, str]:
        if self._out is None:
            try:
                out, err = self.proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                pytest.fail(f"the run hung (killed after {TIMEOUT} s):\n{err[-3000:]}")
            self._out = (self.proc.returncode, out, err)
        return self._out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Run]:
    base = tmp_path_factory.mktemp("dist")
    started = {}
    for name, args, launcher in [
        # --run-to-end: the script destroys its process group before gradtrace gathers (the traces go
        # through the rendezvous store); the other runs are stopped after the step (a gloo side group).
        ("ddp", ["render", "--run-to-end", str(SCRIPTS / "dist_ddp_branch.py"), "-o", "step.json"], False),
        ("fsdp", ["render", str(SCRIPTS / "dist_fsdp.py"), "-o", "step.json"], False),
        ("nan", ["check", "--json", str(SCRIPTS / "dist_nan.py")], True),
        ("fail", ["render", str(SCRIPTS / "dist_fail.py"), "-o", "step.json", "--rank-timeout", "60"], False),
        ("hang", ["render", str(SCRIPTS / "dist_hang.py"), "-o", "step.json", "--rank-timeout", "5"], True),
    ]:
        (base / name).mkdir()
        started[name] = _Run(args, base / name, launcher)
    yield started
    for r in started.values():
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.communicate()


def _multi(run: _Run) -> MultiTrace:
    rc, out, err = run.result()
    assert rc == 0, err[-3000:]
    return MultiTrace.from_json((run.cwd / "step.json").read_text())


def _param_grads(trace: gradtrace.Trace) -> dict[str, Any]:
    return {n.label: n.grads[0] for n in trace.nodes if n.kind == "param"}


def _close(stats: Any, t: torch.Tensor) -> None:
    t = t.double()
    assert tuple(stats.shape) == tuple(t.shape)
    assert stats.norm == pytest.approx(float(t.norm()), rel=1e-5, abs=1e-9)
    assert stats.mean == pytest.approx(float(t.mean()), rel=1e-5, abs=1e-9)
    assert stats.max == pytest.approx(float(t.max()), rel=1e-5, abs=1e-9)


def _ddp_local_grads(rank: int) -> dict[str, torch.Tensor]:
    mod = _module("dist_ddp_branch")
    net, x, y = mod.build(rank)
    ((net(x, rank) - y) ** 2).mean().backward()
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def test_ddp_every_rank_in_one_file_with_local_and_reduced_gradients(runs: dict[str, _Run]) -> None:
    multi = _multi(runs["ddp"])
    assert multi.world_size == 2 and [r.rank for r in multi.ranks] == [0, 1]
    rc, out, err = runs["ddp"].result()
    assert err.count("gradtrace: wrote") == 1, err  # only rank 0 writes and prints
    local = {r: _ddp_local_grads(r) for r in (0, 1)}
    for r in multi.ranks:
        drawn = _param_grads(r.trace)
        assert {f"module.{k}" for k in local[r.rank]} == set(drawn)  # DDP's wrapper is the root module
        for name, g in local[r.rank].items():
            _close(drawn[f"module.{name}"], g)  # the drawn gradient is this rank's own, before the all-reduce
        assert any("before the all-reduce" in n for n in r.trace.notes)
        # After: DDP's average over the 2 ranks; a parameter rank 0 did not use counts as zero there.
        for c in r.collective:
            name = r.trace.node(c.node).label.removeprefix("module.")
            mean = (local[0].get(name, torch.zeros_like(local[1][name])) + local[1][name]) / 2
            assert c.op == "all_reduce" and c.shape == tuple(mean.shape)
            _close(c.reduced, mean)
        assert {r.trace.node(c.node).label for c in r.collective} == set(_param_grads(r.trace))


def test_ddp_rank_dependent_branch_and_unused_parameter_are_found(runs: dict[str, _Run]) -> None:
    multi = _multi(runs["ddp"])
    found = {(f.kind, rank) for rank, f in multi.findings()}
    assert ("graph_differs", 1) in found
    missing = [(r, f) for r, f in multi.findings() if f.kind == "missing_grad_rank"]
    # Each finding is paired with the rank whose trace holds its node (here rank 1, the one that used them).
    assert sorted(multi.trace(r).node(f.node).label for r, f in missing) == ["module.extra.bias", "module.extra.weight"]
    assert all("no gradient on rank 0" in f.message for _, f in missing)
    assert not any(f.kind == "reduced_differs" for _, f in multi.findings())


def test_fsdp2_local_gradient_and_reduced_shard(runs: dict[str, _Run]) -> None:
    multi = _multi(runs["fsdp"])
    mod = _module("dist_fsdp")
    local = {}
    for rank in (0, 1):
        net, x, y = mod.build(rank)
        ((net(x) - y) ** 2).mean().backward()
        local[rank] = {name: p.grad.clone() for name, p in net.named_parameters()}
    for r in multi.ranks:
        drawn = _param_grads(r.trace)
        assert set(drawn) == set(local[r.rank])  # named like the model's parameters, not "leaf 0"
        for name, g in local[r.rank].items():
            _close(drawn[name], g)  # the whole local gradient, before the reduce-scatter
        assert any("reduce-scatter" in n for n in r.trace.notes)
        assert not any("released" in n for n in r.trace.notes)  # every value was read
        for c in r.collective:
            name = r.trace.node(c.node).label
            mean = (local[0][name] + local[1][name]) / 2
            shard = torch.chunk(mean, 2, dim=0)[r.rank]  # FSDP2 shards dim 0: rank k holds chunk k
            assert c.op == "reduce_scatter" and c.shape == tuple(mean.shape) and "Shard(dim=0)" in c.placements
            if shard.numel():
                _close(c.reduced, shard)
            else:
                assert c.reduced.numel == 0


def test_nan_on_rank_1_only_named_by_check_with_alarm_status(runs: dict[str, _Run]) -> None:
    rc, out, err = runs["nan"].result()
    assert rc == 1, err[-3000:]  # the launcher passes rank 0's status (an alarm) on
    doc = json.loads(out)
    assert doc["world_size"] == 2 and doc["exit_status"] == 1
    origin = [f for f in doc["findings"] if f["kind"] == "nonfinite_origin_rank"]
    assert len(origin) == 1 and origin[0]["rank"] == 1 and origin[0]["label"] == "sqrt"
    assert "first on rank 1" in origin[0]["message"] and "Rank 0 computed finite values" in origin[0]["message"]
    # The all-reduce averaged rank 1's NaN gradients into every rank's.
    assert "the collective spread it: the reduced gradients on ranks 0, 1 hold NaN/inf" in origin[0]["message"]
    # Rank 0's own step is finite: only rank 1's trace holds the forward NaN.
    own = {(f["rank"], f["kind"]) for f in doc["findings"]}
    assert (1, "nan_forward") in own and (0, "nan_forward") not in own


def test_one_rank_failing_ends_every_rank_with_the_rank_named(runs: dict[str, _Run]) -> None:
    rc, out, err = runs["fail"].result()
    assert rc != 0
    assert "rank 1 could not load its batch" in err  # the script's own traceback, from rank 1
    assert "rank 1" in err and "no step to trace" in err
    assert not (runs["fail"].cwd / "step.json").exists()


def test_a_hanging_rank_ends_the_run_after_the_rank_timeout(runs: dict[str, _Run]) -> None:
    # Rank 1 sleeps an hour before its step. Rank 0 gives up after --rank-timeout and must end with a failure
    # status: exiting 0 (as a launched rank 0 does when every rank is done) left torchrun waiting on rank 1.
    rc, out, err = runs["hang"].result()
    assert rc == 1, err[-2000:]
    assert "rank 1 did not finish its step within 5 s" in err
    assert not (runs["hang"].cwd / "step.json").exists()
