"""Forward recording: which module is running, and what every op produced.

:class:`ModuleTracker` keeps the stack of qualified module names with global
module hooks. :class:`ForwardRecorder` is a ``TorchDispatchMode``: it sees
every ATen op below autograd (the ops inside composite functions too), so
every autograd node gets a forward value, not only those a
``__torch_function__`` hook would see.

An output's ``grad_fn`` is set by the autograd layer *after* the op returns
to it, so the recorder remembers the last op's outputs and resolves them to
their autograd node when the next op starts (or when the forward ends), while
their values are still the ones the op produced.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import weakref
from collections import deque
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .stats import StatsBuffer

__all__ = ["ForwardRecorder", "ModuleTracker", "NodeForward", "grad_fn_of", "node_id"]

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


class ModuleTracker:
    """The qualified name of the module that is running, kept by global module hooks.

    Modules of a known root are named as ``root.named_modules()`` names them. A
    module first called outside any known module becomes a root itself: the
    first such root is named ``""`` when no root was given, later ones by their
    class name (``NLLLoss``), so a loss module does not merge into the model.
    """

    def __init__(self, root: nn.Module | None, on_root_call: Callable[[nn.Module, tuple[Any, ...]], None]) -> None:
        self.names: dict[int, str] = {}
        self.classes: dict[str, str] = {}
        self.roots: list[tuple[str, nn.Module]] = []
        self.notes: list[str] = []
        self._stack: list[str] = []
        #: Beside each entry of _stack, its scope: the path with repeated calls numbered (block#2.linear).
        self._scopes: list[str] = []
        self._calls: dict[str, int] = {}  # scope path without its own number -> calls so far this step
        self._on_root_call = on_root_call
        self._given = root is not None
        if root is not None:
            self._add_root(root, "")

    @property
    def current(self) -> str:
        return self._stack[-1] if self._stack else ""

    def _add_root(self, module: nn.Module, prefix: str) -> None:
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module) and type(module).__name__ == "OptimizedModule":
            # torch.compile's wrapper: name the module it wraps, without the "_orig_mod." prefix.
            self.notes.append(
                f"{type(inner).__name__} was compiled with torch.compile; while traced it ran eagerly "
                "(TorchDynamo does not compile under a dispatch mode), so values are eager-mode values"
            )
            self.names[id(module)] = prefix
            module = inner
        self.roots.append((prefix, module))
        for name, sub in module.named_modules(prefix=prefix):
            self.names.setdefault(id(sub), name)
            self.classes.setdefault(name, type(sub).__name__)

    def _root_prefix(self, module: nn.Module) -> str:
        if not self.roots:
            return ""
        base = type(module).__name__
        taken = {p for p, _ in self.roots}
        prefix, n = base, 2
        while prefix in taken:
            prefix, n = f"{base}#{n}", n + 1
        return prefix

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self.names.get(id(module))
        if name is None:
            if self._stack:
                # A module made on the fly inside another: name it under its caller.
                name = f"{self._stack[-1]}.<{type(module).__name__}>".lstrip(".")
                self.names[id(module)] = name
                self.classes.setdefault(name, type(module).__name__)
            else:
                prefix = self._root_prefix(module)
                self._add_root(module, prefix)
                name = prefix
        if not self._stack:
            self._on_root_call(module, args)
        self._scopes.append(self._scope_of(name))
        self._stack.append(name)

    def _scope_of(self, name: str) -> str:
        """``name`` inside the calling module's scope, numbered when this is not its first call there."""
        parent = self._stack[-1] if self._stack else ""
        if parent and name.startswith(parent + "."):
            base = self._scopes[-1] + name[len(parent):]  # a submodule of a repeated call: block#2.linear
        else:
            base = name
        if not base:
            return base  # the model itself
        n = self._calls[base] = self._calls.get(base, 0) + 1
        return base if n == 1 else f"{base}#{n}"

    def reset_calls(self) -> None:
        """Number module calls afresh (a new training step begins)."""
        self._calls.clear()

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._stack:
            self._stack.pop()
        if self._scopes:
            self._scopes.pop()

    def add_found_root(self, module: nn.Module) -> None:
        """A module whose parameters reached the graph without any call of it passing through
        module hooks (``net.forward(x)``): name its parameters and submodules under it."""
        if any(m is module for _, m in self.roots) or id(module) in self.names:
            return
        base = type(module).__name__
        taken = {p for p, _ in self.roots}
        prefix, n = base, 2
        while prefix in taken:
            prefix, n = f"{base}#{n}", n + 1
        self._add_root(module, prefix)

    def final_prefixes(self, used: set[int]) -> dict[str, str]:
        """Root prefix as recorded -> the prefix to show, given the ids of the parameters in the graph.

        Without a given model, roots are named in the order they are first called, so a transform
        or a second network called first would take the bare names (``""``) from the model. The
        model is the one root whose parameters the step used: it is shown bare, every other root
        under its class name. When several roots' parameters are in the graph (a GAN's generator
        step), each goes under its class name.
        """
        if self._given or not self.roots:
            return {}
        owners = [prefix for prefix, root in self.roots if any(id(p) in used for p in root.parameters())]
        bare = owners[0] if len(owners) == 1 else None
        taken = {p for p, _ in self.roots if p}
        out: dict[str, str] = {}
        for prefix, root in self.roots:
            if prefix == bare:
                out[prefix] = ""
            elif prefix == "":
                base = type(root).__name__
                name, n = base, 2
                while name in taken:
                    name, n = f"{base}#{n}", n + 1
                taken.add(name)
                out[prefix] = name
        if not out:
            return {}
        return {prefix: out.get(prefix, prefix) for prefix, _ in self.roots}  # every root, to tell paths apart

    def named_parameters(self) -> dict[int, str]:
        """id(parameter) -> qualified name, over every root seen so far."""
        names: dict[int, str] = {}
        for prefix, root in self.roots:
            for name, p in root.named_parameters(prefix=prefix):
                names.setdefault(id(p), name)
        return names


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
                             _user_frame(), func, args, kwargs)
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
                    source = _source_text(where)
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


