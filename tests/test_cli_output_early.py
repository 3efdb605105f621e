"""Bad -o refused at once, before any script runs or any rank starts (tryout5 24 and 29).

- check --every-step with -o - (or a path that is standard output): the findings are printed on standard output, so
  the trace there too made two JSON documents back to back (--json) or JSON then a table: a usage error, before the
  script runs;
- with --nproc-per-node, a bad -o (unknown suffix, missing folder) for render, check --every-step and watch: one
  error from the launching process, before torch.distributed.run starts (it was printed once per rank, after
  importing torch, followed by torchrun's failure dump)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
from pathlib import Path
Path(__file__).with_name("ran").write_text("the script ran")
import torch
w = torch.ones(2, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
for _ in range(2):
    opt.zero_grad(); (w * w).sum().backward(); opt.step()
"""


def _gradtrace(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, "-m", "gradtrace", *[a.replace("SCRIPT", str(script)) for a in args]],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("out", ["-", "/dev/stdout"])
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_check_every_step_refuses_the_trace_on_standard_output(tmp_path: Path, out: str, as_json: bool) -> None:
    done = _gradtrace(tmp_path, "check", "SCRIPT", "--every-step", *(["--json"] if as_json else []), "-o", out)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "-o - (standard output) does not go with check --every-step" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "ran").exists()  # refused before the script ran


def test_check_every_step_json_to_a_file_is_still_one_document(tmp_path: Path) -> None:
    import json

    done = _gradtrace(tmp_path, "check", "SCRIPT", "--every-step", "--json", "-o", str(tmp_path / "t.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["first_bad_step"] is None


@pytest.mark.parametrize("command", [["render"], ["check", "--every-step"], ["watch"]], ids=lambda c: c[0])
@pytest.mark.parametrize("out", ["x.foo", "/nonexistent/dir/run.json"], ids=["suffix", "folder"])
def test_nproc_per_node_checks_output_before_launching(tmp_path: Path, command: list[str], out: str) -> None:
    done = _gradtrace(tmp_path, command[0], "--nproc-per-node", "2", "SCRIPT", *command[1:], "-o", out)
    assert done.returncode in (1, 2), done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr[-3000:]  # once, from the launching process
    assert ("format" in errors[0] or "suffix" in errors[0]) if out == "x.foo" else "does not exist" in errors[0]
    assert "ChildFailedError" not in done.stderr and "torch.distributed" not in done.stderr
    assert not (tmp_path / "ran").exists()
