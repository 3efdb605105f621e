"""Prints on stdout in every way a script can (print, sys.__stdout__, file descriptor 1, atexit) around one SGD step."""

import atexit
import os
import sys

import torch

atexit.register(lambda: print("atexit: bye"))
print("loading data...")
sys.__stdout__.write("epoch 0 (sys.__stdout__)\n")
sys.__stdout__.flush()
os.write(1, b"epoch 0 (fd 1)\n")
w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
x = torch.tensor([0.5, 4.0, -1.5])
opt = torch.optim.SGD([w], lr=0.1)
loss = (w * x).sum()
loss.backward()
opt.step()
print("after the step")
