"""One check of every place gradtrace may touch, to run after any capture, success or failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.optim import optimizer as optimizer_globals

_MODULE_GLOBALS = sorted(n for n in dir(module_globals) if n.startswith("_global_") and n.endswith("hooks"))
_OPTIMIZER_GLOBALS = ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")
_PER_MODULE = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_always_called")


@dataclass
class Snapshot:
    globals: dict[str, Any]
    modules: list[tuple[str, bool, dict[str, Any]]]
    grads: list[tuple[str, torch.Tensor | None, torch.Tensor | None]]


def _tensors(model: Any, extra: tuple[torch.Tensor, ...]) -> list[tuple[str, torch.Tensor]]:
    out = list(model.named_parameters()) if isinstance(model, nn.Module) else []
    return out + [(f"extra{i}", t) for i, t in enumerate(extra)]


def snapshot(model: Any = None, *extra: torch.Tensor) -> Snapshot:
    g: dict[str, Any] = {name: dict(getattr(module_globals, name)) for name in _MODULE_GLOBALS}
    g.update({name: dict(getattr(optimizer_globals, name)) for name in _OPTIMIZER_GLOBALS})
    g["dispatch_stack"] = torch._C._len_torch_dispatch_stack()
    g["gc enabled"] = __import__("gc").isenabled()
    g["function_stack"] = torch._C._len_torch_function_stack()
    g["autograd.backward"] = torch.autograd.backward
    g["autograd.grad"] = torch.autograd.grad
    g["grad mode"] = torch.is_grad_enabled()
    g["inference mode"] = torch.is_inference_mode_enabled()
    g["anomaly mode"] = torch.is_anomaly_enabled()
    g["deterministic"] = torch.are_deterministic_algorithms_enabled()
    g["Tensor.backward"] = torch.Tensor.backward
    g["Optimizer.step"] = {c: c.__dict__.get("step") for c in (torch.optim.SGD, torch.optim.Adam, torch.optim.Optimizer)}
    modules = []
    if isinstance(model, nn.Module):
        for name, m in model.named_modules():
            modules.append((name, m.training, {a: dict(getattr(m, a, {}) or {}) for a in _PER_MODULE}))
    grads = [(n, t.grad, None if t.grad is None else t.grad.clone()) for n, t in _tensors(model, extra)]
    return Snapshot(g, modules, grads)


def assert_untouched(before: Snapshot, model: Any = None, *extra: torch.Tensor, grads: bool = True) -> None:
    """Fail with the first difference between now and ``before``.

    ``grads=False`` after a ``capture()`` block whose own ``backward()`` was meant to fill ``.grad``.
    """
    after = snapshot(model, *extra)
    for key, value in before.globals.items():
        assert after.globals[key] == value, f"{key} changed: {value!r} -> {after.globals[key]!r}"
    assert len(after.modules) == len(before.modules)
    for (name, training, hooks), (_, training2, hooks2) in zip(before.modules, after.modules):
        assert training == training2, f"module {name!r}: training {training} -> {training2}"
        assert hooks == hooks2, f"module {name!r}: hooks changed {hooks} -> {hooks2}"
    for (name, grad, copy), (_, grad2, _) in zip(before.grads, after.grads) if grads else ():
        assert grad2 is grad, f"{name}.grad was replaced ({grad!r} -> {grad2!r})"
        if copy is not None:
            assert torch.equal(grad2, copy), f"{name}.grad was modified in place"
