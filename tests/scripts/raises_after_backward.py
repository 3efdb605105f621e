"""The step is recorded, then the script's own code fails."""

import torch

w = torch.tensor([1.0, -2.0], requires_grad=True)
(w * w).sum().backward()
raise RuntimeError("the user's script broke after its backward()")
