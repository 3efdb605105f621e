"""Forward recording: which module is running, and what every op produced.

:class:`ForwardRecorder` is a ``TorchDispatchMode``: it sees
every ATen op below autograd (the ops inside composite functions too), so
every autograd node gets a forward value, not only those a
``__torch_function__`` hook would see.

An output's ``grad_fn`` is set by the autograd layer *after* the op returns
to it, so the recorder remembers the last op's outputs and resolves them to
their autograd node when the next op starts (or when the forward ends), while
their values are still the ones the op produced. Each op's module comes from
:mod:`.modules` (the stack of module names kept by global module hooks), its
source line and argument text from :mod:`.provenance`.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .modules import ModuleTracker
from .provenance import describe_args, source_text, user_frame
from .stats import StatsBuffer

__all__ = ["ForwardRecorder", "NodeForward", "grad_fn_of", "node_id"]

# Ops whose outputs never carry a grad_fn: skipping them saves work on every step.
_SKIP = frozenset({torch.ops.aten.detach.default})


def node_id(node: Any) -> tuple[int, str]:
    """A stable identity for an autograd node.

    The Python wrapper of a C++ node can be freed and made anew, so its ``id``
    is no identity; the sequence number is unique per node created on a
    thread, and AccumulateGrad nodes (which all share the largest one) are
    told apart by their variable.
    """
    seq = node._sequence_nr()
    name = type(node).__name__
    if name == "AccumulateGrad":
        return (id(node.variable), name)
    return (seq, name)


class NodeForward:
    """What the forward pass recorded about one autograd node."""

    __slots__ = ("order", "module", "stats", "inputs", "scope", "source", "args")

    def __init__(self, order: int, module: str, scope: str = "", source: str | None = None, args: str = "") -> None:
        self.order = order  # position of the op in the forward pass
        self.module = module
        self.stats: dict[int, int] = {}  # output_nr -> StatsBuffer handle
        self.inputs: frozenset[int] = frozenset()  # indices of model inputs it consumed
        self.scope = scope or module  # module with repeated calls numbered (pool#2)
        self.source = source  # where the user's code made the op: "model.py:42 in forward"
        self.args = args  # the op's constants, plain-tensor operands and indices, compactly


def grad_fn_of(t: torch.Tensor) -> Any:
    """``t.grad_fn``, or None where torch refuses to say: reading it raises for a view made under no_grad
    whose base was since written in place (``with no_grad(): w[0, 0] = x``). The user's code never
    reads it there, so capture must not either; such a tensor cannot enter autograd anyway."""
    try:
        return t.grad_fn
    except RuntimeError:
        return None


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for t in obj if isinstance(t, torch.Tensor)]
    return []


def _op_kind(func: Any) -> int:
    """``_WRITES`` when an ATen op writes into an argument (in place, out=), ``_SKIPPED`` when its
    outputs never carry a grad_fn, else 0; cached by ``id`` (an OpOverload's own hash is Python code)."""
    kind = _KINDS.get(id(func))
    if kind is None:
        schema = func._schema
        written = tuple((i, a.name) for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write)
        kind = (_WRITES if schema.is_mutable else 0) | (_SKIPPED if func in _SKIP else 0)
        _KINDS[id(func)] = kind
        _WRITTEN[id(func)] = written
        _KEEP_ALIVE.append(func)  # (they live as long as torch.ops anyway; this makes the id safe)
    return kind


def _written(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> list[Any]:
    """The arguments an op writes into (from its schema: ``Tensor(a!)``), positional or keyword."""
    found = []
    for i, name in _WRITTEN.get(id(func), ()):
        value = args[i] if i < len(args) else (kwargs or {}).get(name)
        if isinstance(value, (list, tuple)):
            found.extend(value)
        elif value is not None:
            found.append(value)
    return found


_WRITES, _SKIPPED = 1, 2
_UNGRADED_MAX = 64
_KINDS: dict[int, int] = {}
_WRITTEN: dict[int, tuple[tuple[int, str], ...]] = {}
_KEEP_ALIVE: list[Any] = []


class ForwardRecorder(TorchDispatchMode):
    """Records, for every autograd node made while active, its forward value and module."""

    def __init__(self, stats: StatsBuffer, modules: ModuleTracker) -> None:
        super().__init__()
        self.stats = stats
        self.modules = modules
        self.nodes: dict[tuple[int, str], NodeForward] = {}
        #: id(tensor) -> (weak reference to it, input indices) for model inputs and tensors computed
        #: from them without grad. Looked up by id (a WeakIdKeyDictionary costs a microsecond a lookup,
        #: on every op); a hit counts only if the reference still points at that very tensor.
        self.origins: dict[int, tuple[weakref.ref[torch.Tensor], frozenset[int]]] = {}
        self.recording = True
        self._order = 0
        self._pending: tuple[Any, ...] | None = None  # (out, module, consumed, writes, scope, where, func, args, kwargs)
        #: Outputs made with grad mode off (inside a custom autograd.Function's forward, above all) that
        #: had no grad_fn yet: the Function gives them one when it returns, so they are looked at again
        #: at the first op after it, whichever op made them. (Few, and only until grad mode is back on.)
        self._ungraded: deque[tuple[torch.Tensor, str, int]] = deque(maxlen=_UNGRADED_MAX)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._dynamo.disable by default, at a cost of a
        # third of the mode's overhead on every op. This handler never runs under compilation
        # (TorchDynamo does not compile under a dispatch mode: the model runs eagerly), so it opts out.
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        # Hot path: it runs for every ATen op of the forward.
        if self._pending is not None:
            self.flush()
        kind = _KINDS.get(id(func))
        if kind is None:
            kind = _op_kind(func)
        if kind & _WRITES and self.stats.watching:
            self.stats.before_write(_written(func, args, kwargs))  # read held values before this op changes them
        out = func(*args, **kwargs) if kwargs else func(*args)
        if self.recording and not kind & _SKIPPED:
            consumed: frozenset[int] = frozenset()
            origins = self.origins
            if origins:
                for a in args:
                    hit = origins.get(id(a))
                    if hit is not None:
                        if hit[0]() is a:
                            consumed |= hit[1]
                    elif type(a) is list or type(a) is tuple:
                        for t in a:
                            hit = origins.get(id(t))
                            if hit is not None and hit[0]() is t:
                                consumed |= hit[1]
            stack = self.modules._stack
            scopes = self.modules._scopes
            self._pending = (out, stack[-1] if stack else "", consumed, kind & _WRITES, scopes[-1] if scopes else "",
                             user_frame(), func, args, kwargs)
        return out

    def flush(self) -> None:
        """Resolve the last op's outputs to their autograd nodes (their grad_fn is set by now)."""
        if self._pending is None:
            if self._ungraded and torch.is_grad_enabled():
                self._resolve_ungraded()  # (a Function's outputs, at the end of the forward)
            return
        out, module, consumed, writes, scope, where, func, args, kwargs = self._pending
        self._pending = None
        source: str | None = None
        described: str | None = None
        self._order += 1
        tensors = [out] if isinstance(out, torch.Tensor) else _tensors_in(out)
        if writes:
            for t in list(tensors):
                if t.requires_grad and t._is_view():
                    # An in-place op on a view also rewrites its base, whose node (CopySlices) the op's
                    # own outputs never show: record the base's new value for that node too.
                    base = t._base
                    if base is not None and base.requires_grad and grad_fn_of(base) is not None:
                        tensors.append(base)
        nodes = self.nodes
        if self._ungraded and torch.is_grad_enabled():
            self._resolve_ungraded()
        for t in tensors:
            gf = grad_fn_of(t)
            if gf is None:
                if consumed:
                    # Computed from an input without grad (a reshape of x, say): it stands for that input.
                    self.origins[id(t)] = (weakref.ref(t), consumed)
                if not torch.is_grad_enabled():
                    self._ungraded.append((t, module, self._order))
                continue
            if writes and not torch.is_grad_enabled():
                # Written in place with grad mode off: inside a Function that marks it dirty, it takes
                # the Function's node when the Function returns.
                self._ungraded.append((t, module, self._order))
            key = node_id(gf)
            rec = nodes.get(key)
            if rec is None:
                if described is None:
                    source = source_text(where)
                    described = describe_args(func, args, kwargs, self.origins)
                rec = nodes[key] = NodeForward(self._order, module, scope, source, described)
            elif rec.order != self._order:
                continue  # an op that handed back an existing tensor: the node belongs to its maker
            if consumed:
                rec.inputs |= consumed
            nr = t.output_nr
            if nr not in rec.stats:
                rec.stats[nr] = self.stats.add(t)

    def _resolve_ungraded(self) -> None:
        """Outputs made with grad mode off that have a grad_fn now: a custom Function's outputs."""
        ungraded, self._ungraded = self._ungraded, deque(maxlen=_UNGRADED_MAX)
        for t, module, _ in ungraded:
            gf = grad_fn_of(t)
            if gf is None:
                continue
            key = node_id(gf)
            rec = self.nodes.get(key)
            if rec is None:
                # (the order of the op being resolved now: the Function's node is made as it returns)
                rec = self.nodes[key] = NodeForward(self._order, module)
            nr = t.output_nr
            if nr not in rec.stats:
                rec.stats[nr] = self.stats.add(t)

    def reset(self) -> None:
        """Forget the forward recorded so far (a new training step begins)."""
        self._pending = None
        self._ungraded.clear()
        self.nodes.clear()
        self.modules.reset_calls()
