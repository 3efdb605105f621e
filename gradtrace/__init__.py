"""gradtrace: see one PyTorch training step, node by node.

>>> import gradtrace                                    # doctest: +SKIP
>>> t = gradtrace.trace(net, x, loss=lambda out: F.nll_loss(out, y))   # doctest: +SKIP
>>> t.render("step.svg")                                # doctest: +SKIP
>>> with gradtrace.watch(model) as w: ...               # doctest: +SKIP

torch is imported lazily: ``Trace.from_json`` and rendering work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CaptureError, DotNotFoundError, GradtraceError, RenderError, RenderTimeoutError, ScriptError
from .records import OptimizerStep, ReducedGrad, TensorStats, TraceEdge, TraceNode
from .render.options import RenderOptions
from .steptrace import Trace

if TYPE_CHECKING:
    from .recorder import Capture, capture, trace
    from .watching import watch

__version__ = "0.1.0"

__all__ = [
    "Capture",
    "CaptureError",
    "DotNotFoundError",
    "GradtraceError",
    "OptimizerStep",
    "ReducedGrad",
    "RenderError",
    "RenderOptions",
    "RenderTimeoutError",
    "ScriptError",
    "TensorStats",
    "Trace",
    "TraceEdge",
    "TraceNode",
    "__version__",
    "capture",
    "trace",
    "watch",
]

_CAPTURE_NAMES = ("Capture", "capture", "trace")


def __getattr__(name: str) -> Any:
    # The capture side imports torch; load it only when asked for.
    if name in _CAPTURE_NAMES:
        from . import recorder as _capture

        return getattr(_capture, name)
    if name == "watch":
        # (the package is gradtrace.watching: a submodule named watch would replace this function once imported)
        from .watching import watch

        return watch
    raise AttributeError(f"module 'gradtrace' has no attribute {name!r}")
