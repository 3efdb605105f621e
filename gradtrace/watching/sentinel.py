"""The sentinel of ``check --every-step``: every step reduced to one row on the device, read in batches.

A row is (loss, total gradient norm, ‖Δw‖, ‖w‖) over all the parameters an
optimizer stepped: one fused ``torch._foreach_norm`` per kind, no host sync.
Rows reach the host every :data:`BATCH` steps on an accelerator, at once on
the CPU (where reading costs nothing). The first row that is broken (a
non-finite loss or gradient norm, non-finite weights after the step, or an
update larger than the weights themselves) is the :class:`Alarm`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from ..recorder.stats import invisible
from .cheap import dense, local, norms

__all__ = ["BATCH", "UPDATE_RATIO_ALARM", "Alarm", "Sentinel"]

#: Steps whose device statistics are read to the host at once.
BATCH = 32
#: The update-ratio alarm: the whole update larger than the weights themselves ...
UPDATE_RATIO_ALARM = 1.0
#: ... and JUMP times larger than the median of this optimizer's last updates (at least HISTORY_MIN of them). The
#: ratio alone is no alarm: from zero (or near-zero) weights, as linear regression by SGD or a zero-initialised head
#: starts, every early update is bigger than the weights it adds to, and momentum makes the second 1.9 times the first.
#: An update that explodes is bigger than its own recent past as well.
UPDATE_JUMP = 10.0
HISTORY_MIN = 3

Fingerprint = tuple[int, str, float, float]


@dataclass
class Alarm:
    """The first step the sentinel found broken: step number, what, and the ``backward()`` call to trace."""

    step: int
    text: str
    backward_call: int
    optimizer: str | None = None


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The norm of all ``tensors`` together (half precision measured in float32; the sum over the tensors in float64
    where the device has it, so no total overflows where every part is finite)."""
    parts = norms(tensors)
    acc = torch.float32 if parts[0].device.type == "mps" else torch.float64
    return torch.linalg.vector_norm(torch.stack([n.to(acc) for n in parts]))


class Sentinel:
    """Checks every step; ``on_alarm`` is called once, with the first broken step."""

    def __init__(self, on_alarm: Callable[[Alarm], None] | None = None) -> None:
        self.on_alarm = on_alarm
        self.alarm: Alarm | None = None
        self.fingerprints: list[Fingerprint] = []
        self._rows: list[tuple[int, str, list[int], torch.Tensor, torch.Tensor | None]] = []
        self._told = False
        self._updates: dict[str, list[float]] = {}  # optimizer -> its last updates' norms (host, newest last)
        #: Under torchrun: called at each read with this batch's first broken step (or None) and the batch's last
        #: step; returns the step every rank agreed on (or None). Set by gradtrace.watching.rankcheck.
        self.agree: Callable[[Alarm | None, int], Alarm | None] | None = None

    def before_step(self, params: list[torch.Tensor], *, weights: bool = True) -> list[torch.Tensor] | None:
        """The gradients' total norm (and the weights', for the update ratio) before the optimizer step."""
        if not params:
            return None
        with torch.no_grad(), invisible():
            gn = _total_norm([dense(p.grad) for p in params])
            return [gn, _total_norm([local(p.detach()) for p in params]) if weights else torch.zeros(())]

    def after_step(self, step: int, opt: str, calls: list[int], micro: list[torch.Tensor], delta: list[torch.Tensor] | None,
                   pre: list[torch.Tensor] | None) -> None:
        """Add the step's row: its micro-steps' losses, and the update the step made (``delta``: ‖Δw‖ per parameter)."""
        with torch.no_grad(), invisible():
            losses = torch.stack(micro) if micro else None
            loss = losses.mean() if losses is not None else torch.zeros(())
            dev = loss.device
            acc = torch.float32 if dev.type == "mps" else torch.float64
            zero = torch.zeros((), device=dev, dtype=acc)
            if pre is not None and delta is not None:
                # (a negative norm: a parameter whose shape changed inside the step, unmeasured: see cheap.Before)
                dn = torch.linalg.vector_norm(torch.stack([d.to(dev, acc) for d in delta]).clamp_min(0)) if delta else zero
                parts = [loss, pre[0], dn, pre[1]]
            elif pre is not None:  # no optimizer: no update to measure
                parts = [loss, pre[0], zero, zero]
            else:
                parts = [loss, zero, zero, zero]
            row = torch.stack([t.to(dev, acc) for t in parts])
        self._rows.append((step, opt, calls, row, losses))
        if len(self._rows) >= BATCH or row.device.type == "cpu":
            self.read()

    def drop(self, opt: str) -> None:
        """Forget the rows of ``opt`` (the backward()-steps of a script that turned out to have an optimizer)."""
        self._rows = [r for r in self._rows if r[1] != opt]
        self.fingerprints = [f for f in self.fingerprints if f[1] != opt]

    def read(self) -> None:
        """Bring the waiting rows to the host (one copy) and look for the first broken step."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        values = torch.stack([r[3] for r in rows]).cpu().tolist()
        micro = [r[4].cpu().tolist() if r[4] is not None else [] for r in rows]
        for (step, opt, calls, _, _), (loss, gn, dn, wn), losses in zip(rows, values, micro):
            self.fingerprints.append((step, opt, loss, gn))
            recent = self._updates.setdefault(opt, [])
            if self.alarm is None:
                found = _finding(opt, calls, losses, loss, gn, dn, wn, recent)
                if found is not None:
                    self.alarm = Alarm(step, found[0], found[1], opt)
            if math.isfinite(dn) and dn > 0:
                recent.append(dn)
                del recent[:-16]
        if self.agree is not None:  # (every rank reads at the same step counts, so every rank calls it there)
            self.alarm = self.agree(self.alarm, rows[-1][0])
        if self.alarm is not None and not self._told and self.on_alarm is not None:
            self._told = True
            self.on_alarm(self.alarm)


def _finding(opt: str, calls: list[int], losses: list[float], loss: float, gn: float, dn: float,
             wn: float, recent: list[float]) -> tuple[str, int] | None:
    """What is broken in one row, and the backward() call whose trace shows it (None: healthy)."""
    call = calls[-1]
    bad = [c for c, v in zip(calls, losses) if not math.isfinite(v)]
    if bad or not math.isfinite(loss):
        first = bad[0] if bad else call
        text = f"loss is {word(loss)}"
        if len(calls) > 1:
            text += f" (micro-step {calls.index(first) + 1} of {len(calls)})"
        return text, first
    if not math.isfinite(gn):
        return f"gradients are not finite (total gradient norm {word(gn)})", call
    if not math.isfinite(dn):
        return f"the weights of {opt} are not finite after its step", call
    jump = statistics.median(recent) * UPDATE_JUMP if len(recent) >= HISTORY_MIN else math.inf
    if wn > 0 and dn / wn > UPDATE_RATIO_ALARM and dn > jump:
        return (f"update ratio |dw|/|w| = {dn / wn:.3g} over all parameters of {opt}: the step changed the weights by "
                f"more than their own size, {dn / statistics.median(recent):.3g} times its recent updates"), call
    return None


def word(x: float) -> str:
    """A number as an alarm says it: NaN, inf, -inf or three digits."""
    return "NaN" if math.isnan(x) else "inf" if x > 0 and math.isinf(x) else "-inf" if math.isinf(x) else f"{x:.3g}"
