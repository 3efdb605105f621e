import os
import sys

import torch

from helper import SCALE  # a sibling module, found because sys.path[0] is this folder

print("argv", sys.argv[1:])
print("name", __name__)
print("cwd", os.getcwd())
print("path0", sys.path[0])
w = torch.tensor([1.0, 2.0], requires_grad=True)
(w * SCALE).sum().backward()
