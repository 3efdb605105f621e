"""Uneven step counts under torchrun: each rank trains its own model after init_process_group (a sweep, or DDP with
Join), rank 0 for SHORT steps, rank 1 for LONG steps, and rank 1's input holds an inf at step AT > SHORT.
Arguments: SHORT LONG AT.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn


def build(rank: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(rank)
    m = nn.Linear(4, 1)
    return m, torch.optim.SGD(m.parameters(), lr=0.01)


def batch(rank: int, step: int, at: int) -> torch.Tensor:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(100 * rank + step))
    if rank == 1 and step == at:
        x[0, 0] = float("inf")
    return x


if __name__ == "__main__":
    short, long, at = map(int, sys.argv[1:4])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    m, opt = build(rank)
    for step in range(1, (short if rank == 0 else long) + 1):
        loss = m(batch(rank, step, at)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.destroy_process_group()
