"""Where gradients die: a deep sigmoid MLP beside the same depth with ReLU and residual connections.

    gradtrace render examples/vanishing_gradients.py -o sigmoid.svg -- --net sigmoid
    gradtrace render examples/vanishing_gradients.py -o residual.svg -- --net residual
    gradtrace check examples/vanishing_gradients.py -- --net sigmoid

The colours show it: in the sigmoid net, each layer multiplies the gradient
by at most 0.25 (the sigmoid's largest slope), so it fades from green near the
loss (magnitudes around 0.1 to 10) to dark purple near the input (below 1e-6). The residual net passes it through.

    python examples/vanishing_gradients.py [--net sigmoid|residual] [--depth N] [--steps N]
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)
        with torch.no_grad():
            self.fc.weight.mul_(0.3)  # small residual branches: the sum stays the size of its input

    def forward(self, x):
        return x + F.relu(self.fc(x))


def build(net, depth, width):
    if net == "sigmoid":
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.Sigmoid()]
        return nn.Sequential(*layers, nn.Linear(width, 1))
    return nn.Sequential(*[Residual(width) for _ in range(depth)], nn.Linear(width, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=["sigmoid", "residual"], default="sigmoid")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build(args.net, args.depth, width=16)
    x, y = torch.randn(64, 16), torch.randn(64, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = model[0].fc.weight if args.net == "residual" else model[0].weight
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}, |grad| of the first layer {first.grad.norm():.2e}")


if __name__ == "__main__":
    main()
