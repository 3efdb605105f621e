"""A DDP step on gloo/CPU where rank 1 takes a branch rank 0 does not: its graph differs, and the
branch's parameters get a gradient on rank 1 only (find_unused_parameters=True); gradients are views of DDP's buckets. Run under torchrun."""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.extra = nn.Linear(3, 3)
        self.fc2 = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, rank: int) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        if rank == 1:  # the rank-dependent branch
            h = h + torch.relu(self.extra(h))
        return self.fc2(h)


def build(rank: int) -> tuple[Net, torch.Tensor, torch.Tensor]:
    """The same model on every rank (seed 0); each rank's own batch (seed 100 + rank)."""
    torch.manual_seed(0)
    net = Net()
    g = torch.Generator().manual_seed(100 + rank)
    return net, torch.randn(5, 4, generator=g), torch.randn(5, 1, generator=g)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net, x, y = build(rank)
    model = DDP(net, find_unused_parameters=True, gradient_as_bucket_view=True)  # .grad is reduced in place
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        loss = ((model(x, rank) - y) ** 2).mean()
        loss.backward()
        opt.step()
    dist.destroy_process_group()
