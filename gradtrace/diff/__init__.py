"""Comparing two traces: ``Trace.diff(other)`` and ``gradtrace diff A B``.

Nodes are matched by module, op and position (:mod:`.match`), each pair is compared
(:mod:`.metrics`: gradient norm, value RMS, NaN/inf, shape, dtype, update ratio), and the result
(:class:`TraceDiff`) is drawn by ``gradtrace.render.diff_*``. No torch here: two saved trace
files compare on any machine.
"""

from __future__ import annotations

from .match import Matching, match
from .metrics import NodeChange, grad_norm, log2_ratio, value_rms
from .result import NothingMatched, TraceDiff, diff_traces

__all__ = ["Matching", "NodeChange", "NothingMatched", "TraceDiff", "diff_traces", "grad_norm", "log2_ratio", "match", "value_rms"]
