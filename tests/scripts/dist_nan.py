"""A DDP step where rank 1 alone makes a NaN (the square root of a negative number, whose gradient is NaN too);
the all-reduce spreads it to every rank's gradients."""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(5, 4)
    shift = -10.0 if rank == 1 else 10.0
    loss = torch.sqrt(model(x) + shift).mean()
    loss.backward()
    opt.step()
