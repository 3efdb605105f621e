"""A small regression whose loss turns NaN at a step in the hundreds: the log of a value that SGD drives to <= 0.

``build()`` and ``batch()`` are imported by the tests, which train the same model without gradtrace (the oracle).
"""
import os
import sys

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log(self.lin(h))  # NaN once lin's output drifts to <= 0


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.head.lin.bias.fill_(4.0)
        model.head.lin.weight.mul_(0.1)
    return model, torch.optim.SGD(model.parameters(), lr=0.015)


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 3, generator=g) * 0.1
    if "--noise" in sys.argv:  # a script that is not deterministic: noise from the OS, which no seed controls
        x = x + 1e-4 * torch.frombuffer(bytearray(os.urandom(16 * 3)), dtype=torch.uint8).reshape(16, 3).float() / 255
    return x


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    return model(batch(step)).mean()


if __name__ == "__main__":
    model, opt = build()
    for step in range(1, 1001):
        opt.zero_grad()
        loss = loss_of(model, step)
        loss.backward()
        opt.step()
    print("trained", float(loss))
