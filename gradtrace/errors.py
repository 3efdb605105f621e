"""The exceptions gradtrace raises on purpose.

Everything gradtrace refuses is a :class:`GradtraceError`; the subclasses let a
caller (the CLI above all) tell apart what went wrong without parsing messages.
Exceptions raised by the user's own model or loss are never wrapped: they reach
the caller unchanged, with the user's traceback.
"""

from __future__ import annotations

__all__ = [
    "CaptureError",
    "DotNotFoundError",
    "GradtraceError",
    "RenderError",
    "RenderTimeoutError",
    "ScriptError",
]


class GradtraceError(Exception):
    """Base class of every error gradtrace raises itself."""


class CaptureError(GradtraceError):
    """The step cannot be traced: nothing requires grad, the loss is not a scalar, ..."""


class RenderError(GradtraceError):
    """A trace cannot be drawn or written: unknown format, unwritable path, ``dot`` failed."""


class DotNotFoundError(RenderError):
    """The Graphviz ``dot`` binary, needed for SVG, PNG and PDF output, is not installed."""


class RenderTimeoutError(RenderError):
    """Graphviz layout ran past the time budget given to ``render()``."""


class ScriptError(GradtraceError):
    """A script run under ``gradtrace render`` ended before the backward() it was asked to trace."""
