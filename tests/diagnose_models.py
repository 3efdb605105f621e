"""Models built so that the diagnosis is known in advance."""

from __future__ import annotations

import torch
from torch import nn


class LogOfNegative(nn.Module):
    """`encoder.stem` takes the log of a value that is negative: NaN is born there."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        self.encoder.add_module("proj", nn.Linear(4, 4))
        self.encoder.add_module("stem", Log())
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x))).mean()


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 10.0)  # x stays far below 10: every element is the log of a negative number


class SqrtAtZero(nn.Module):
    """sqrt(0) is a fine 0 in the forward; its derivative 1/(2·sqrt(0)) is inf in the backward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x)) * 0.0  # exact zeros
        return torch.sqrt(h).sum()


def deep_sigmoid(depth: int = 20, width: int = 16) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers)


def huge_init(depth: int = 8, width: int = 32) -> nn.Sequential:
    net = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) if i < depth - 1 else nn.Linear(width, width) for i in range(depth)])
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 5.0)  # far beyond 1/sqrt(width)
    return net


class DeadReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 2)
        with torch.no_grad():
            self.fc1.bias.fill_(-100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Healthy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))), dim=1)
