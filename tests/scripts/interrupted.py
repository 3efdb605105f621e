"""Waits for Ctrl-C (SIGINT) before its first backward ("before"), after its SGD step ("after") or after a backward
with no optimizer ("no-optimizer": gradtrace waits for a step() or the next backward()); argv[1] is a marker file."""

import sys
import time
from pathlib import Path

import torch

marker, when = Path(sys.argv[1]), sys.argv[2]
w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
x = torch.tensor([0.5, 4.0, -1.5])
opt = torch.optim.SGD([w], lr=0.1)
if when == "after":
    (w * x).sum().backward()
    opt.step()
if when == "no-optimizer":
    (w * x).sum().backward()
if when == "raise":
    raise KeyboardInterrupt
marker.write_text("waiting\n")
while True:  # a long training loop, interrupted by the user
    time.sleep(0.01)
