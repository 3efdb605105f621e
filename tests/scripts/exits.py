"""Calls sys.exit(CODE) at a chosen point: argv = WHEN CODE, WHEN one of before/after, CODE an int, 'none' or text."""

import sys

import torch

when, code = sys.argv[1], sys.argv[2]
code = None if code == "none" else int(code) if code.lstrip("-").isdigit() else code
w = torch.ones(2, requires_grad=True)
if when == "before":
    sys.exit(code)
(w * 2).sum().backward()
print("backward done", flush=True)
sys.exit(code)
