"""What the gradient shown is: notes for when the optimizer did not use the gradients drawn.

The diagram shows the gradient each parameter received from the recorded
``backward()``. The optimizer may have used something else: a sum over several
micro-steps (gradient accumulation), the same gradient clipped or scaled
(``clip_grad_norm_``, a ``GradScaler``), the average over ranks (DDP's
all-reduce), or one of several evaluations of a closure (``LBFGS.step(closure)``).
:class:`GradNotes` watches for each and says so in a trace note. The session
calls it from the hooks it already owns; it installs nothing itself.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch

from ..diagnose.finding import LOSS_SCALER_NOTE, NONFINITE_DATA_NOTE
from .provenance import user_variables

__all__ = ["GradNotes"]

#: Relative change of the total gradient norm between backward() and step() that counts as "changed".
_CHANGED = 1e-5
#: Tensors larger than this in the user's frames (a whole dataset held in a global) are not scanned for NaN.
_SCAN_MAX = 1 << 24


def _scannable(t: torch.Tensor) -> bool:
    # (Sparse, meta and tensor subclasses are left alone: a check must never break the user's step.)
    return (type(t) is torch.Tensor or isinstance(t, torch.nn.Parameter)) and t.layout == torch.strided and t.device.type != "meta" \
        and t.is_floating_point() and 0 < t.numel() <= _SCAN_MAX


def _user_tensors(max_frames: int = 3) -> dict[str, torch.Tensor]:
    """name -> tensor for the plain (no grad) floating tensors in the first few frames of user code."""
    found: dict[str, torch.Tensor] = {}
    for name, value in user_variables(max_frames):
        if isinstance(value, torch.Tensor) and not name.startswith("_") and not value.requires_grad and _scannable(value):
            found.setdefault(name, value)
    return found


def _grad_scalers(max_frames: int = 3) -> list[Any]:
    """The enabled GradScalers (torch.amp, torch.cuda.amp) in the first few frames of user code."""
    scaler_type = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if scaler_type is None:
        return []
    found: dict[int, Any] = {}
    for _, value in user_variables(max_frames):
        if isinstance(value, scaler_type) and value.is_enabled() and isinstance(getattr(value, "_scale", None), torch.Tensor):
            found.setdefault(id(value), value)
    return list(found.values())


def _by_device(tensors: list[torch.Tensor]) -> dict[torch.device, list[torch.Tensor]]:
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.device, []).append(t)
    return groups


def _total_norm(tensors: list[torch.Tensor]) -> float:
    """The norm of them all, concatenated: one host sync per device (a model may span several)."""
    total = 0.0
    with torch.no_grad():
        for group in _by_device([t for t in tensors if t.layout == torch.strided]).values():
            total += float(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in group]).square().sum())
    return total ** 0.5


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    """Each tensor's norm, one host sync per device."""
    out: dict[int, float] = {}
    with torch.no_grad():
        for group in _by_device([t for t in tensors if t.layout == torch.strided]).values():
            for t, n in zip(group, torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in group]).tolist()):
                out[id(t)] = n
    return [out.get(id(t), 1.0) for t in tensors]  # (a sparse gradient: taken as non-zero)


_F = TypeVar("_F", bound=Callable[..., None])


