"""Hunting a NaN: a model takes the log of a number that is not positive.

    gradtrace check examples/nan_hunt.py       # names the op and the module; exits 1
    gradtrace render examples/nan_hunt.py      # the origin is drawn in red, marked "NaN starts here"

Everything downstream of the log is NaN too; the diagnosis points at the
first op whose inputs were finite and whose output was not.

    python examples/nan_hunt.py [--fixed]
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


class LogFeatures(nn.Module):
    def __init__(self, fixed):
        super().__init__()
        self.fixed = fixed

    def forward(self, x):
        if self.fixed:
            return torch.log1p(F.softplus(x))  # always positive inside the log
        return torch.log(x)  # x can be negative: log gives NaN there


class Net(nn.Module):
    def __init__(self, fixed=False):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.features = LogFeatures(fixed)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.features(self.proj(x)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed", action="store_true", help="use log1p(softplus(x)) instead of log(x)")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = Net(args.fixed)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    loss = F.mse_loss(net(x), y)
    loss.backward()
    print(f"loss = {loss.item()}")


if __name__ == "__main__":
    main()
