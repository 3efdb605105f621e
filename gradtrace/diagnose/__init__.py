"""Where do gradients vanish, explode or turn NaN? Findings read off a Trace (no torch here).

Each :class:`Finding` has a severity: an **alarm** when the step's numbers are broken
(NaN or inf, named where it starts: in the data, a forward op or a backward op), a
**warning** when they are finite but training will go badly (vanishing, exploding,
dead ReLU, a gradient stopped by an op with zero derivative, an update larger than
the weight), a **note** for a fact worth knowing that is no fault (a gradient that is
zero by the model's structure, a ``-inf`` mask). Every threshold and its reason is in
:mod:`gradtrace.diagnose.thresholds`.

Kinds: ``nan_data`` / ``inf_data`` (an input, parameter or other tensor holds it before
any op), ``nan_forward`` / ``inf_forward`` (an op's output holds it while its inputs do
not), ``nan_backward`` / ``inf_backward`` (an op's backward turned a finite gradient
non-finite), ``exploding`` / ``vanishing`` (a parameter's gradient far from the others',
or one layer that scales the signal by ≥1e3 both ways), ``dead``, ``zero_grad``,
``update_ratio``, ``absorbed_backward`` (a backward op made NaN/inf that a later backward op zeroed
before any parameter: a warning), ``structural_zero``, ``masked_inf``, ``loss_scale`` (a constant
multiplies the loss: every gradient shown is scaled by it, a note).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .finding import ALARM, KINDS, NOTE, SEVERITIES, SEVERITY, WARNING, Finding
from .magnitude import dead_units, layer_gains, parameter_extremes, stopped_gradients
from .scaling import loss_scale_ops, loss_scales
from .numeric import backward_origins, data_alarms, forward_origins
from .thresholds import FAR, UPDATE_HIGH
from .update import update_sizes

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["ALARM", "FAR", "KINDS", "NOTE", "SEVERITIES", "SEVERITY", "UPDATE_HIGH", "WARNING", "Finding", "diagnose"]


def diagnose(trace: Trace) -> list[Finding]:
    """Findings about ``trace``: alarms first, then warnings, then notes; within each, by kind and forward order.

    >>> [(f.severity, f.kind) for f in diagnose(t)]      # doctest: +SKIP
    [('alarm', 'nan_forward')]
    """
    forward = trace.forward_order()
    backward = trace.backward_order()
    numeric = data_alarms(trace) + forward_origins(trace, forward) + backward_origins(trace, backward)
    # (A non-finite gradient absorbed before any parameter, or a mask, is no broken step: not a root cause.)
    alarms = [f for f in numeric if f.alarm]
    stopped, explained = stopped_gradients(trace, forward)
    # A constant applied to the loss (AMP's GradScaler, loss / accumulation_steps) scales every
    # gradient alike and no layer's signal: a note at most, never a layer gain.
    scale_ops = loss_scale_ops(trace, forward)
    scales = loss_scales(trace, scale_ops)
    gains = layer_gains(trace, forward, {k for k, _ in scale_ops})
    # One layer that scales the signal by 1e3 or more explains every odd parameter gradient and
    # update around it (larger upstream and downstream, smaller at the layer itself): name that
    # layer, not the echoes. Likewise a broken step (an alarm) explains every magnitude after it.
    root_cause = bool(gains) or bool(alarms)
    findings = numeric + scales + gains + parameter_extremes(trace, explained, root_cause) + dead_units(trace, forward)
    findings += stopped + ([] if root_cause else update_sizes(trace, forward))
    rank = {k: i for i, k in enumerate(KINDS)}
    severity = {s: i for i, s in enumerate(SEVERITIES)}
    position = {k: i for i, k in enumerate(forward)}
    return sorted(findings, key=lambda f: (severity[f.severity], rank[f.kind], position.get(f.node, 0)))
