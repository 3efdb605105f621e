"""The user's own bug inside an op gradtrace records: torch raises it, under gradtrace's dispatch mode."""

import torch

w = torch.ones(3, 2, requires_grad=True)
x = torch.ones(4, 5)
(x @ w).sum().backward()
