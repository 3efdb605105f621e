"""Where an op came from and what else it read: the user's source line and a compact text of the op's
arguments (constants, indices, plain-tensor operands), recorded for every node at little cost per op.

The source line is the first frame outside torch, gradtrace and the standard library, found by walking
``f_back`` with a cache per code object; the arguments are described from the ATen call the dispatch
mode sees, leaving out schema defaults and values that say nothing to a reader.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import weakref
from typing import Any, Iterator

import torch

__all__ = ["describe_args", "source_text", "user_frame", "user_variables"]


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


def user_frame() -> tuple[Any, int] | None:
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


def source_text(where: tuple[Any, int] | None) -> str | None:
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
_KEEP_ALIVE: list[Any] = []  # the ops _SCHEMAS is keyed by, so their ids stay theirs


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


#: Modules whose frames are not the user's code when looking for the user's variables.
_LIBRARY_PREFIXES = ("torch", "gradtrace", "runpy", "click", "contextlib", "importlib")


def user_variables(max_frames: int = 3) -> Iterator[tuple[str, Any]]:
    """(name, value) of every variable of the first ``max_frames`` frames of user code, innermost first,
    locals before globals: where gradtrace looks for the names and objects a user's script holds
    (a leaf's variable name, the models, the batch, a GradScaler)."""
    frame = sys._getframe(1)
    seen = 0
    while frame is not None and seen < max_frames:
        if (frame.f_globals.get("__name__", "") or "").split(".")[0] not in _LIBRARY_PREFIXES:
            seen += 1
            for scope in (frame.f_locals, frame.f_globals):
                yield from list(scope.items())
        frame = frame.f_back