def _safe(method: _F) -> _F:
    """A check that fails says so in a note; it never breaks the user's training step."""

    @functools.wraps(method)
    def wrapper(self: GradNotes, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception as e:  # noqa: BLE001 - any failure here is ours, not the user's
            if not any(n.startswith("gradtrace could not check") for n in self.notes):  # once is enough
                self.notes.append(f"gradtrace could not check what the gradients shown are "
                                  f"({method.__name__}: {type(e).__name__}: {e})")

    return wrapper  # type: ignore[return-value]


class GradNotes:
    """Collects the notes; ``notes`` is appended to the session's own."""

    def __init__(self, model: Any) -> None:
        self.notes: list[str] = []
        self._model = model
        self._leaves: list[torch.Tensor] = []
        self._norm_after_backward: float | None = None
        self._in_step: str | None = None
        self._checked_step = False
        #: Parameters that held a non-zero gradient before the recorded backward (what the note says
        #: depends on which optimizer steps: only its own parameters' sums matter to it).
        self._waiting: list[torch.Tensor] = []
        self._waiting_said = False
        #: backward() calls between the recorded one and the optimizer step: their gradients add up in .grad.
        self.backward_after = 0
        ddp = getattr(getattr(torch.nn, "parallel", None), "DistributedDataParallel", None)
        if ddp is not None and isinstance(model, ddp):
            self.notes.append("the model is wrapped in DistributedDataParallel: the gradients drawn are this rank's, before the "
                              "all-reduce; the optimizer used their average over all ranks")

    @_safe
    def step_started(self, opt: torch.optim.Optimizer) -> None:
        """Optimizer pre-hook: remember that a step is running, and compare its .grad with the recorded gradient."""
        self._in_step = type(opt).__name__
        if self._norm_after_backward is None or self._checked_step:
            return
        self._checked_step = True
        self._say_waiting(opt)
        if self.backward_after:
            self.notes.append(f"{type(opt).__name__}.step() came after {self.backward_after} more backward() call(s) than the recorded one: "
                              "the update shown (Δw) reflects the sum of their gradients, not the recorded gradient alone")
        leaves = [p for p in self._leaves if p.grad is not None]
        now = _total_norm([p.grad for p in leaves])  # type: ignore[misc]
        before = self._norm_after_backward
        if abs(now - before) > _CHANGED * max(before, 1e-30):
            ratio = now / before if before else float("inf")
            what = ("clipped (clip_grad_norm_) or scaled down" if ratio < 1 else "scaled up or added to")
            if self.backward_after:
                what += f" (by the {self.backward_after} backward() call(s) after the recorded one, at least)"
            self.notes.append(f"the gradients changed between backward() and {type(opt).__name__}.step(): total ‖grad‖ {before:.4g} → "
                              f"{now:.4g} (×{ratio:.3g}), {what}; the diagram shows them before that change")

    def step_finished(self) -> None:
        self._in_step = None

    @_safe
    def backward_starting(self, leaves: list[torch.Tensor]) -> None:
        """Before the recorded backward: is a gradient already waiting (accumulation), are we inside step(closure)?"""
        self._leaves = [t for t in leaves if t.requires_grad]
        waiting = [t for t in self._leaves if t.grad is not None]
        norms = _norms([t.grad for t in waiting]) if waiting else []  # type: ignore[misc]
        self._waiting = [t for t, n in zip(waiting, norms) if n > 0]
        for scaler in _grad_scalers():
            scale = float(scaler._scale.detach().float().reshape(-1)[0])
            # (Whether it scaled this loss is for diagnose to see: a product of the loss by this scale.)
            self.notes.append(f"{LOSS_SCALER_NOTE}{scale:g}: a GradScaler is in use; a loss it scaled (scaler.scale(loss).backward()) "
                              f"gives gradients ×{scale:g}, and the optimizer sees them unscaled (unscale_ / step)")
            break
        if self._in_step is not None:
            self.notes.append(f"backward() ran inside {self._in_step}.step(closure): the optimizer may evaluate the closure "
                              "several times per step; the diagram shows the first evaluation")

    @_safe
    def nonfinite_data(self, drawn: set[int]) -> None:
        """Before the recorded backward: a target or buffer the step read that holds NaN or inf, named.

        Inputs handed to the model are nodes of their own (diagnose names them); a target fed
        to the loss, or a buffer, is not drawn, so it is named here, from the caller's frames
        and the model's buffers (one host sync for all of them).
        """
        candidates = {f"'{k}'": t for k, t in _user_tensors().items() if id(t) not in drawn}
        if isinstance(self._model, torch.nn.Module):
            for name, b in self._model.named_buffers():
                if _scannable(b) and id(b) not in drawn:
                    candidates[f"buffer '{name}'"] = b
        if not candidates:
            return
        counts: dict[str, list[int]] = {}
        with torch.no_grad():
            for group in _by_device(list(candidates.values())).values():  # one host sync per device
                ids = {id(t) for t in group}
                names = [k for k, t in candidates.items() if id(t) in ids]
                rows = torch.stack([torch.stack([t.isnan().sum(), t.isinf().sum()]) for t in group]).tolist()
                counts.update(zip(names, rows))
        for name, t in candidates.items():
            nan, inf = counts[name]
            if nan or inf:
                what = " and ".join(([f"{nan} NaN"] if nan else []) + ([f"{inf} inf"] if inf else []))
                self.notes.append(f"{NONFINITE_DATA_NOTE}{name} {list(t.shape)} in the code that called backward() holds {what}; "
                                  "it is not drawn (a target or buffer an op read), so the first op that reads it shows where it enters")

    def _say_waiting(self, opt: torch.optim.Optimizer | None) -> None:
        """The accumulation note, once: about the stepping optimizer's own parameters, or (no step seen) plain fact."""
        if self._waiting_said or not self._waiting:
            return
        self._waiting_said = True
        if opt is None:
            self.notes.append(f"{len(self._waiting)} parameter(s) already held a gradient before the recorded backward(): the diagram "
                              "shows this backward()'s gradient alone, not what they held before")
            return
        owned = {id(p) for group in opt.param_groups for p in group["params"]}
        mine = [t for t in self._waiting if id(t) in owned]
        if mine:
            self.notes.append(f"{len(mine)} parameter(s) that {type(opt).__name__}.step() updates already held a gradient before the recorded "
                              "backward() (gradient accumulation): the diagram shows this micro-step's gradient; the optimizer "
                              "uses the sum over the accumulation cycle")

    @_safe
    def finish(self) -> None:
        """At the end of the capture: the notes that wait for an optimizer step that never came."""
        if not self._checked_step:
            self._say_waiting(None)

    @_safe
    def backward_finished(self) -> None:
        # The .grad the optimizer would see if nothing touched it: accumulated value after this backward.
        self._norm_after_backward = _total_norm([t.grad for t in self._leaves if t.grad is not None])  # type: ignore[misc]
