"""Rank 1 hangs before its step (a stuck data pipeline); rank 0 records its own step and waits for rank 1."""

import time

import torch
import torch.distributed as dist
from torch import nn

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = nn.Linear(4, 1)
    if rank == 1:
        time.sleep(3600)
    model(torch.randn(5, 4)).pow(2).mean().backward()
