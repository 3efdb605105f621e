"""Trains in a child made with a bare os.fork(), not multiprocessing."""

import os

import torch

w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
if os.fork() == 0:
    (w * 2).sum().backward()
    os._exit(0)
os.wait()
