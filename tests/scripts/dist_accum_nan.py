"""DDP on gloo with gradient accumulation: ACCUM micro-steps per optimizer step, all but the last under no_sync().

Arguments: STEPS AT. Rank 1 alone puts one NaN into its input in micro-step 1 of step AT, and only there: its loss
is NaN in that micro-step, its .grad holds NaN from then on, and the all-reduce of the step's last micro-step (whose
own gradients are finite on both ranks) spreads it to rank 0.
"""

import contextlib
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

ACCUM = 2
LR = 0.05


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def batch(rank: int, step: int, micro: int, nan_at: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + 10 * step + micro)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)
    if rank == 1 and step == nan_at and micro == 0:
        x[0, 0] = float("nan")  # micro-step 1 of step AT, rank 1 only
    return x, y


if __name__ == "__main__":
    steps, at = int(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DDP(build())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(1, steps + 1):
        for micro in range(ACCUM):
            x, y = batch(rank, step, micro, at)
            with model.no_sync() if micro < ACCUM - 1 else contextlib.nullcontext():
                loss = ((model(x) - y) ** 2).mean() / ACCUM
                loss.backward()
        opt.step()
        opt.zero_grad()
    dist.destroy_process_group()
