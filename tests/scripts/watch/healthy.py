"""A healthy tiny training run (500 steps by default): a small CNN-free MLP, Adam, a step LR schedule."""
import sys

import torch
import torch.nn.functional as F
from torch import nn

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 500
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.ReLU()), nn.Linear(16, 3))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(opt, 100, 0.5)
x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
for step in range(steps):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()
print("final loss", F.cross_entropy(model(x), y).item())
