"""Rank 1 raises before its first backward(); rank 0 waits in DDP's all-reduce for it."""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DDP(nn.Linear(4, 1))
    if rank == 1:
        raise ValueError("rank 1 could not load its batch")
    model(torch.randn(5, 4)).sum().backward()
