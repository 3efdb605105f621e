"""The classic training loop from the course, on synthetic digit-like data (no downloads).

    zero_grad → forward → loss → backward → step

`gradtrace render examples/training_loop.py` draws one step of it: every
operation of the forward, the gradient that came back to it, the order
backprop visited it in, and the update SGD made to each weight.

    python examples/training_loop.py [--epochs N] [--lr LR]
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.fc1(x.flatten(1)))
        return F.log_softmax(self.fc2(x), dim=1)


def digits(n, generator):
    """8×8 'digits': each class is a fixed random stroke pattern plus noise."""
    patterns = torch.rand(10, 8, 8, generator=generator) > 0.6
    targets = torch.randint(0, 10, (n,), generator=generator)
    images = patterns[targets].float() + 0.3 * torch.randn(n, 8, 8, generator=generator)
    return images, targets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.001)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images, targets = digits(512, torch.Generator().manual_seed(0))
    trainloader = DataLoader(TensorDataset(images, targets), batch_size=32, shuffle=True)

    net = Net().to(device)
    loss_fn = nn.NLLLoss()
    optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        total = 0.0
        for inputs, targets in trainloader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()

            outputs = net(inputs)
            loss = loss_fn(outputs, targets)

            loss.backward()
            optimizer.step()
            total += loss.item()
        print(f"epoch {epoch + 1}: loss {total / len(trainloader):.4f}")


if __name__ == "__main__":
    main()
