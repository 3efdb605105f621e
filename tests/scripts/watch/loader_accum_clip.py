"""Real-world conditions at once: DataLoader workers, gradient accumulation (2 micro-steps), clipping, an LR schedule."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

if __name__ == "__main__":
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(96, 5), torch.randint(0, 2, (96,)))
    loader = DataLoader(data, batch_size=8, num_workers=2, shuffle=False)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for i, (x, y) in enumerate(loader):
        F.cross_entropy(model(x), y).div(2).backward()
        if i % 2 == 1:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            sched.step()
            opt.zero_grad()
