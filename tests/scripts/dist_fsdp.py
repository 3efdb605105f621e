"""An FSDP2 (fully_shard) step on gloo/CPU: parameters and gradients are DTensors sharded on dim 0."""

import torch
import torch.distributed as dist
from torch import nn


def build(rank: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    g = torch.Generator().manual_seed(100 + rank)
    return net, torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)


if __name__ == "__main__":
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net, x, y = build(rank)
    fully_shard(net[0])
    fully_shard(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = ((net(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    dist.destroy_process_group()
