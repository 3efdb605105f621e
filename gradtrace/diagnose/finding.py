"""The Finding record, its kinds and their severities (no torch here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..records import TraceNode

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["ALARM", "KINDS", "LOSS_SCALER_NOTE", "NONFINITE_DATA_NOTE", "NOTE", "SEVERITIES", "SEVERITY", "WARNING", "Finding", "make", "where"]

#: How a trace note about a non-finite tensor that is not drawn (a target, a buffer) begins:
#: capture writes it (recorder/gradnotes.py), diagnose names that tensor in the alarm.
NONFINITE_DATA_NOTE = "non-finite data: "
#: How the trace note about a GradScaler in use begins (then its scale and a colon): capture writes it, diagnose reads the scale.
LOSS_SCALER_NOTE = "AMP loss scaling: scale "

ALARM, WARNING, NOTE = "alarm", "warning", "note"
#: Most severe first. An alarm: the step's numbers are broken (NaN/inf). A warning: the
#: numbers are finite but training will go badly. A note: a fact worth knowing, not a fault.
SEVERITIES = (ALARM, WARNING, NOTE)

#: Each kind has one severity; kinds are listed most severe first.
SEVERITY: dict[str, str] = {
    "nan_data": ALARM, "inf_data": ALARM,
    "nan_forward": ALARM, "inf_forward": ALARM, "nan_backward": ALARM, "inf_backward": ALARM,
    "absorbed_backward": WARNING, "exploding": WARNING, "vanishing": WARNING, "dead": WARNING, "zero_grad": WARNING, "update_ratio": WARNING,
    "structural_zero": NOTE, "masked_inf": NOTE, "loss_scale": NOTE,
}
KINDS = tuple(SEVERITY)

#: One line of "what to try" per kind, where the remedy is standard.
HINTS: dict[str, str] = {
    "nan_data": "find the non-finite elements in this tensor (torch.isfinite) and clean or drop them before the step",
    "inf_data": "find the non-finite elements in this tensor (torch.isfinite) and clean or drop them before the step",
    "nan_forward": "look for log, sqrt, division or exp at this op: clamp its input or add an epsilon",
    "inf_forward": "look for exp, division or a huge weight at this op: lower the learning rate or clamp its input",
    "nan_backward": "look for sqrt, pow or division at this op whose derivative is infinite at 0: add an epsilon",
    "inf_backward": "look for sqrt, pow or division at this op whose derivative is infinite at 0: add an epsilon",
    "absorbed_backward": "add an epsilon before this op (torch.sqrt(x + 1e-12)) or clamp its input away from where its derivative is infinite",
    "exploding": "check the initialisation and lower the learning rate; a normalisation or gradient clipping helps",
    "vanishing": "add a residual connection or a normalisation, avoid saturating activations, check the initialisation",
    "dead": "check the initialisation of the layer before (its bias), lower the learning rate, or try LeakyReLU",
    "zero_grad": "this op's derivative is zero everywhere: use a straight-through estimator (x + (f(x) - x).detach())",
    "update_ratio": "lower the learning rate (or warm it up)",
    "structural_zero": "",
    "masked_inf": "",
    "loss_scale": "",
}


@dataclass(frozen=True)
class Finding:
    """One thing worth a look: its kind, the node it is about, a sentence, and the numbers behind it.

    ``severity`` is ``"alarm"`` (NaN/inf: the step's numbers are broken), ``"warning"``
    (finite, but training will go badly) or ``"note"`` (a fact, not a fault); ``module`` is
    the node's module path; ``hint`` says what to try; ``nodes`` lists the other nodes the
    finding covers (the parameters a grouped finding names, the span of a masked infinity).

    >>> f = Finding("dead", "op3", "'relu' outputs zero", severity="warning")
    >>> f.alarm, f.severity
    (False, 'warning')
    """

    kind: str
    node: str
    message: str
    numbers: dict[str, float] = field(default_factory=dict)
    severity: str = ""
    module: str = ""
    hint: str = ""
    nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.severity:
            object.__setattr__(self, "severity", SEVERITY.get(self.kind, WARNING))
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r} (must be one of {list(SEVERITIES)})")

    @property
    def alarm(self) -> bool:
        """True when the step's numbers are broken (NaN or inf)."""
        return self.severity == ALARM

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "node": self.node, "module": self.module,
                "message": self.message, "hint": self.hint, "nodes": list(self.nodes),
                "numbers": {k: (v if math.isfinite(v) else str(v)) for k, v in self.numbers.items()}}


def where(n: TraceNode) -> str:
    """'relu' in module 'encoder.1' (model.py:57 in forward)."""
    text = f"'{n.label}'" + (f" in module '{n.module}'" if n.module else " at top level")
    return text + (f" ({n.source})" if n.source else "")


def make(trace: Trace, kind: str, key: str, message: str, numbers: dict[str, float] | None = None,
         hint: str | None = None, nodes: tuple[str, ...] = ()) -> Finding:
    """A finding about node ``key``, with the kind's severity, the node's module and the kind's hint."""
    return Finding(kind, key, message, dict(numbers or {}), SEVERITY[kind], trace.node(key).module,
                   HINTS[kind] if hint is None else hint, nodes)
