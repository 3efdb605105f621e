"""check --every-step when the run spans several nodes (tryout5 27): no re-run is possible there, so the run
says only that (no "running ... again" line first), names no rank it cannot know to be the origin, and --json
still writes one JSON document. Several nodes are two ranks on this machine told LOCAL_WORLD_SIZE=1 each."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import torch, torch.nn as nn, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(rank)
    for step in range(1, 7):
        out = model(torch.randn(16, 6, generator=g))
        if rank == 1 and step == 3:
            out = out.log()          # NaN born on rank 1 at step 3
        loss = out.pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    dist.destroy_process_group()
""")


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "late_nan.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
           "env", "LOCAL_WORLD_SIZE=1", sys.executable, "-m", "gradtrace", "check", str(script), "--every-step",
           "-o", str(tmp_path / "out.html"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_several_nodes_say_only_that_the_step_is_not_re_run(tmp_path: Path, as_json: bool) -> None:
    done = _run(tmp_path, *(["--json"] if as_json else []))
    both = done.stdout + done.stderr
    assert done.returncode == 1, both[-3000:]
    assert "not re-run to trace it: the run spans several nodes" in done.stderr, both[-3000:]
    assert "again on 2" not in both  # no re-run is promised
    assert not (tmp_path / "out.html").exists()
    if as_json:
        doc = json.loads(done.stdout)  # one document, the findings
        assert doc["first_bad_step"] == 3 and doc["trace_file"] is None and doc["rank"] is None
        assert {a["rank"] for a in doc["alarms"]} >= {1}
    else:
        line = next(x for x in done.stdout.splitlines() if "first broken step" in x)
        assert line.startswith("gradtrace check: step 3 is the first broken step: ") and "rank 1:" in line
        assert ", on rank 0" not in line  # rank 0 only got the NaN from the all-reduce
