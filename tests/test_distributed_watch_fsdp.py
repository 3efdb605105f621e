"""FSDP2 (fully_shard) under ``watch`` and ``check --every-step``: real 2-process gloo runs (tryout5 07: both died
with 'tolist() is not supported for tensor subclasses, got DTensor' and wrote nothing; the first step's loss was
also lost, the script taken at its first backward() for one without an optimizer).

Each rank's parameters and gradients are DTensors: watch describes this rank's local shard (nothing gathered), and
the script itself writes torch's numbers of the same shards (to_local()) as the oracle."""

from __future__ import annotations

import json
import math

import pytest

from gradtrace.watching.rankhistory import load_history

from tests.test_distributed_runs import SCRIPTS, _Run

SCRIPT = str(SCRIPTS / "dist_fsdp_watch.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("fsdpwatch")
    started = {}
    for name, args in [("watch", ["watch", "--every", "1", SCRIPT, "-o", "run.json", "--", "6", "0", "torchRANK.json"]),
                       ("nan", ["check", "--every-step", SCRIPT, "-o", "bad.json", "--", "6", "4", "torchRANK.json"])]:
        (base / name).mkdir()
        started[name] = _Run(args, base / name)
    yield started
    for r in started.values():
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.communicate()


def test_watch_of_an_fsdp2_run_measures_each_ranks_shards_as_torch_does(runs):
    status, _, err = runs["watch"].result()
    assert status == 0, err[-3000:]
    h = load_history(runs["watch"].cwd / "run.json")
    for rank in (0, 1):
        torch_says = json.loads((runs["watch"].cwd / f"torch{rank}.json").read_text())
        d = h.history(rank).to_dict()
        assert d["steps"] == list(range(1, 7))
        assert d["loss"] == pytest.approx([s["loss"] for s in torch_says], rel=1e-6), "every step's loss, step 1 too"
        for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
            series = d["series"]["param"][name]
            assert series["grad_norm"] == pytest.approx([s["grad_norm"][name] for s in torch_says], rel=1e-5), name
            assert series["update_ratio"] == pytest.approx([s["update_ratio"][name] for s in torch_says], rel=1e-4), name
        assert [o["type"] for o in d["optimizers"]] == ["AdamW"]


def test_check_every_step_of_an_fsdp2_run_names_the_step_and_the_rank(runs):
    status, out, err = runs["nan"].result()
    assert status == 1, err[-3000:]
    torch_says = json.loads((runs["nan"].cwd / "torch1.json").read_text())
    assert math.isnan(torch_says[3]["loss"]) and all(math.isfinite(s["loss"]) for s in torch_says[:3])
    assert "step 4 is the first broken step, on rank 1" in out + err, (out + err)[-3000:]
    assert (runs["nan"].cwd / "bad.json").exists()
