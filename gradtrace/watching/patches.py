"""What the watch engine wraps besides hooks: ``GradScaler.scale``/``step`` and ``clip_grad_norm_``.

torch has no hook for either: the scaler's skipped step never reaches the
optimizer's hooks, and the clip's total norm is only returned to the caller.
Each patch returns the callables that undo it (only while it is still the
one installed, see :func:`gradtrace.recorder.intercept.install`).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..recorder.intercept import install
from ..recorder.stats import invisible

if TYPE_CHECKING:
    from .engine import Watcher

__all__ = ["patch_clip", "patch_scaler"]


def patch_scaler(watcher: Watcher) -> list[Callable[[], None]]:
    """``scale``: remember the unscaled loss of a scaled one (the loss recorded is the user's, not ×65536).
    ``step``: a step the scaler skips is still the optimizer's step, recorded as skipped."""
    scaler_cls = torch.amp.GradScaler
    real_scale, real_step = scaler_cls.scale, scaler_cls.step

    def scale(scaler: Any, outputs: Any) -> Any:
        out = real_scale(scaler, outputs)
        if isinstance(outputs, torch.Tensor) and isinstance(out, torch.Tensor) and out.numel() == 1:
            watcher._scaled[id(out)] = (weakref.ref(out), outputs.detach())
        return out

    def step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        watcher._in_scaler_step.append(optimizer)
        o = watcher._opt(optimizer)
        o.stepped_in_scaler = False
        try:
            return real_step(scaler, optimizer, *args, **kwargs)
        finally:
            watcher._in_scaler_step.pop()
            if not o.stepped_in_scaler and scaler.is_enabled():
                watcher._skipped(o, scaler)

    return [install(scaler_cls, "scale", scale), install(scaler_cls, "step", step)]


def patch_clip(watcher: Watcher) -> list[Callable[[], None]]:
    """The total gradient norm before ``clip_grad_norm_`` (what it returns) and after (what it clipped to), on the device."""
    import torch.nn.utils.clip_grad as clip_module

    real = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = real(parameters, max_norm, *args, **kwargs)
        if isinstance(total, torch.Tensor):
            with torch.no_grad(), invisible():
                t = total.detach().float()
                coef = torch.clamp(float(max_norm) / (t + 1e-6), max=1.0)  # torch's own clip coefficient
                watcher._clip_now = (t, t * coef)
        return total

    return [install(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_),
            install(clip_module, "clip_grad_norm_", clip_grad_norm_)]
