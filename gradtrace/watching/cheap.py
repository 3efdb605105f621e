"""The two costly statistics of a watched step, made cheap: ‖Δw‖ and non-finite counts.

Measured on the ResNet-18-like benchmark loop (11 M parameters, 2-core CPU),
what made ``--every 1`` and the sentinel miss their budgets was not the
arithmetic but fresh memory: a ``clone()`` of every weight and a
``_foreach_sub`` result are 45 MB each, new every step, and on the CPU a
large allocation is new pages the kernel must fault in and zero — more time
than the subtraction itself. ``isfinite(g).sum()`` per gradient likewise
allocates a mask as big as the gradient.

- :class:`Before` keeps one copy of the weights per (optimizer, parameter) on
  the CPU, for as long as that optimizer lives (written in place each step: no
  new pages), and subtracts in place into it, so one step's ‖Δw‖ costs a copy, a subtraction and a norm
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

And two that make the numbers right, not cheaper: :func:`norms` computes the
norm of a float16/bfloat16 tensor in float32 (``_foreach_norm`` alone
returns it in the tensor's own dtype: a float16 gradient of 320 in every
element has a norm of 81,920, past float16's 65,504, and read ``inf`` —
a false "not finite" alarm), and :func:`dense` lets a sparse gradient
(``nn.Embedding(sparse=True)``) be measured by its stored values instead of
being left out.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["LOW_PRECISION", "UNMEASURED", "Before", "dense", "local", "nonfinite_count", "nonfinite_counts", "norms"]

try:  # (a build without torch.distributed has no DTensor, and then no tensor is one)
    from torch.distributed.tensor import DTensor as _DTensor
except Exception:  # pragma: no cover - depends on the torch build
    _DTensor = None

#: The ‖Δw‖ of a parameter whose shape changed inside the step (no update to measure); a norm is never negative.
UNMEASURED = -1.0
#: Float types whose norms are computed in float32 (their own range and precision are too small for a sum of squares).
LOW_PRECISION = (torch.float16, torch.bfloat16)


def norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each tensor, float32 (float64 for a float64 tensor), in one fused call per precision."""
    low = [i for i, t in enumerate(tensors) if t.dtype in LOW_PRECISION]
    rest = [i for i, t in enumerate(tensors) if t.dtype not in LOW_PRECISION]
    out: list[torch.Tensor | None] = [None] * len(tensors)
    if low:
        for i, n in zip(low, torch._foreach_norm([tensors[i] for i in low], 2, dtype=torch.float32)):
            out[i] = n
    if rest:
        for i, n in zip(rest, torch._foreach_norm([tensors[i] for i in rest])):
            out[i] = n if n.dtype == torch.float64 else n.float()
    return out  # type: ignore[return-value]


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of ``t``: an FSDP2/TP ``DTensor``'s local shard (its statistics are this rank's; nothing
    is gathered), any other tensor itself."""
    if _DTensor is not None and isinstance(t, _DTensor):
        return t.to_local()
    return t


def dense(grad: torch.Tensor) -> torch.Tensor:
    """What a tensor's norm and NaN count are of: the tensor itself (a DTensor's local shard), a sparse one's stored
    values (coalesced, so an index stored twice counts once, as in the dense tensor), a nested one's values."""
    grad = local(grad)
    if grad.is_nested:
        return torch.cat([c.reshape(-1) for c in grad.unbind()]) if grad.numel() else grad.new_zeros(0)
    if grad.layout == torch.sparse_coo:
        return grad.coalesce().values()
    if grad.layout != torch.strided:  # CSR/CSC/BSR/BSC hold each position once
        return grad.values()
    return grad


class Before:
    """Copies of the weights taken before an optimizer step, reused across steps on the CPU.

    A copy belongs to one optimizer's step of one parameter: an optimizer that
    steps another inside its own ``step()`` (Lookahead-style wrappers), or
    two optimizers holding one parameter, each measure their own update.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[str, int], torch.Tensor] = {}  # (optimizer, id(param)) -> its buffer (CPU only)
        self._watched: set[str] = set()

    def take(self, owner: str, params: list[torch.Tensor], holder: object | None = None) -> list[torch.Tensor]:
        """The weights' values now, in buffers of ``owner``'s own (call under no_grad); the buffers go when ``holder``
        (the optimizer) does: a sweep that trains model after model, each with its own optimizer, keeps no copies of
        the models it is done with."""
        if holder is not None and owner not in self._watched:
            self._watched.add(owner)
            weakref.finalize(holder, self.drop, owner)
        out: list[torch.Tensor] = []
        for p in params:
            d = local(p.detach())
            # (half precision kept in float32: the difference of two float16/bfloat16 values is exact there, not in
            # their own type)
            dtype = torch.float32 if d.dtype in LOW_PRECISION else d.dtype
            if d.device.type != "cpu":
                out.append(d.to(dtype, copy=True))
                continue
            key = (owner, id(p))
            buf = self._kept.get(key)
            if buf is None or buf.shape != d.shape or buf.dtype != dtype or buf.stride() != d.stride():
                buf = self._kept[key] = torch.empty_like(d, dtype=dtype)
            buf.copy_(d)
            out.append(buf)
        return out

    @staticmethod
    def delta_norms(params: list[torch.Tensor], before: list[torch.Tensor]) -> list[torch.Tensor]:
        """‖w_now − w_before‖ per parameter, float32 (:data:`UNMEASURED` where the shape changed inside the step);
        ``before`` is overwritten (the copies are spent)."""
        now = [local(p.detach()) for p in params]
        # A parameter whose shape changed inside the step (an optimizer that grows or prunes) has no update to measure.
        fits = [b.shape == w.shape for b, w in zip(before, now)]
        same = [i for i, (b, w) in enumerate(zip(before, now)) if fits[i] and b.dtype == w.dtype]
        if same:
            torch._foreach_sub_([before[i] for i in same], [now[i] for i in same])
        for i, (b, w) in enumerate(zip(before, now)):
            if fits[i] and b.dtype != w.dtype:
                b.sub_(w)
        out = [n.float() for n in norms(before)]
        return [n if ok else torch.full((), UNMEASURED, device=n.device) for n, ok in zip(out, fits)]

    def drop(self, owner: str) -> None:
        """Give back ``owner``'s copies."""
        for key in [k for k in self._kept if k[0] == owner]:
            del self._kept[key]
        self._watched.discard(owner)

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
