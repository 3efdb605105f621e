"""backward() and the optimizer step() run in a worker thread; with "again" the main thread trains on after it."""

import sys
import threading

import torch

w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
x = torch.tensor([0.5, 4.0, -1.5])
opt = torch.optim.SGD([w], lr=0.1)


def train() -> None:
    opt.zero_grad()
    (w * x).sum().backward()
    opt.step()
    print("worker done")


worker = threading.Thread(target=train)
worker.start()
worker.join()
if sys.argv[1:] == ["again"]:
    train()
    print("main thread went on after its own backward")
