"""What the watch engine reads off torch objects: a graph's leaves, the optimizers holding them, a learning
rate, a loss value, a module's first float output, whether a call is still under way."""

from __future__ import annotations

from typing import Any

import torch

from ..recorder.stats import invisible
from .cheap import local

__all__ = ["first_float_tensor", "graph_leaves", "loss_value", "lr_of", "on_stack", "optimizer_holding"]


def graph_leaves(tensors: Any) -> set[int]:
    """id() of the tensors a backward from ``tensors`` accumulates gradients into (walked once, at the first backward())."""
    roots = [tensors] if isinstance(tensors, torch.Tensor) else [t for t in tensors if isinstance(t, torch.Tensor)] \
        if isinstance(tensors, (list, tuple)) else []
    todo = [t.grad_fn for t in roots if t.grad_fn is not None]
    seen: set[int] = set()
    leaves: set[int] = set()
    while todo:  # (iterative: graphs reach tens of thousands of nodes)
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.add(id(variable))
        todo.extend(n for n, _ in node.next_functions if n is not None)
    return leaves


def optimizer_holding(leaves: set[int]) -> bool:
    """Whether an optimizer holds any of ``leaves``: then its step(), not the backward(), ends a step. (Any other
    optimizer alive in the process, a notebook's earlier one, says nothing about this loop.)"""
    import gc

    base = torch.optim.Optimizer
    for o in gc.get_objects():
        if issubclass(type(o), base):  # (type(): no lazy module's __getattr__ runs)
            groups = getattr(o, "param_groups", None) or []
            if any(id(p) in leaves for g in groups for p in g.get("params", ())):
                return True
    return False


def lr_of(group: dict[str, Any]) -> float | None:
    lr = group.get("lr")
    if isinstance(lr, torch.Tensor):
        return float(lr.item())
    return float(lr) if isinstance(lr, (int, float)) else None


def on_stack(frame: Any, top: Any) -> bool:
    """Whether ``frame`` is ``top`` or one of its callers (a call still under way)."""
    f = top
    while f is not None:
        if f is frame:
            return True
        f = f.f_back
    return False


def loss_value(root: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), invisible():
        return local(root.detach()).float().reshape(()).clone()


def first_float_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() and not output.is_meta else None
    if isinstance(output, (list, tuple)):
        for x in output:
            t = first_float_tensor(x)
            if t is not None:
                return t
    if isinstance(output, dict):
        for x in output.values():
            t = first_float_tensor(x)
            if t is not None:
                return t
    return None
