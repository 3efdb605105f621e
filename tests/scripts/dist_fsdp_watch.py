"""FSDP2 (fully_shard per layer and at the root) trained for a few steps on gloo/CPU; rank 1 reads a NaN at
step NAN_STEP (argv[2], 0: never). Each rank writes what torch says of its own shards at every step (the test's
oracle, measured with to_local() beside the run): loss, each parameter's local gradient norm and update ratio."""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

steps, nan_step, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
for layer in (model[0], model[2]):
    fully_shard(layer)
fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=0.01)
g = torch.Generator().manual_seed(100 + rank)
seen = []
for step in range(1, steps + 1):
    x, y = torch.randn(8, 12, generator=g), torch.randint(0, 4, (8,), generator=g)
    if step == nan_step and rank == 1:
        x[0, 0] = float("nan")
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    before = {n: p.detach().to_local().double().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.to_local().double().norm().item() for n, p in model.named_parameters()}
    opt.step()
    ratio = {n: ((p.detach().to_local().double() - before[n]).norm() / before[n].norm()).item()
             for n, p in model.named_parameters()}
    seen.append({"loss": loss.item(), "grad_norm": grads, "update_ratio": ratio})
with open(log.replace("RANK", str(rank)), "w") as f:
    json.dump(seen, f)
dist.destroy_process_group()
