"""The watch engine: statistics of every Nth training step, on the device, read in batches.

What a step is: one ``step()`` of an optimizer. ``backward()`` calls before it
are its micro-steps (gradient accumulation; the step's loss is their mean).
Each optimizer counts its own steps, and step N is the Nth ``step()`` of each:
with two optimizers stepping once per iteration (a GAN's D and G), step N
holds both, each parameter sampled at its own optimizer's step. The run's
step count is the largest count. A ``GradScaler.step(opt)`` that skips the
optimizer (an inf in the scaled gradients) is still that optimizer's step:
it is recorded as a ``skipped`` event, not an alarm, and never sampled: a
sample due on it is taken at that optimizer's next real step (``OptState.owed``;
the plan waits, ``is_sampled`` uses ``>=``). A script without any
optimizer: a step is a ``backward()``.

What it costs: nothing is hooked per op. A step that is not sampled costs a
Python call per module call (a dictionary look-up), one per ``backward()``
(the loss is kept, on the device) and one per optimizer step. A sampled step
adds module forward hooks (output RMS and non-finite count), fused
``torch._foreach_norm`` reductions over the gradients and parameters, and a
copy of the parameters for the update ratio. Every statistic stays on the
device, one tensor per step, and reaches the host in batches of
:data:`BATCH` steps; the sentinel (``check --every-step``) reduces each step
to one row of four numbers and reads them in the same batches.

Default sampling (``every=None``): adaptive. The engine times each step
(wall clock between optimizer steps); after the second sampled step it sets
the period to ``ceil(extra / (BUDGET * plain))`` steps, where ``extra`` is the
measured extra time of a sampled step over the median plain step, so the
sampled steps add about BUDGET (3 %) to the run. Steps 1 and the first ten
are sampled at a period of 10 until there is a measurement. A long run is
also thinned (a period of at least ``1 + step // THIN``), so a million-step
run keeps a readable history.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.optim import optimizer as optimizer_hooks

from ..errors import GradtraceError
from ..recorder.intercept import install
from ..recorder.stats import invisible
from .patches import patch_clip, patch_scaler
from .cheap import Before, dense, local, nonfinite_count, nonfinite_counts, norms
from .probes import first_float_tensor, graph_leaves, loss_value, lr_of, on_stack, optimizer_holding
from .sentinel import BATCH, Alarm, Sentinel
from .state import OptState, Row, RootState
from .tracing import StepTracer

__all__ = ["BATCH", "BUDGET", "Alarm", "Watcher"]  # (Alarm: from .sentinel, named here too)

#: The share of a plain run the adaptive sampling aims to add (under the 5 % target).
BUDGET = 0.03
#: Period of the adaptive sampling before the first measurement.
START_EVERY = 10
MAX_EVERY = 1000
#: The default sampling never takes more than about one step in ``1 + step // THIN``.
THIN = 500


class Watcher:
    """Installs the watch hooks for the life of a ``with`` block and records the run's history.

    ``every``: sampling period in steps (None: adaptive, see the module's doc).
    ``steps``: ``(A, B)`` sample only steps A..B (B None: to the end).
    ``sentinel``: check every step (loss, gradients, update ratio) and call
    ``on_alarm`` with the first broken step's :class:`Alarm`.
    """

    def __init__(self, model: nn.Module | None = None, *, every: int | None = None, steps: tuple[int, int | None] = (1, None),
                 sentinel: bool = False, sample: bool = True, on_alarm: Callable[[Alarm], None] | None = None,
                 trace_steps: tuple[int, ...] = (), script: str = "<python>") -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise GradtraceError(f"watch needs the model as an nn.Module (or None: the modules called name themselves), "
                                 f"got {type(model).__name__}")
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise GradtraceError(f"every must be a positive integer (a sampling period in steps) or None (adaptive), got {every!r}")
        if steps[0] < 1 or (steps[1] is not None and steps[1] < steps[0]):
            raise GradtraceError(f"steps must be A:B with 1 <= A <= B, got {steps[0]}:{steps[1] if steps[1] is not None else ''}")
        self.script = script
        self.every = every
        self._period = every if every is not None else START_EVERY
        self.first, self.last = steps
        self.sample = sample
        self.sentinel = Sentinel(on_alarm) if sentinel else None
        self.trace_steps = set(trace_steps)
        self.tracer = StepTracer(self.trace_steps) if trace_steps else None
        self.names: dict[int, str] = {}  # id(module) -> path
        self.classes: dict[str, str] = {}
        self.root_of: dict[str, str] = {}  # module path -> root prefix
        self._roots: list[RootState] = []
        self._root_ids: set[int] = set()  # id() of the live roots
        #: id(parameter) -> its raw name, and raw name -> shape, for the live roots' parameters (and shapes kept)
        self._param_label: dict[int, str] = {}
        self._param_root: dict[int, str] = {}
        self.param_shapes: dict[str, list[int]] = {}
        #: The model the user named is kept for the watch's life (it may be a container made only to name its parts:
        #: watch(nn.ModuleList([G, D]))); the models met on the way are held weakly.
        self._given = model
        if model is not None:
            self._add_root(model)
        #: Every optimizer met, by name (opt0, opt1, ...), in order; _live finds a live one by id() (an optimizer
        #: created where a freed one lived, as a sweep does, is a new one: not merged with the old).
        self.opts: dict[str, OptState] = {}
        self._live: dict[int, OptState] = {}
        self.backward_calls = 0
        self._micro: list[torch.Tensor] = []
        self._micro_calls: list[int] = []
        self._pending_modules: dict[str, list[tuple[torch.Tensor, int, torch.Tensor]]] = {}
        self._forward_on = True  # step 1 is always sampled
        self._next_sample = self.first
        self.sampled: list[int] = []
        self._rows: list[Row] = []
        self._host_rows: list[tuple[Row, list[float]]] = []
        self._module_rows: dict[int, dict[str, tuple[float, float]]] = {}
        self._module_dev: list[tuple[int, str, torch.Tensor, int]] = []
        self._loss_dev: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        #: The backward() calls of each step of the lead optimizer (host ints), to trace a step's right call later.
        self.step_calls: dict[int, list[int]] = {}
        #: The micro-steps' losses of the steps whose loss was not finite.
        self.bad_micro_losses: dict[int, list[float]] = {}
        self.loss_all: list[tuple[int, float]] = []
        #: Every step's loss of each other optimizer (a GAN's G): name -> [(step, loss)]; the lead's is ``loss_all``.
        self.other_losses: dict[str, list[tuple[int, float]]] = {}
        self._other_loss_dev: list[tuple[int, str, torch.Tensor]] = []
        self._clip_dev: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._clip_now: tuple[torch.Tensor, torch.Tensor] | None = None
        self.clip: dict[int, tuple[float, float]] = {}
        self.events: list[dict[str, Any]] = []
        self._step_times: list[float] = []
        self._sample_extra: list[float] = []
        self._last_boundary: float | None = None
        self._last_was_sampled = False
        self._undo: list[Callable[[], None]] = []
        self._in_scaler_step: list[Any] = []
        self._scaled: dict[int, tuple[Any, torch.Tensor]] = {}
        self._before = Before()
        self._failures: set[str] = set()
        self._pseudo = OptState("backward", None)  # steps when no optimizer ever steps
        self._no_optimizer: bool | None = None  # decided at the first backward()
        self.started = time.perf_counter()
        self.elapsed: float | None = None
        self.on_step_end: Callable[[int], None] | None = None
        self.stop_requested = False

    # -- installing --------------------------------------------------------------

    def __enter__(self) -> Watcher:
        try:
            h = module_hooks.register_module_forward_pre_hook(self._module_pre)
            self._undo.append(h.remove)
            h = module_hooks.register_module_forward_hook(self._module_post_hook)
            self._undo.append(h.remove)
            h = optimizer_hooks.register_optimizer_step_pre_hook(self._opt_pre)
            self._undo.append(h.remove)
            h = optimizer_hooks.register_optimizer_step_post_hook(self._opt_post)
            self._undo.append(h.remove)
            self._real_backward = torch.autograd.backward
            self._undo.append(install(torch.autograd, "backward", self._backward))
            self._undo.extend(patch_scaler(self))
            self._undo.extend(patch_clip(self))
        except BaseException:
            self.close()
            raise
        self.started = time.perf_counter()
        if self.tracer is not None:
            self.tracer.arm(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop_hooks(self) -> None:
        """Remove every hook and patch, reading nothing (a process forked by the script)."""
        undo, self._undo = self._undo, []
        for u in reversed(undo):
            try:
                u()
            except Exception:  # remove all the rest whatever one of them does
                pass

    @property
    def alarm(self) -> Alarm | None:
        """The sentinel's first broken step (None: none, or no sentinel)."""
        return self.sentinel.alarm if self.sentinel is not None else None

    @property
    def fingerprints(self) -> list[tuple[int, str, float, float]]:
        """The sentinel's (step, optimizer, loss, total gradient norm) of every step so far."""
        return self.sentinel.fingerprints if self.sentinel is not None else []

    @property
    def on_alarm(self) -> Callable[[Alarm], None] | None:
        return self.sentinel.on_alarm if self.sentinel is not None else None

    @on_alarm.setter
    def on_alarm(self, fn: Callable[[Alarm], None] | None) -> None:
        if self.sentinel is None:
            raise GradtraceError("on_alarm needs the sentinel: Watcher(..., sentinel=True)")
        self.sentinel.on_alarm = fn

    @property
    def traces(self) -> dict[int, dict[str, Any]]:
        """The full traces of ``trace_steps`` recorded so far (``Trace.to_dict()`` by step)."""
        return dict(self.tracer.traces) if self.tracer is not None else {}

    def close(self) -> None:
        """Remove every hook and patch (idempotent), then read what is left on the device."""
        if self.tracer is not None:
            self.tracer.finish()
        self.drop_hooks()
        if self.elapsed is None:
            self.elapsed = time.perf_counter() - self.started
            try:
                self.flush()
            finally:
                self._release()

    def _release(self) -> None:
        for o in self.opts.values():
            o.before = o.delta = o.pre = o.sentinel_pre = None
            o.params = []
        self._before.clear()
        self._scaled.clear()
        self._micro.clear()
        self._pending_modules.clear()

    # -- names ---------------------------------------------------------------------

    @property
    def _modules(self) -> list[nn.Module]:
        """The roots still alive, in the order they were met."""
        alive = (r.ref() for r in self._roots)
        return [m for m in alive if m is not None]

    @property
    def roots(self) -> list[RootState]:
        """Every root met, alive or not, in order."""
        return list(self._roots)

    def _add_root(self, module: nn.Module) -> None:
        prefix = "" if not self._roots else type(module).__name__
        taken = set(self.root_of.values())
        if prefix in taken and next(module.parameters(), None) is None and \
                all(r.ref() is None and not r.has_params and r.cls == type(module).__name__ for r in self._roots if r.prefix == prefix):
            # A parameterless module made anew where the last one is gone (`criterion = nn.MSELoss()` inside the loop)
            # is the same root again, not one more per step.
            taken.discard(prefix)
        if prefix in taken:
            n = 2
            while f"{prefix}{n}" in taken:
                n += 1
            prefix = f"{prefix}{n}"
        module_ids = []
        for name, sub in module.named_modules(prefix=prefix):
            if id(sub) not in self.names:
                self.names[id(sub)] = name
                self.classes[name] = type(sub).__name__
                self.root_of[name] = prefix
                module_ids.append(id(sub))
        param_ids = []
        for name, p in module.named_parameters(prefix=prefix):
            if id(p) not in self._param_label:
                self._param_label[id(p)] = name
                self._param_root[id(p)] = prefix
                self.param_shapes.setdefault(name, list(p.shape))
                param_ids.append(id(p))
        root = RootState(prefix, type(module).__name__, bool(param_ids), None, id(module), module_ids, param_ids)
        root.ref = weakref.ref(module, lambda _, r=root: self._root_gone(r))
        self._roots.append(root)
        self._root_ids.add(id(module))

    def _root_gone(self, root: RootState) -> None:
        # Its ids may now be any new object's: forget them, so a new model at the same address is met as new (its
        # names and rows are already resolved).
        for i in root.module_ids:
            self.names.pop(i, None)
        for i in root.param_ids:
            self._param_label.pop(i, None)
            self._param_root.pop(i, None)
        root.module_ids, root.param_ids = [], []
        self._root_ids.discard(root.mid)

    def _opt(self, opt: torch.optim.Optimizer) -> OptState:
        o = self._live.get(id(opt))
        if o is None or o.ref() is not opt:
            o = OptState(f"opt{len(self.opts)}", weakref.ref(opt), type_name=type(opt).__name__)
            self.opts[o.name] = self._live[id(opt)] = o
        return o

    # -- the steps -------------------------------------------------------------------

    def is_sampled(self, step: int) -> bool:
        if not self.sample:
            return False
        if step in self.trace_steps:
            return True
        if step < self.first or (self.last is not None and step > self.last):
            return False
        # ``>=``: a due sample stays due until a step is really sampled (a step GradScaler skipped is never sampled,
        # so the sample moves to the next real step instead of being lost, and with it every later one).
        return step >= self._next_sample or step in self.sampled

    def _sampled_for(self, o: OptState, step: int) -> bool:
        """Whether optimizer ``o``'s step ``step`` is sampled: the run's plan, or a sample ``o`` owes from a skipped step."""
        if self.is_sampled(step):
            return True
        return o.owed and self.sample and (self.last is None or step <= self.last)

    @property
    def steps_run(self) -> int:
        counts = [o.count for o in self.opts.values()]
        return max(counts) if counts else self._pseudo.count

    def _under_way(self) -> list[int]:
        counts = [o.count for o in self.opts.values()] or [self._pseudo.count]
        return sorted({min(counts) + 1, max(counts) + 1})

    def _boundary(self, o: OptState, sampled: bool, skipped: bool = False) -> None:
        """After optimizer ``o`` finished its step ``o.count``: time it, plan the next sample."""
        now = time.perf_counter()
        if self._last_boundary is not None and o.count > 1 and not skipped:  # (a skipped step has no update: not plain)
            dt = now - self._last_boundary
            if sampled:
                if self._step_times:
                    self._sample_extra.append(max(0.0, dt - statistics.median(self._step_times[-50:])))
            else:
                self._step_times.append(dt)
        self._last_boundary = now
        if sampled and o.count >= self._next_sample:
            self._plan(o.count)
        ahead = self._under_way()
        if self.tracer is not None:
            self.tracer.arm(min(ahead))
        self._forward_on = any(self.is_sampled(s) for s in ahead) or max(ahead) <= 2 or \
            any(x.owed for x in self.opts.values())
        if self.on_step_end is not None:
            self.on_step_end(o.count)

    def _plan(self, step: int) -> None:
        if self.every is not None:
            self._next_sample = step + self.every
            return
        if self._sample_extra and self._step_times:
            plain = statistics.median(self._step_times[-50:])
            extra = statistics.median(self._sample_extra[-5:])
            wanted = min(MAX_EVERY, max(1, math.ceil(extra / (BUDGET * plain)) if plain > 0 else START_EVERY))
            # One measurement on a busy machine is noise: the period moves at most 2x per sample, and goes below the
            # starting 10 only on 3 measurements (a loaded machine once swung it 1 -> 539 and bunched the history
            # into the first steps).
            low = 1 if len(self._sample_extra) >= 3 else START_EVERY
            self._period = max(low, min(max(wanted, self._period // 2), self._period * 2))
        # A long run is thinned as it goes (about THIN samples per THIN steps at most), so the history stays readable.
        self._period = max(self._period, 1 + step // THIN)
        self._next_sample = step + self._period

    # -- hooks --------------------------------------------------------------------------

    def _failed(self, what: str, e: Exception) -> None:
        """A statistic gradtrace could not take: said once per kind as a warning event, never raised into the
        user's forward, backward or step (their run goes on; the history says what is missing)."""
        key = f"{what}: {type(e).__name__}"
        if key in self._failures:
            return
        self._failures.add(key)
        self.events.append({"step": self.steps_run + 1, "kind": "warning", "module": None, "param": None,
                            "text": f"gradtrace could not measure {what} ({type(e).__name__}: {str(e)[:300]}); "
                                    "those statistics are missing from here on"})

    def _safely(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # (a tensor type or an optimizer gradtrace cannot measure: see _failed)
            self._failed(what, e)
            return None

    def _module_post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self._safely("module outputs", self._module_post, module, args, output)

    def _module_pre(self, module: nn.Module, args: Any) -> None:
        if id(module) not in self.names:
            self._add_root(module)
        if self.tracer is not None:
            self.tracer.module_call(module, args, id(module) in self._root_ids)

    def _module_post(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._forward_on:
            return
        t = first_float_tensor(output)
        if t is None:
            return
        with torch.no_grad(), invisible():
            d = dense(t.detach())  # (a sparse, nested or sharded output: the values this process holds)
            norm = torch.linalg.vector_norm(d.float() if d.dtype in (torch.float16, torch.bfloat16) else d)
            bad = nonfinite_count(d, norm)
        self._pending_modules.setdefault(self.names.get(id(module), type(module).__name__), []).append((norm, d.numel(), bad))

    def _backward(self, tensors: Any, *args: Any, **kwargs: Any) -> Any:
        if torch._C._current_graph_task_id() != -1:
            return self._real_backward(tensors, *args, **kwargs)
        self.backward_calls += 1
        if self.tracer is not None:
            self.tracer.backward_call()
        root = tensors if isinstance(tensors, torch.Tensor) else (tensors[0] if isinstance(tensors, (list, tuple)) and tensors else None)
        if isinstance(root, torch.Tensor) and root.numel() == 1:
            scaled = self._scaled.pop(id(root), None)
            if scaled is not None and scaled[0]() is root:
                root = scaled[1]
            loss = self._safely("the loss", loss_value, root)
            if loss is not None:
                self._micro.append(loss)
                self._micro_calls.append(self.backward_calls)
        self._scaled.clear()
        leaves = graph_leaves(tensors) if self._no_optimizer is None and not self.opts else set()
        if leaves:
            leaves |= self._sharded_twins(leaves)
        result = self._real_backward(tensors, *args, **kwargs)
        if self._no_optimizer is None:
            self._no_optimizer = not self.opts and not optimizer_holding(leaves)
        if self._no_optimizer:  # a script without an optimizer: a step is a backward()
            self._pseudo_step()
        return result

    def _sharded_twins(self, leaves: set[int]) -> set[int]:
        """id() of the sharded parameters (what the optimizer holds) of the FSDP2 unsharded ones among ``leaves``
        (what the graph reaches): without them an FSDP2 script looks like one without an optimizer at its first
        backward(), and its first step's loss was lost with the backward()-steps dropped."""
        try:
            from ..distributed.collective import _fsdp_params  # (FSDP2's private state, read the one way gradtrace does)

            found = _fsdp_params([("", m) for m in self._modules])
        except Exception:
            return set()
        return {id(fp.sharded_param) for uid, fp in found.items() if uid in leaves and hasattr(fp, "sharded_param")}

    def _pseudo_step(self) -> None:
        o = self._pseudo
        o.count += 1
        step = o.count
        sampled = self.is_sampled(step)
        params = [p for m in self._modules for p in m.parameters() if p.grad is not None]
        o.params = params
        if sampled:
            self._safely("gradients", self._record_pre, o, params, step)
            if o.pre is not None:
                self._safely("gradients", self._record_post, o, step, [None])
        if self.sentinel is not None:
            o.sentinel_pre = self._safely("gradients (sentinel)", lambda: self.sentinel.before_step(params, weights=False))
            self._safely("the sentinel's row", self._sentinel_row, o, step)
        self._end_step(o, step, sampled)

    def _opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._no_optimizer:
            self._no_optimizer = False
            self._drop_pseudo()
        o = self._opt(opt)
        caller = sys._getframe(1)
        if o.depth > 0 and on_stack(o.frame, caller):
            o.depth += 1
            return
        # A new step. What a step() that raised left (its depth, copies, statistics: its post hook never ran) is stale.
        o.depth, o.frame = 1, caller
        o.pre = o.before = o.delta = o.sentinel_pre = None
        if self._in_scaler_step and self._in_scaler_step[-1] is opt:
            o.stepped_in_scaler = True
        step = o.count + 1
        held = [p for g in opt.param_groups for p in g["params"]]
        if len(held) != len(o.held):  # (add_param_group; otherwise the same tensors step after step)
            o.held = [id(p) for p in held]
            o.roots = {self._param_root[i] for i in o.held if i in self._param_root}
        rest = args[1:] if args and args[0] is opt else args  # (torch hands the hooks step()'s args with self)
        o.closure = callable(kwargs.get("closure", rest[0] if rest else None))
        if o.closure:  # (no gradient yet: every parameter's weights now, the rest after the step)
            o.params = [p for p in held if p.layout == torch.strided]
            o.sampled = self._sampled_for(o, step)
            if o.params and (self.sentinel is not None or o.sampled):
                o.before = self._safely("weights before the step", self._take, o, o.params)
            return
        params = [p for p in held if p.grad is not None and p.layout == torch.strided]
        o.params = params
        if self.sentinel is not None and params:
            o.sentinel_pre = self._safely("gradients (sentinel)", self.sentinel.before_step, params)
            o.before = self._safely("weights before the step", self._take, o, params)
        if self._sampled_for(o, step):
            self._safely("gradients and weights", self._record_pre, o, params, step)

    def _opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        o = self._opt(opt)
        o.depth = max(0, o.depth - 1)
        if o.depth > 0:
            return
        o.frame = None
        if o.closure:
            self._safely("gradients and weights", self._closure_pre, o)
        o.count += 1
        step = o.count
        sampled = o.pre is not None
        lrs: list[float | None] = []
        if sampled:
            o.owed = False
            lrs = [lr_of(g) for g in opt.param_groups]
            self._safely("updates", self._record_post, o, step, lrs)
        if self.sentinel is not None:
            self._safely("the sentinel's row", self._sentinel_row, o, step)
        self._end_step(o, step, sampled)

    def _skipped(self, o: OptState, scaler: Any) -> None:
        o.count += 1
        scale = scaler.get_scale()  # (GradScaler.step has synchronized already to find the inf)
        self.events.append({"step": o.count, "kind": "skipped",
                            "text": f"GradScaler skipped the step (inf or NaN in the scaled gradients); scale {scale:g} -> "
                                    f"{scale * scaler.get_backoff_factor():g}", "module": None, "param": None,
                            "optimizer": o.name})
        o.pre = o.before = o.delta = o.sentinel_pre = None
        if self._sampled_for(o, o.count):  # the sample due here is owed: taken at this optimizer's next real step
            o.owed = True
        self._end_step(o, o.count, False, skipped=True)

    def _drop_pseudo(self) -> None:
        # An optimizer stepped after all: the backward() calls before it were micro-steps, not steps.
        self._rows = [r for r in self._rows if r.opt != "backward"]
        self._host_rows = [r for r in self._host_rows if r[0].opt != "backward"]
        if self.sentinel is not None:
            self.sentinel.drop("backward")
        self.sampled, self._module_dev, self._loss_dev, self.loss_all = [], [], [], []
        self._module_rows.clear()
        self.step_calls.clear()
        self.bad_micro_losses.clear()
        self._pseudo.count = 0
        self._next_sample = self.first
        self._forward_on = True

    # -- recording ----------------------------------------------------------------------

    def _closure_pre(self, o: OptState) -> None:
        """After step(closure): what the pre-step hook takes for a plain step, from the gradients the step left and the
        weights' copies taken before it."""
        keep = [i for i, p in enumerate(o.params) if p.grad is not None]
        before = o.before
        o.params = [o.params[i] for i in keep]
        o.before = [before[i] for i in keep] if before is not None else None
        if not o.params:
            o.before = None
            return
        with torch.no_grad(), invisible():
            grads = [dense(p.grad) for p in o.params]
            gn = [n.float() for n in norms(grads)]
            wn = [n.float() for n in norms(o.before)] if o.before is not None else gn
            if o.sampled:
                o.pre = [*gn, *nonfinite_counts(grads, gn), *wn]
            if self.sentinel is not None:
                acc = torch.float32 if gn[0].device.type == "mps" else torch.float64
                o.sentinel_pre = [torch.linalg.vector_norm(torch.stack([n.to(acc) for n in gn])),
                                  torch.linalg.vector_norm(torch.stack([n.to(acc) for n in wn]))]
        if len(self._micro) > 1:  # the loss at the start of the step, not the mean of a line search's evaluations
            self._micro, self._micro_calls = self._micro[:1], self._micro_calls[:1]

    def _record_pre(self, o: OptState, params: list[torch.Tensor], step: int) -> None:
        with torch.no_grad(), invisible():
            if not params:
                o.pre = []
                return
            grads = [dense(p.grad) for p in params]
            gn = [n.float() for n in norms(grads)]
            bad = nonfinite_counts(grads, gn)
            wn = [n.float() for n in norms([local(p.detach()) for p in params])]
            if o.before is None and o is not self._pseudo:
                o.before = self._before.take(o.name, params, o.ref() if o.ref is not None else None)
            o.pre = [*gn, *bad, *wn]

    def _record_post(self, o: OptState, step: int, lrs: list[float | None]) -> None:
        params, pre, before = o.params, o.pre or [], o.before
        with torch.no_grad(), invisible():
            if params and before is not None and o is not self._pseudo:
                dn = self._delta(o)
            else:
                dn = [torch.full((), math.nan) for _ in params]
            values = torch.stack([*pre, *dn]) if params else torch.zeros(0)
            loss = torch.stack(self._micro).mean() if self._micro else None
        self._rows.append(Row(step, o.name, [id(p) for p in params], self._names_of(o, params), [local(p).numel() for p in params],
                               values, loss, lrs))
        if self._clip_now is not None:
            self._clip_dev[step] = self._clip_now
        if step not in self.sampled:
            self.sampled.append(step)
        for path, calls in self._pending_modules.items():
            with torch.no_grad(), invisible():
                sq = torch.stack([n.float() ** 2 for n, _, _ in calls]).sum()
                bad = torch.stack([b for _, _, b in calls]).sum().float()
            self._module_dev.append((step, path, torch.stack([sq, bad]), sum(k for _, k, _ in calls)))
        self._pending_modules = {}
        o.pre = None
        if self.sentinel is None:
            o.before = o.delta = None
        if len(self._rows) >= BATCH:
            self._read_rows()

    def _take(self, o: OptState, params: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad(), invisible():
            return self._before.take(o.name, params, o.ref() if o.ref is not None else None)

    def _names_of(self, o: OptState, params: list[torch.Tensor]) -> list[str]:
        """The raw names of ``params`` now: the models', else ``opt0.group0.param3`` (a tensor only ``o`` holds)."""
        names = [self._param_label.get(id(p)) for p in params]
        if None in names:
            opt = o.ref() if o.ref is not None else None
            where = {id(p): f"{o.name}.group{gi}.param{pi}" for gi, g in enumerate(opt.param_groups)
                     for pi, p in enumerate(g["params"])} if opt is not None else {}
            names = [n if n is not None else where.get(id(p), f"{o.name}.param{j}") for j, (n, p) in enumerate(zip(names, params))]
        return names  # type: ignore[return-value]

    def _delta(self, o: OptState) -> list[torch.Tensor]:
        """‖Δw‖ per parameter of ``o``'s step just done (its weights' copies are spent on the first call)."""
        if o.delta is None and o.before is not None:
            with torch.no_grad(), invisible():
                o.delta = Before.delta_norms(o.params, o.before)
            o.before = None
        return o.delta or []

    def _sentinel_row(self, o: OptState, step: int) -> None:
        delta = self._delta(o) if o.before is not None or o.delta is not None else None
        self.sentinel.after_step(step, o.name, list(self._micro_calls) or [self.backward_calls], self._micro, delta,
                                 o.sentinel_pre)
        o.before = o.delta = o.sentinel_pre = None

    def _end_step(self, o: OptState, step: int, sampled: bool, skipped: bool = False) -> None:
        if o.name in ("opt0", "backward") and self._micro:
            with torch.no_grad(), invisible():
                micro = torch.stack(self._micro)
                self._loss_dev.append((step, micro.mean(), micro))
            self.step_calls[step] = list(self._micro_calls)
            if len(self._loss_dev) >= BATCH:
                self._read_losses()
        elif self._micro:  # another optimizer's step (a GAN's G): its own loss curve, kept on the device too
            with torch.no_grad(), invisible():
                self._other_loss_dev.append((step, o.name, torch.stack(self._micro).mean()))
            if len(self._other_loss_dev) >= BATCH:
                self._read_losses()
        self._micro = []
        self._micro_calls = []
        o.params = []  # (the step is done: holding its parameters would keep a finished model alive)
        o.frame = None
        if not sampled:
            self._pending_modules = {}
        self._clip_now = None
        self._boundary(o, sampled, skipped)

    # -- reading to the host, in batches ---------------------------------------------------

    def flush(self) -> None:
        """Read every statistic still on the device (one copy per kind)."""
        self._read_rows()
        self._read_losses()
        if self.sentinel is not None:
            self.sentinel.read()

    def _read_rows(self) -> None:
        rows, self._rows = self._rows, []
        if rows:
            flat = torch.cat([r.values.reshape(-1) for r in rows] + [r.loss.reshape(1) if r.loss is not None else torch.full((1,), math.nan) for r in rows]).cpu().tolist()
            k = 0
            losses = flat[sum(r.values.numel() for r in rows):]
            for i, r in enumerate(rows):
                n = r.values.numel()
                self._host_rows.append((r, flat[k:k + n] + [losses[i] if r.loss is not None else None]))
                k += n
        mods, self._module_dev = self._module_dev, []
        if mods:
            flat = torch.stack([m[2] for m in mods]).cpu().tolist()
            for (step, path, _, numel), (sq, bad) in zip(mods, flat):
                self._module_rows.setdefault(step, {})[path] = (math.sqrt(sq / numel) if numel else math.nan, bad)
        clips, self._clip_dev = self._clip_dev, {}
        if clips:
            flat = torch.stack([torch.stack(v) for v in clips.values()]).cpu().tolist()
            self.clip.update({s: (b, a) for s, (b, a) in zip(clips, flat)})

    def _read_losses(self) -> None:
        others, self._other_loss_dev = self._other_loss_dev, []
        if others:
            values = torch.stack([v for _, _, v in others]).cpu().tolist()
            for (s, name, _), v in zip(others, values):
                self.other_losses.setdefault(name, []).append((s, v))
        losses, self._loss_dev = self._loss_dev, []
        if losses:
            values = torch.stack([v for _, v, _ in losses]).cpu().tolist()
            self.loss_all.extend((s, v) for (s, _, _), v in zip(losses, values))
            for (s, _, micro), v in zip(losses, values):
                if not math.isfinite(v):
                    self.bad_micro_losses[s] = micro.cpu().tolist()

    def call_to_trace(self, step: int) -> int | None:
        """The ``backward()`` call whose full trace shows what went wrong at ``step`` of the lead optimizer: the first
        micro-step whose loss is not finite, else the step's last (its gradients are the sum of all micro-steps')."""
        calls = self.step_calls.get(step)
        if not calls:
            return None
        micro = self.bad_micro_losses.get(step)
        if micro is not None:
            for call, loss in zip(calls, micro):
                if not math.isfinite(loss):
                    return call
        return calls[-1]

    def loss_fingerprints(self) -> list[tuple[int, str, float, float | None]]:
        """(step, lead optimizer, loss, None) of every step: what a re-run's sentinel must reproduce, bit for bit."""
        lead = "backward" if self._no_optimizer else "opt0"
        return [(s, lead, v, None) for s, v in self.loss_all]

    # -- the result -----------------------------------------------------------------------

    def alarm_events(self) -> list[dict[str, Any]]:
        """Alarms read off every step's loss and the sampled steps (see :func:`.assemble.alarm_events`)."""
        from .assemble import alarm_events

        return alarm_events(self)
