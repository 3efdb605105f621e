import torch


def prepare():
    raise ValueError("bad data in the user's script")


w = torch.ones(2, requires_grad=True)
prepare()
(w * 2).sum().backward()