# -- where an op came from ---------------------------------------------------------------

def _dirs(paths: set[str]) -> tuple[str, ...]:
    return tuple(sorted({os.path.join(q, "") for d in paths for q in (d, os.path.realpath(d))}))


def _own_dirs() -> tuple[str, ...]:
    import gradtrace

    return _dirs({os.path.dirname(torch.__file__), os.path.dirname(gradtrace.__file__)})


def _stdlib_dirs() -> tuple[str, ...]:
    return _dirs({p for p in (sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib")) if p})


_OWN_DIRS = _own_dirs()
_STDLIB_DIRS = _stdlib_dirs()
_is_compiling = torch.compiler.is_compiling
#: code object -> whether it belongs to torch, gradtrace or Python's standard library. Keyed by the code
#: object itself (kept alive by the dict, as the functions that own them usually are anyway).
_IS_LIBRARY: dict[Any, bool] = {}


def _is_library(code: Any) -> bool:
    name = code.co_filename
    # (site-packages lives under the standard library's folder: installed packages other than torch, a
    # model library such as transformers, are where the op was written, so they count as the user's.)
    found = (name.startswith("<frozen") or name.startswith(_OWN_DIRS)
             or (name.startswith(_STDLIB_DIRS) and "-packages" + os.sep not in name))
    _IS_LIBRARY[code] = found
    return found


def _user_frame() -> tuple[Any, int] | None:
    """(code, line) of the innermost frame outside torch, gradtrace and the standard library.

    Runs on every op: a walk up ``f_back`` with one dict lookup per frame, no stack capture.
    """
    if _is_compiling():
        return None  # TorchDynamo tracing this handler (it then runs eagerly): it cannot trace frame access
    f = sys._getframe(2)
    lib = _IS_LIBRARY
    while f is not None:
        code = f.f_code
        found = lib.get(code)
        if found is None:
            found = _is_library(code)
        if not found:
            return code, f.f_lineno
        f = f.f_back
    return None


_SOURCES: dict[tuple[Any, int], str] = {}


def _source_text(where: tuple[Any, int] | None) -> str | None:
    """``model.py:42 in forward``."""
    if where is None:
        return None
    text = _SOURCES.get(where)
    if text is None:
        code, line = where
        text = _SOURCES[where] = f"{os.path.basename(code.co_filename)}:{line} in {code.co_name}"
    return text


# -- what else an op read --------------------------------------------------------------------

#: Plain tensors with at most this many elements (on the CPU) show their values.
ARG_VALUES_MAX = 6
#: Longest args text; longer ones end in an ellipsis.
ARGS_MAX_CHARS = 80
_SCHEMAS: dict[int, tuple[tuple[str, Any], ...]] = {}  # id(op) -> (argument name, default or _NO_DEFAULT)


def describe_args(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                  origins: dict[int, tuple[weakref.ref[torch.Tensor], frozenset[int]]]) -> str:
    """The op's arguments a drawing does not show as edges: ``dim=0, index=1``, ``other=2.0``.

    Tensors that require grad and model inputs are edges and left out; arguments
    equal to the schema's default are left out too. Small plain CPU tensors show
    their values, others their shape (``tensor (32, 784)``). Called once per
    autograd node, not per op.
    """
    schema = _SCHEMAS.get(id(func))
    if schema is None:
        try:
            schema = tuple((a.name, a.default_value if a.has_default_value() else _NO_DEFAULT) for a in func._schema.arguments)
        except (AttributeError, RuntimeError):
            return ""
        _SCHEMAS[id(func)] = schema
        _KEEP_ALIVE.append(func)
    parts = []
    n = len(args)
    for i, (name, default) in enumerate(schema):
        if i < n:
            value = args[i]
        elif kwargs and name in kwargs:
            value = kwargs[name]
        else:
            continue
        t = type(value)
        if t is int or t is bool:
            if (value != default or type(default) is not t) and _TRIVIAL.get(name, _NO_DEFAULT) != value:
                parts.append(f"{name}={_REDUCTIONS[value]}" if name == "reduction" and value in _REDUCTIONS else f"{name}={value}")
        elif t is list and all(type(v) is int for v in value):
            if (default is _NO_DEFAULT or value != list(default or ())) and not (
                    name in _TRIVIAL_EACH and all(v == _TRIVIAL_EACH[name] for v in value)):
                parts.append(f"{name}={value}")
        elif value is not None and value is not default:
            text = _describe_value(value, origins)
            if text is not None and not (t is float and value == default):
                parts.append(f"{name}={text}")
    out = ", ".join(parts)
    return out if len(out) <= ARGS_MAX_CHARS else out[: ARGS_MAX_CHARS - 1] + "\u2026"


_NO_DEFAULT = object()
# Arguments some ops take without a schema default whose usual value tells a reader nothing
# (convolution's transposed=False, groups=1, dilation=[1, 1]; nll_loss's ignore_index=-100).
_TRIVIAL: dict[str, Any] = {"transposed": False, "half_to_float": False, "groups": 1, "ignore_index": -100}
_TRIVIAL_EACH: dict[str, int] = {"dilation": 1, "output_padding": 0, "padding": 0}
_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}  # (torch's Reduction enum, as the ops receive it)


def _number(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.1f}" if v.is_integer() and abs(v) < 1e16 else f"{v:.6g}"  # (nan and inf: 'nan', 'inf')
    return str(v)


def _describe_value(value: Any, origins: dict[int, tuple[weakref.ref[torch.Tensor], frozenset[int]]]) -> str | None:
    if isinstance(value, torch.Tensor):
        hit = origins.get(id(value))
        if value.requires_grad or (hit is not None and hit[0]() is value):
            return None  # drawn as an edge
        if value.numel() <= ARG_VALUES_MAX and value.is_cpu and not value.is_sparse:
            try:
                if value.dim() == 0:
                    return _number(value.item())
                return "[" + ", ".join(_number(v) for v in value.reshape(-1).tolist()) + "]"
            except (RuntimeError, TypeError, ValueError):  # (a tensor subclass without data, say)
                return f"tensor {tuple(value.shape)}"
        return f"tensor {tuple(value.shape)}"
    if isinstance(value, (bool, int, float)):
        return _number(value)
    if isinstance(value, (list, tuple)):
        items = [_describe_value(v, origins) for v in value]
        if all(v is None for v in items) and value:
            return None  # every element is an edge (cat's inputs)
        return "[" + ", ".join("_" if v is None else v for v in items) + "]"
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(value).removeprefix("torch.")
    text = str(value)
    return text if len(text) <= 24 else text[:23] + "…"


def rename_path(path: str, prefixes: dict[str, str]) -> str:
    """``path`` with its root prefix replaced as ``prefixes`` says (see ``ModuleTracker.final_prefixes``).

    >>> rename_path("Net.pool#2", {"Net": "", "": "Normalize"}), rename_path("", {"Net": "", "": "Normalize"})
    ('pool#2', 'Normalize')
    """
    if not prefixes:
        return path
    best = None
    for old in prefixes:
        if old and (path == old or path.startswith((old + ".", old + "#"))) and (best is None or len(old) > len(best)):
            best = old
    if best is None:
        if "" not in prefixes:
            return path
        best = ""
    new, rest = prefixes[best], path[len(best):]
    if not best:
        return new + ("." + rest if rest and new and not rest.startswith("#") else rest)
    rest = rest.lstrip(".") if not new else rest
    return new + rest
