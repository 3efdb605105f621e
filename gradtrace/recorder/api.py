"""The two ways to record a step from Python: ``trace()`` and ``with capture()``."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import CaptureError
from ..steptrace import Trace
from .session import Session, input_names

__all__ = ["Capture", "capture", "trace"]


def _float_tensors(obj: Any) -> list[torch.Tensor]:
    """Every floating-point tensor in a model's output: tensors, tuples, lists, dicts, dataclasses
    (transformers' ModelOutput is an OrderedDict and a dataclass), nested."""
    found: list[torch.Tensor] = []
    stack, seen = [obj], set()
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            if o.is_floating_point() or o.is_complex():
                found.append(o)
        elif id(o) in seen:
            continue
        elif isinstance(o, dict):
            seen.add(id(o))
            stack.extend(reversed(list(o.values())))
        elif isinstance(o, (list, tuple)):
            seen.add(id(o))
            stack.extend(reversed(o))
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            seen.add(id(o))
            stack.extend(reversed([getattr(o, f.name) for f in dataclasses.fields(o)]))
    return found


def _no_grad_loss(output: Any, value: torch.Tensor) -> str:
    """Why the loss does not require grad: the loss function broke the graph, or nothing required grad at all."""
    if any(t.requires_grad for t in _float_tensors(output)):
        kind = "" if value.is_floating_point() else f" (its dtype is {str(value.dtype).replace('torch.', '')})"
        return (f"the loss is not differentiable{kind}: the model's output requires grad, but loss(output) does not — the loss "
                "function cut the graph (argmax, round to an integer, a comparison, .item(), .detach() or torch.no_grad() inside it); "
                "use a differentiable loss such as F.cross_entropy(out, y) or out.pow(2).mean()")
    return "the loss does not require grad: no parameter or input of the model requires grad, so there is nothing to trace"


def _loss_tensor(output: Any, loss: Callable[[Any], Any] | None) -> torch.Tensor:
    if loss is not None:
        value = loss(output)
        if not isinstance(value, torch.Tensor):
            raise CaptureError(f"loss must return a scalar tensor, got {type(value).__name__}")
        if value.numel() != 1:
            raise CaptureError(
                f"loss must return a scalar tensor, got shape {tuple(value.shape)}: "
                "reduce it in the loss, e.g. loss=lambda out: F.mse_loss(out, y) or lambda out: f(out).mean()"
            )
        if value.is_complex():
            raise CaptureError("loss must be a real scalar: a complex loss has no gradient direction; take .abs() or .real")
        if not value.requires_grad:
            raise CaptureError(_no_grad_loss(output, value))
        return value.reshape(()) if value.dim() else value
    tensors = [t for t in _float_tensors(output) if t.requires_grad and not t.is_complex()]
    if not tensors:
        if _float_tensors(output):
            raise CaptureError(
                "the model's output does not require grad: no parameter or input requires grad "
                "(is the model frozen, or the call inside torch.no_grad()?)"
            )
        raise CaptureError(
            f"the model returned {type(output).__name__} with no real floating-point tensor to take a gradient of; "
            "pass loss=... to map the output to a scalar loss"
        )
    if len(tensors) == 1 and tensors[0].numel() == 1:
        t = tensors[0]
        return t.reshape(()) if t.dim() else t
    # Documented default: backward from the sum of every floating-point output.
    total = tensors[0].sum()
    for t in tensors[1:]:
        total = total + t.sum()
    return total


def trace(model: Callable[..., Any], *inputs: Any, loss: Callable[[Any], Any] | None = None) -> Trace:
    """Run one forward and backward of ``model(*inputs)`` and record every autograd node.

    ``loss`` maps the model's output to a scalar loss. Without it, the output
    itself is the loss when it is a scalar tensor; otherwise the loss is the
    sum of all floating-point tensors in the output (so each output element
    receives a gradient of one).

    The model is left exactly as it was: no hook stays installed,
    ``model.training`` is unchanged, and every ``.grad`` is what it was before
    (the gradients of this step live in the Trace).

    >>> import torch, torch.nn as nn, torch.nn.functional as F
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1))
    >>> t = trace(net, torch.randn(2, 4), loss=lambda out: F.nll_loss(out, torch.tensor([0, 2])))
    >>> t.node(t.loss).label
    'nll_loss'
    """
    if not callable(model):
        raise CaptureError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
    if loss is not None and not callable(loss):
        raise CaptureError(f"loss must be a callable mapping the model's output to a scalar, got {type(loss).__name__}")
    session = Session(model)
    session.set_input_names(input_names(model, len(inputs)))
    with session:
        session.add_inputs(inputs)
        output = model(*inputs)
        root = _loss_tensor(output, loss)
        del output
        session.record_backward([root], lambda: _backward_keeping_grads(session, root))
        return session.build_trace()


def _backward_keeping_grads(session: Session, root: torch.Tensor) -> None:
    """Backward that leaves every leaf's ``.grad`` as it was (the Trace keeps this step's gradients)."""
    assert session._walk is not None
    leaves = [n.variable for k, n in session._walk.nodes.items() if k[1] == "AccumulateGrad"]
    saved = [v.grad for v in leaves]
    session.keep_grads = True  # and leaves found only during the backward (a reentrant checkpoint's)
    try:
        for v in leaves:
            v.grad = None
        root.backward()
    finally:
        for v, g in zip(leaves, saved):
            v.grad = g
        session.restore_nested_grads()


class Capture:
    """What ``with gradtrace.capture() as cap:`` hands out; ``cap.trace`` after the block."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._trace: Trace | None = None
        self._closed = False

    @property
    def trace(self) -> Trace:
        """The recorded step. Available once the ``with`` block has ended."""
        if self._trace is not None:
            return self._trace
        if not self._closed:
            raise CaptureError("cap.trace is available after the `with gradtrace.capture()` block ends")
        s = self._session
        raise CaptureError(
            f"the capture block ran {s.backward_calls} backward() call(s); "
            f"step {s.step} was asked for, so there is no step to show"
        )


@contextmanager
def capture(model: nn.Module | None = None, *, step: int = 1) -> Iterator[Capture]:
    """Record the forward ops and the ``step``-th ``backward()`` inside a block of your own code.

    Ops recorded are those since the previous ``backward()`` (the forward of
    that step). An optimizer ``step()`` after the recorded backward, inside
    the block, is recorded too: each parameter node then carries its update.
    ``model`` names modules and parameters; without it they are named from
    the first module called in the block.

    >>> import torch, torch.nn as nn
    >>> net = nn.Linear(3, 1)
    >>> with capture(net) as cap:
    ...     net(torch.ones(2, 3)).pow(2).mean().backward()
    >>> cap.trace.node(cap.trace.loss).label
    'mean'
    """
    session = Session(model, step=step, intercept_backward=True)
    handle = Capture(session)
    with session:
        yield handle
    handle._closed = True
    if session.backward_recorded:
        handle._trace = session.build_trace()
