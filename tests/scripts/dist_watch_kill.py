"""dist_watch_ddp.py's DDP training, where rank 1 SIGKILLs itself at step AT, before its forward, as the out-of-memory
killer would: it writes nothing, and torchrun then SIGTERMs the surviving rank 0. Arguments: STEPS AT.
"""

import os
import signal
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dist_watch_ddp import LR, batch, build

if __name__ == "__main__":
    steps, at = int(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DDP(build())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(1, steps + 1):
        x, y = batch(rank, step)
        if rank == 1 and step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.destroy_process_group()
