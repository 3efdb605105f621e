"""The course's CNN loop (pool called twice), with a Normalize-like transform before the model."""

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


class Normalize(nn.Module):  # like torchvision's transform: a module called on each sample first
    def forward(self, x):
        return (x - 0.5) / 0.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.fc1 = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc1.forward(x)  # called through .forward(): no module hooks run


def main():
    torch.manual_seed(0)
    transform = Normalize()
    net = Net()
    optimizer = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    criterion = nn.CrossEntropyLoss()
    raw = torch.rand(4, 1, 14, 14)
    labels = torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        inputs = torch.stack([transform(img) for img in raw])
        optimizer.zero_grad()
        loss = criterion(net(inputs), labels)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
