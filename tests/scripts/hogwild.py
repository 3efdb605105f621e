"""Hogwild training: the backward() calls run in child processes (argv[1]: the start method, default fork)."""

import sys

import torch
import torch.multiprocessing as mp
import torch.nn as nn


def train(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    print("child trained", flush=True)


if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1] if len(sys.argv) > 1 else "fork")
    model = nn.Linear(4, 1)
    model.share_memory()
    workers = [ctx.Process(target=train, args=(model,)) for _ in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    print("exit codes", [p.exitcode for p in workers], flush=True)
