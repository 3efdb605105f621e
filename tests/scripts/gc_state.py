"""Prints gc.isenabled() after every training step (--gc-off: the script turns the collector off itself)."""

import gc
import sys

import torch

if "--gc-off" in sys.argv:
    gc.disable()
w = torch.ones(3, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
for step in range(1, 5):
    opt.zero_grad()
    (w * w).sum().backward()
    print(f"after backward {step} gc {gc.isenabled()}", flush=True)
    opt.step()
    print(f"after step {step} gc {gc.isenabled()}", flush=True)
