"""The one context manager that owns every hook, mode and patch gradtrace installs.

A :class:`Session` installs, on entry: global module hooks (module names), the
forward recorder (a dispatch mode), global optimizer-step hooks and, when
asked, a wrapper around ``torch.autograd.backward`` (to find the loss of a
block of user code). On exit, by success or by any exception (KeyboardInterrupt
included), it removes them all, in reverse order, in ``finally``.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import weakref
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.optim import optimizer as optimizer_hooks
from torch.utils._python_dispatch import _get_current_dispatch_mode, _pop_mode_temporarily

from ..errors import CaptureError
from ..records import OptimizerStep
from ..steptrace import Trace
from .assemble import assemble
from .backward import BackwardRecorder, GraphWalk, NodeKey, walk
from .forward import ForwardRecorder, grad_fn_of, node_id
from .modules import ModuleTracker
from .provenance import user_variables
from .intercept import ThreadFollower, claim, inside_autograd, install
from .gradnotes import GradNotes
from .nested import record_nested
from .stats import StatsBuffer, invisible

__all__ = ["Session", "input_names", "names_from_frames"]

META_MESSAGE = (
    "gradtrace needs real values, and the step ran on the 'meta' device, whose tensors have shapes but no data: "
    "move the model and inputs to a real device (e.g. model.to_empty(device='cpu') and initialise the parameters)"
)

_OPTIMIZER_SETTINGS = ("momentum", "dampening", "nesterov", "betas", "eps", "weight_decay", "alpha", "rho")


@dataclass
class _Input:
    label: str
    tensor: torch.Tensor
    stats: int


class Session:
    """Records one training step: the forward, the Nth backward, and the optimizer step after it.

    ``step`` counts ``backward()`` calls: the forward of step N is everything
    since the (N-1)th backward. ``on_optimizer_done`` is called once the
    optimizer step after the recorded backward is captured, and
    ``on_backward_after_recorded`` at any later ``backward()`` (the script
    runner stops the script there).
    """

    def __init__(self, model: Any = None, *, step: int = 1, intercept_backward: bool = False) -> None:
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise CaptureError(f"step must be a positive integer (the Nth backward() call), got {step!r}")
        self.step = step
        self.backward_calls = 0
        self.intercept_backward = intercept_backward
        self.stats = StatsBuffer()
        self.modules = ModuleTracker(model if isinstance(model, nn.Module) else None, self._on_root_call)
        self.recorder = ForwardRecorder(self.stats, self.modules)
        self.recorder.recording = step == 1
        self.inputs: list[_Input] = []
        self._input_ids: dict[int, int] = {}
        self._input_names: list[str] = []
        self._walk: GraphWalk | None = None
        self._recorded = False
        self._backward: BackwardRecorder | None = None
        self._leaf_stats: dict[NodeKey, int] = {}
        self._updates: dict[int, int] = {}  # id(variable) -> stats handle of w_after - w_before
        self._sgd_updates: dict[int, int] = {}  # id(variable) -> stats handle of the update plain SGD meant
        self._before_step: dict[int, torch.Tensor] = {}
        self.optimizer: OptimizerStep | None = None
        self.optimizer_done = False
        self._stack = ExitStack()
        self._gc_was_enabled: bool | None = None
        self._gc_functions: tuple[Callable[[], None], Callable[[], None], Callable[[], bool]] | None = None
        self._original_backward: Callable[..., Any] | None = None
        self._original_grad: Callable[..., Any] | None = None
        self._closed = False
        self._in_backward = False  # the recorded backward is running
        self.keep_grads = False  # trace(): .grad of every leaf is left as it was (the Trace has the gradients)
        self._nested_grads: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._threads = ThreadFollower(self.recorder)
        self.on_optimizer_done: Callable[[], None] | None = None
        self.on_backward_after_recorded: Callable[[], None] | None = None
        self._leaf_names: dict[int, str] = {}
        self.notes: list[str] = []
        self.grad_notes = GradNotes(model)  # what the gradient shown is (clipped, accumulated, closure, DDP)
        #: Called once the recorded backward has returned, with every leaf the graph reached (graph key ->
        #: tensor), before the optimizer may change them: gradtrace.distributed reads the reduced gradients here.
        self.after_backward: list[Callable[[dict[NodeKey, torch.Tensor]], None]] = []
        #: Called just before the recorded backward runs, with the same leaves: gradtrace.distributed reads the
        #: .grad each leaf already holds (accumulated under DDP's no_sync()), which the reduction will include.
        self.before_backward: list[Callable[[dict[NodeKey, torch.Tensor]], None]] = []
        #: Set by gradtrace.distributed: read each leaf's gradient, and the statistics held so far, as the gradient
        #: arrives, before a collective writes the reduced gradient into .grad (see BackwardRecorder.settle_at_leaves).
        self.settle_at_leaves = False
        #: graph key -> the node's key in the Trace, set by build_trace.
        self.trace_keys: dict[NodeKey, str] = {}

    # -- installing and removing -------------------------------------------------

    def __enter__(self) -> Session:
        stack = self._stack
        try:
            stack.callback(claim())  # first in, last out
            stack.callback(setattr, self, "_closed", True)
            stack.callback(self._leave_threads)
            stack.callback(self._release_tensors)
            stack.callback(self._resume_gc)
            if self.recorder.recording:
                self._pause_gc()
            stack.enter_context(module_hooks.register_module_forward_pre_hook(self.modules.pre_hook))
            stack.enter_context(module_hooks.register_module_forward_hook(self.modules.post_hook, always_call=True))
            stack.enter_context(optimizer_hooks.register_optimizer_step_pre_hook(self._optimizer_pre))
            stack.enter_context(optimizer_hooks.register_optimizer_step_post_hook(self._optimizer_post))
            # Always installed: besides the user's own steps (intercept_backward), a backward run from
            # inside the recorded one (a reentrant checkpoint's) must be seen.
            self._original_backward = torch.autograd.backward
            self._original_grad = torch.autograd.grad
            stack.callback(install(torch.autograd, "backward", self._patched_backward))
            stack.callback(install(torch.autograd, "grad", self._patched_grad))
            stack.enter_context(self.recorder)
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything this session installed (idempotent)."""
        try:
            if self._backward is not None:
                self._backward.remove()
        finally:
            self._stack.close()

    def _pause_gc(self) -> None:
        # Recording allocates many small objects; Python's cyclic collector would then run full
        # collections over the whole heap (torch's included) mid-step, at a cost that grows with
        # the model. It is paused while the step is recorded and resumed as soon as the backward
        # is recorded (or the session ends). The user's own gc.enable()/gc.disable()/gc.isenabled()
        # meanwhile act on the state to resume to, so a script that turns the collector off keeps it off.
        if self._gc_was_enabled is None:
            self._gc_was_enabled = gc.isenabled()
            gc.disable()
            self._gc_functions = (gc.enable, gc.disable, gc.isenabled)
            gc.enable = lambda: setattr(self, "_gc_was_enabled", True)  # type: ignore[assignment]
            gc.disable = lambda: setattr(self, "_gc_was_enabled", False)  # type: ignore[assignment]
            gc.isenabled = lambda: bool(self._gc_was_enabled)  # type: ignore[assignment]

    def _resume_gc(self) -> None:
        if self._gc_functions is not None:
            gc.enable, gc.disable, gc.isenabled = self._gc_functions  # type: ignore[assignment]
            self._gc_functions = None
        if self._gc_was_enabled:
            gc.enable()
        self._gc_was_enabled = None

    def _release_tensors(self) -> None:
        self._before_step.clear()
        self.recorder.origins = {}
        self.recorder._pending = None
        # Tensors still held for statistics (an optimizer step's updates; anything, after an error):
        # read them now rather than keep them alive with the session.
        try:
            self.stats.settle()
        except Exception:  # never mask the exception that ended the block
            self.stats.discard_held()

    # -- inputs -------------------------------------------------------------------

    def set_input_names(self, names: list[str]) -> None:
        self._input_names = names

    def add_inputs(self, values: Iterable[Any]) -> None:
        """Register the tensors handed to the model (nested in lists, tuples and dicts too)."""
        for t in torch.utils._pytree.tree_leaves(list(values)):
            if isinstance(t, torch.Tensor):
                self._add_input(t)

    def _add_input(self, t: torch.Tensor) -> None:
        if id(t) in self._input_ids:
            return
        i = len(self.inputs)
        label = self._input_names[i] if i < len(self._input_names) else ""  # "" : numbered when drawn
        self._input_ids[id(t)] = i
        with self.outside_mode():
            self.inputs.append(_Input(label, t, self.stats.add(t)))
        if not t.requires_grad:
            self.recorder.origins[id(t)] = (weakref.ref(t), frozenset((i,)))

    def _on_root_call(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.recorder.recording and not self._closed and self._threads.away():
            self._threads.follow()
        if self.recorder.recording:
            # Only data from outside: a tensor computed in this step (the model's output fed to a loss) is no input.
            self.add_inputs(a for a in torch.utils._pytree.tree_leaves(list(args)) if not isinstance(a, torch.Tensor) or grad_fn_of(a) is None)

    # -- backward -----------------------------------------------------------------

    def _patched_backward(self, tensors: Any, *args: Any, **kwargs: Any) -> Any:
        original = self._original_backward
        if original is None:
            raise CaptureError("gradtrace internal error: torch.autograd.backward patched without its original")
        if self._closed or inside_autograd():
            if self._in_backward and not self._closed:
                self._record_nested(tensors)
            return original(tensors, *args, **kwargs)
        if not self.intercept_backward:
            return original(tensors, *args, **kwargs)
        return self._user_step("backward", original, tensors, args, kwargs)

    def _patched_grad(self, outputs: Any, *args: Any, **kwargs: Any) -> Any:
        original = self._original_grad
        if original is None:
            raise CaptureError("gradtrace internal error: torch.autograd.grad patched without its original")
        if self._closed or not self.intercept_backward or inside_autograd():
            return original(outputs, *args, **kwargs)
        bound = inspect.signature(original).bind_partial(outputs, *args, **kwargs).arguments
        if bound.get("create_graph") or bound.get("is_grads_batched"):
            # A gradient that feeds the loss (a gradient penalty) or a batch of them: part of the step's
            # forward, not a step of its own.
            note = ("torch.autograd.grad(create_graph=True) ran inside the step: it is part of the forward "
                    "(its result feeds what follows), not counted as a backward step")
            if self.recorder.recording and note not in self.notes:
                self.notes.append(note)
            return original(outputs, *args, **kwargs)
        return self._user_step("grad", original, outputs, args, kwargs)

    def _leave_threads(self) -> None:
        self._threads.leave()
        if self._threads.followed:
            # Still pushed on a thread that has not reached its backward(): it cannot be taken off from
            # here; it records nothing more and lets every op through.
            self.recorder.recording = False
            self.notes.append("the capture ended while the model was still running on another thread")

    def _user_step(self, kind: str, original: Callable[..., Any], tensors: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """One backward step of the user's: counted, and recorded when it is the asked-for one."""
        if self._threads.followed:
            self._threads.leave()  # the forward on this thread is over
        self.backward_calls += 1
        if self._recorded:
            if not self.optimizer_done:
                self.grad_notes.backward_after += 1  # its gradient adds to .grad before the step
            if self.on_backward_after_recorded is not None:
                self.on_backward_after_recorded()
            return original(tensors, *args, **kwargs)
        if self.backward_calls != self.step:
            # An earlier step: what it recorded is not the asked-for step's forward.
            self.recorder.reset()
            self.recorder.recording = self.backward_calls == self.step - 1
            if self.recorder.recording:
                self._pause_gc()
            return original(tensors, *args, **kwargs)
        roots = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        bound = inspect.signature(original).bind_partial(tensors, *args, **kwargs).arguments
        if kind == "grad":
            self.notes.append("this step is a torch.autograd.grad() call: gradients were computed toward its inputs "
                              "only and no .grad was filled; nodes outside their paths show no gradient")
        elif bound.get("create_graph"):
            self.notes.append("backward(create_graph=True): the first-order graph is drawn; the graph of the "
                              "gradient computation itself (for higher-order derivatives) is not")
        if kind == "backward" and bound.get("inputs") is not None:
            self.notes.append("backward(inputs=...): gradients were computed only toward the given tensors; "
                              "nodes outside their paths show no gradient")
        try:
            if kind == "grad":
                return self.record_backward(roots, lambda: self._grad_step(original, tensors, bound.get("inputs"), args, kwargs))
            return self.record_backward(roots, lambda: original(tensors, *args, **kwargs))
        finally:
            # The recording is over: the rest of the user's run (the optimizer step, a script run on
            # with --run-to-end, a long capture block) has the collector as the user had it.
            self._resume_gc()

    def _grad_step(self, original: Callable[..., Any], outputs: Any, inputs: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """Run the asked-for ``torch.autograd.grad``. The engine hands its results back without running
        the inputs' own nodes (a leaf's AccumulateGrad), so their gradients are taken from the results."""
        result = original(outputs, *args, **kwargs)
        bwd = self._backward
        if bwd is None or isinstance(inputs, dict) or isinstance(result, dict):
            return result
        targets = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs or ())
        with self.outside_mode():
            for t, g in zip(targets, result):
                if not isinstance(t, torch.Tensor) or not isinstance(g, torch.Tensor):
                    continue
                edge = torch.autograd.graph.get_gradient_edge(t)
                key = node_id(edge.node)
                if self._walk is None or key not in self._walk.nodes:
                    continue
                grads = bwd.grads.setdefault(key, [])
                if key not in bwd.order:
                    bwd.order.append(key)
                grads.extend([None] * (edge.output_nr + 1 - len(grads)))
                grads[edge.output_nr] = self.stats.add(g)
        return result

    def outside_mode(self) -> Any:
        """A context in which gradtrace's own tensor work does not pass through its recorder.

        (Inside ``__torch_dispatch__`` torch already takes the mode off; this is for the work
        done from hooks and from the session itself: input and leaf statistics, the backward,
        the optimizer snapshots, the final reductions.)
        """
        if _get_current_dispatch_mode() is self.recorder:
            return _pop_mode_temporarily()
        return contextlib.nullcontext()

    def record_backward(self, roots: list[torch.Tensor], run: Callable[[], Any]) -> Any:
        """Walk the graph behind ``roots``, hook every node, run ``run`` (the backward), unhook."""
        with self.outside_mode():
            self.recorder.flush()
        self.recorder.recording = False
        root_nodes = []
        for r in roots:
            if not isinstance(r, torch.Tensor) or not r.requires_grad:
                raise CaptureError("backward() was called on a tensor that does not require grad: nothing to trace")
            if r.is_meta:
                raise CaptureError(META_MESSAGE)
            root_nodes.append(torch.autograd.graph.get_gradient_edge(r).node)
        with self.outside_mode():
            graph = self._walk = walk(root_nodes)
            self._recorded = True
            found: list[nn.Module] = []
            names = names_from_frames(modules=found)
            self._name_unhooked_parameters(graph, found)
            for key, node in graph.nodes.items():
                if key[1] == "AccumulateGrad":
                    self._leaf_stats[key] = self.stats.add(node.variable)
                    if id(node.variable) in names:
                        self._leaf_names[id(node.variable)] = names[id(node.variable)]
            self._backward = BackwardRecorder(graph, self.stats)
            # A reentrant checkpoint runs a second backward inside this one, which reaches some leaves
            # again: keep each gradient they receive, to show their sum as .grad gets it.
            self._backward.settle_at_leaves = self.settle_at_leaves
            self._backward.keep_leaf_grads = any(type(n).__name__ == "CheckpointFunctionBackward" for n in graph.nodes.values())
            self._in_backward = True
            with invisible():  # (the notes' own tensor work, hidden from the user's modes as the rest)
                self.grad_notes.backward_starting([n.variable for k, n in graph.nodes.items() if k[1] == "AccumulateGrad"])
                self.grad_notes.nonfinite_data({id(i.tensor) for i in self.inputs})
            if self.before_backward:
                with invisible():
                    leaves = {k: n.variable for k, n in graph.nodes.items() if k[1] == "AccumulateGrad"}
                    for callback in self.before_backward:
                        callback(leaves)
            try:
                # The backward's own ops are not part of the forward: the mode is off meanwhile.
                result = run()
                with invisible():
                    self.grad_notes.backward_finished()
                    leaves = {k: n.variable for k, n in graph.nodes.items() if k[1] == "AccumulateGrad"}
                    for callback in self.after_backward:
                        callback(leaves)
                return result
            finally:
                self._in_backward = False
                self._backward.remove()
                with invisible():
                    self._backward.sum_repeated(self.stats)
                # Read every held value and gradient now, before anything (an optimizer step) changes them.
                self.stats.settle()

    def _name_unhooked_parameters(self, graph: GraphWalk, found: list[nn.Module]) -> None:
        """Leaves that no known module names (its calls bypassed module hooks: ``net.forward(x)``)
        are named by a module of the user's code that holds them as parameters."""
        if not found:
            return
        named = self.modules.named_parameters()
        loose = {id(n.variable) for k, n in graph.nodes.items() if k[1] == "AccumulateGrad" and id(n.variable) not in named}
        for module in found:
            if not loose:
                return
            owned = {id(p) for p in module.parameters()} & loose
            if owned:
                self.modules.add_found_root(module)
                loose -= owned

    def _record_nested(self, tensors: Any) -> None:
        """A backward run from inside the recorded one (a reentrant checkpoint's): see :mod:`.nested`."""
        if self._walk is None or self._backward is None:
            return
        note = record_nested(self, tensors)
        if note is not None:
            self.notes.append(note)

    def restore_nested_grads(self) -> None:
        """Put back the ``.grad`` of leaves met only in a nested backward (``keep_grads``)."""
        for var, grad in reversed(self._nested_grads):
            var.grad = grad
        self._nested_grads.clear()

    @property
    def backward_recorded(self) -> bool:
        return self._recorded

    # -- optimizer step -----------------------------------------------------------

    def _optimizer_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self.optimizer_done:
            with torch.no_grad(), invisible():
                self.grad_notes.step_started(opt)
        if self._walk is None or self.optimizer_done or self._before_step:
            return
        leaves = {id(n.variable) for k, n in self._walk.nodes.items() if k[1] == "AccumulateGrad"}
        with torch.no_grad(), invisible():
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in leaves:
                        self._before_step[id(p)] = p.detach().clone()

    def _optimizer_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with invisible():
            self.grad_notes.step_finished()
        if self._walk is None or self.optimizer_done or not self._before_step:
            return
        with torch.no_grad(), invisible():
            for group in opt.param_groups:
                for p in group["params"]:
                    before = self._before_step.pop(id(p), None)
                    if before is not None:
                        self._updates[id(p)] = self.stats.add(p.detach() - before)
                        intended = sgd_update(opt, group, p, before)
                        if intended is not None:
                            self._sgd_updates[id(p)] = self.stats.add(intended)
        self._before_step.clear()
        groups = opt.param_groups
        lrs = {float(g["lr"]) for g in groups if "lr" in g and not isinstance(g["lr"], torch.Tensor)}
        lrs |= {float(g["lr"].item()) for g in groups if isinstance(g.get("lr"), torch.Tensor)}
        # Settings left at 0/False/None say nothing a reader needs (momentum=0, nesterov=False).
        settings = tuple((k, str(groups[0][k])) for k in _OPTIMIZER_SETTINGS if k in groups[0] and groups[0][k] not in (0, False, None))
        if len(groups) > 1:
            settings += (("param_groups", str(len(groups))),)
        self.optimizer = OptimizerStep(type(opt).__name__, lrs.pop() if len(lrs) == 1 else None, settings)
        self.optimizer_done = True
        if self.on_optimizer_done is not None:
            self.on_optimizer_done()

    # -- the result -----------------------------------------------------------------

    def build_trace(self) -> Trace:
        """Turn what was recorded into a Trace of plain records (one host copy of all statistics)."""
        self.grad_notes.finish()
        result = assemble(self)
        # The walk holds autograd nodes, and they hold saved activations: let go of them now.
        self._walk = self._backward = None
        self.recorder.nodes.clear()
        self.stats = StatsBuffer()
        return result


def names_from_frames(max_frames: int = 3, modules: list[nn.Module] | None = None) -> dict[int, str]:
    """id(tensor) -> the variable name it has in the user's code that called backward.

    Looks at the first few frames outside torch and gradtrace (locals, then
    globals), so a leaf tensor made with ``point = torch.tensor(..., requires_grad=True)``
    is drawn as ``point`` rather than ``leaf 0``.
    """
    names: dict[int, str] = {}
    for name, value in user_variables(max_frames):
        if isinstance(value, torch.Tensor) and not name.startswith("_"):
            names.setdefault(id(value), name)
        elif modules is not None and isinstance(value, nn.Module) and not any(m is value for m in modules):
            modules.append(value)  # (models the user's code holds, to name their parameters)
    return names


def input_names(fn: Any, n: int) -> list[str]:
    """Names for the first ``n`` positional inputs, from the signature of ``fn`` (``forward`` for a module)."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return []
    names = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        else:
            break
    return names[:n] if len(names) >= n else []


def sgd_update(opt: torch.optim.Optimizer, group: dict[str, Any], p: torch.Tensor, before: torch.Tensor) -> torch.Tensor | None:
    """The change ``torch.optim.SGD`` meant to make to ``p`` (read after its step), or None.

    ``-lr * d`` where ``d = grad + weight_decay * w_before`` (``-grad`` when
    maximizing); with momentum ``d`` is the new momentum buffer (``d + momentum * buf``
    with Nesterov), as ``torch.optim.SGD`` computes them. The applied change ``w_after - w_before`` differs from it by
    float32 rounding of ``w``; this is the one "Δw = −lr × grad" describes.
    """
    if type(opt) is not torch.optim.SGD or p.grad is None or p.grad.is_sparse:
        return None
    lr = group["lr"]
    lr = float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)
    d = -p.grad.detach() if group.get("maximize") else p.grad.detach()
    decay = group.get("weight_decay", 0)
    if isinstance(decay, torch.Tensor) or decay:
        d = d + decay * before
    momentum = group.get("momentum", 0)
    if momentum:
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is None:
            return None
        d = d + momentum * buf if group.get("nesterov") else buf
    return d * -lr
