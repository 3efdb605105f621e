"""What ``check --every-step`` says when it cannot name a broken step (tryout5 26)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import torch, torch.nn as nn
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for step in range(1, 21):
    x = torch.randn(16, 4)
    if step == 7:
        x[3, 1] = float("nan")
    loss = m(x).pow(2).mean()
    if not torch.isfinite(loss):  # the usual guard: the script stops itself before backward()
        raise FloatingPointError(f"loss is {loss.item()} at step {step}")
    opt.zero_grad(); loss.backward(); opt.step()
"""


def test_a_script_that_stops_itself_on_a_nan_loss_is_told_which_step_went_unchecked(tmp_path):
    # Before: 'no broken step found, and the run did not finish' only, as if the sentinel had looked at step 7.
    script = tmp_path / "guard.py"
    script.write_text(SCRIPT, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "gradtrace", "check", str(script), "--every-step"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 5, done.stderr[-2000:]
    assert "FloatingPointError: loss is nan at step 7" in done.stderr
    assert "after 6 steps" in done.stderr
    assert "guard.py raised during step 7, before that step's optimizer step" in done.stderr
    assert "step 7 was not checked" in done.stderr
