"""The course's training loop: Net, NLLLoss, SGD(lr=0.001, momentum=0.9), DataLoader, 100 epochs."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def build():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 20), torch.randint(0, 4, (64,)))
    net = Net()
    return net, nn.NLLLoss(), optim.SGD(net.parameters(), lr=0.001, momentum=0.9), DataLoader(data, batch_size=8)


def main():
    net, loss_fn, optimizer, trainloader = build()
    batch = 0
    for epoch in range(100):
        for inputs, targets in trainloader:
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = loss_fn(outputs, targets)
            loss.backward()
            optimizer.step()
            batch += 1
            print(f"done batch {batch}", flush=True)
    print("finished all epochs")
    sys.exit(0)


if __name__ == "__main__":
    main()
