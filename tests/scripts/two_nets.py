"""A GAN-like step: two networks, both of whose parameters are in the traced graph, plus a transform called first."""

import torch
import torch.nn as nn


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(2, 3), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())

    def forward(self, x):
        return self.main(x)


def main():
    torch.manual_seed(0)
    netD, netG = Discriminator(), Generator()
    real = torch.randn(4, 3)
    netD(real).mean().backward()  # step 1: the discriminator alone (called first: it took the bare names)
    fake = netG(torch.randn(4, 2))
    netD(fake).mean().backward()  # step 2: both networks


if __name__ == "__main__":
    main()
