"""DDP training over several steps on gloo, each rank its own batch: for ``watch`` and ``check --every-step``.

Arguments: STEPS [MODE AT]. MODE ``nan``: rank 1 alone takes the square root of a negative number at step AT
(its loss is NaN; the all-reduce spreads the NaN gradients to rank 0). MODE ``die``: rank 1 raises at step AT,
before its forward (rank 0 then waits in the all-reduce for a rank that is gone).
"""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)


LR = 0.05

if __name__ == "__main__":
    steps = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "healthy"
    at = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DDP(build())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(1, steps + 1):
        x, y = batch(rank, step)
        if mode == "die" and rank == 1 and step == at:
            raise RuntimeError(f"rank 1 lost its data at step {step}")
        out = model(x)
        if mode == "nan" and rank == 1 and step == at:
            out = torch.sqrt(out - 100.0)  # NaN on rank 1 only, at this step
        loss = ((out - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.destroy_process_group()
