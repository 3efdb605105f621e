"""Ends with os._exit(7) after its SGD step: no atexit, no finally, no flush."""

import os

import torch

w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
x = torch.tensor([0.5, 4.0, -1.5])
opt = torch.optim.SGD([w], lr=0.1)
(w * x).sum().backward()
opt.step()
print("stepped", flush=True)
os._exit(7)
