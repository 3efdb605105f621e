import sys

import torch

w = torch.ones(2, requires_grad=True)
print((w * 2).sum().item())
if "--exit" in sys.argv:
    sys.exit(0)
