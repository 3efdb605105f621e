"""The two costly statistics of a watched step, made cheap: ‖Δw‖ and non-finite counts.

Measured on the ResNet-18-like benchmark loop (11 M parameters, 2-core CPU),
what made ``--every 1`` and the sentinel miss their budgets was not the
arithmetic but fresh memory: a ``clone()`` of every weight and a
``_foreach_sub`` result are 45 MB each, new every step, and on the CPU a
large allocation is new pages the kernel must fault in and zero — more time
than the subtraction itself. ``isfinite(g).sum()`` per gradient likewise
allocates a mask as big as the gradient.

- :class:`Before` keeps one copy of the weights per parameter for the whole
  run on the CPU (written in place each step: no new pages) and subtracts in
  place into it, so one step's ‖Δw‖ costs a copy, a subtraction and a norm
  over memory already mapped. On an accelerator the caching allocator hands
  memory back without faults, and a copy kept between steps would raise the
  peak memory of the forward pass: there a fresh copy is taken per step, as
  before, and only the subtraction is in place.
- :func:`nonfinite_counts` counts NaN/inf only where they can be: a tensor
  whose 2-norm is finite has none (a NaN makes the norm NaN, an inf makes it
  inf), so on the CPU, where reading the norms costs nothing, the masks are
  built only for the tensors whose norm is not finite (an overflowing norm of
  finite values included: its count is then computed, and is 0). On an
  accelerator reading the norms would be a sync per step, so every count is
  computed on the device as before.
"""

from __future__ import annotations

import torch

__all__ = ["Before", "nonfinite_count", "nonfinite_counts"]


class Before:
    """Copies of the weights taken before an optimizer step, reused across steps on the CPU."""

    def __init__(self) -> None:
        self._kept: dict[int, torch.Tensor] = {}  # id(param) -> its buffer (CPU only)

    def take(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The weights' values now, in buffers of their own (call under no_grad)."""
        out: list[torch.Tensor] = []
        for p in params:
            d = p.detach()
            if d.device.type != "cpu":
                out.append(d.clone())
                continue
            buf = self._kept.get(id(p))
            if buf is None or buf.shape != d.shape or buf.dtype != d.dtype or buf.layout != d.layout:
                buf = self._kept[id(p)] = torch.empty_like(d)
            buf.copy_(d)
            out.append(buf)
        return out

    @staticmethod
    def delta_norms(params: list[torch.Tensor], before: list[torch.Tensor]) -> list[torch.Tensor]:
        """‖w_now − w_before‖ per parameter, float32; ``before`` is overwritten (the copies are spent)."""
        torch._foreach_sub_(before, [p.detach() for p in params])
        return [n.float() for n in torch._foreach_norm(before)]

    def clear(self) -> None:
        """Give the kept copies back (the run is over)."""
        self._kept.clear()


def nonfinite_count(t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """NaN + inf elements of ``t`` (a float32 0-d tensor on ``t``'s device), given ``t``'s 2-norm."""
    if norm.device.type == "cpu" and bool(torch.isfinite(norm)):
        return torch.zeros((), dtype=torch.float32)
    return torch.logical_not(torch.isfinite(t)).sum().float()


def nonfinite_counts(tensors: list[torch.Tensor], norms: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`nonfinite_count` of each tensor (``norms``: their 2-norms, in the same order)."""
    return [nonfinite_count(t, n) for t, n in zip(tensors, norms)]
