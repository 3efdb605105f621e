"""Tensor statistics, computed where the tensor lives; no tensor outlives the capture.

Capture calls :meth:`StatsBuffer.add` for every forward value and gradient it
records: hundreds to thousands of tensors per step, most of them small. The
cost that matters is then the fixed cost per tensor, not the arithmetic, so:

- **Small tensors are batched.** A copy of each is staged with others of the
  same size, device and dtype; a group is reduced at once (rows of one
  stacked matrix: ``aminmax``, ``sum``, ``vector_norm`` along ``dim=1``),
  a handful of kernels for hundreds of tensors. Staged copies are bounded
  (``STAGE_ELEMENTS``) and freed as soon as their group is reduced.
- **Large tensors** are reduced on their own: on the CPU ``aminmax``, ``sum``
  and a BLAS dot product (``torch.var_mean`` is avoided: on the CPU it is ten
  times slower than those three together); on an accelerator ``aminmax`` and
  a one-pass ``var_mean``.
- **No host synchronisation per tensor on an accelerator.** Results stay on
  the device; :meth:`StatsBuffer.materialize` stacks them and copies them to
  the host once per device. NaN and infinity counts are computed there
  always; on the CPU, where reading back is free, only when a sum came out
  non-finite.
- The standard deviation is the population one; on the CPU it is recomputed
  from centred values in the rare case where Σx²/n − mean² would cancel
  (tensors of near-equal values); on an accelerator it is always centred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..records import EXACT_VALUES_MAX, TensorStats

__all__ = ["STAGE_ELEMENTS", "StatsBuffer", "stats_of"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
#: Tensors up to this many elements are staged and reduced in groups, per device type.
STAGE_MAX = {"cpu": 1 << 16}
STAGE_MAX_DEFAULT = 1 << 20
#: Staged copies are reduced once they hold this many elements in all, or a group this many tensors.
STAGE_ELEMENTS = 1 << 23
GROUP_TENSORS = 512


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_NATIVE = frozenset({torch.float32, torch.float64})  # reduced as they are, no conversion
_DTYPE_NAMES = {d: _dtype_name(d) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64)}
_DEVICE_NAMES: dict[torch.device, str] = {}


def _device_name(device: torch.device) -> str:
    name = _DEVICE_NAMES.get(device)
    if name is None:
        name = _DEVICE_NAMES[device] = str(device)
    return name


@dataclass(frozen=True)
class _Meta:
    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    keep_values: bool


def _empty(m: _Meta) -> TensorStats:
    return TensorStats(m.shape, m.dtype, m.device, 0, None, None, None, None, None, 0, 0, () if m.keep_values else None)


def _python_stats(m: _Meta, values: list[float]) -> TensorStats:
    """Statistics of a short list, in double precision."""
    n = len(values)
    nan = sum(1 for v in values if math.isnan(v))
    inf = sum(1 for v in values if math.isinf(v))
    if nan:
        mn = mx = mean = std = norm = math.nan
    else:
        mn, mx = min(values), max(values)
        if inf:
            # var and std of a tensor holding an infinity are undefined, as torch.var_mean says.
            mean, std, norm = sum(values) / n, math.nan, math.inf
        else:
            mean = math.fsum(values) / n
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
            norm = math.sqrt(math.fsum(v * v for v in values))
    return TensorStats(m.shape, m.dtype, m.device, n, mn, mx, mean, std, norm, nan, inf, tuple(values) if m.keep_values else None)


def _from_sums(m: _Meta, mn: float, mx: float, total: float, squares: float, centred: float | None, nan: int, inf: int,
               values: tuple[float, ...] | None) -> TensorStats:
    """A TensorStats from min, max, Σx, Σx² (and Σ(x−mean)² when known) of ``m.numel`` elements."""
    n = m.numel
    mean = total / n
    if nan:
        mn = mx = mean = std = norm = math.nan
    elif inf:
        std, norm = math.nan, math.inf
    else:
        var = centred / n if centred is not None else squares / n - mean * mean
        std, norm = math.sqrt(max(var, 0.0)), math.sqrt(squares)
    return TensorStats(m.shape, m.dtype, m.device, n, mn, mx, mean, std, norm, nan, inf, values if m.keep_values else None)


def _needs_centring(total: float, squares: float, n: int) -> bool:
    mean = total / n
    return squares / n - mean * mean <= 1e-3 * mean * mean


class StatsBuffer:
    """Collects tensor statistics during capture; turns them into TensorStats at the end.

    >>> buf = StatsBuffer()
    >>> h = buf.add(torch.tensor([1.0, 2.0, 3.0]))
    >>> buf.materialize()[h].values
    (1.0, 2.0, 3.0)
    """

    def __init__(self, *, accelerator_path: bool = False) -> None:
        # accelerator_path: treat CPU tensors as an accelerator would (no read-back until the end);
        # lets the accelerator code be tested on machines without one.
        self._accelerator_path = accelerator_path
        self._done: list[TensorStats | None] = []
        self._meta: dict[int, _Meta] = {}
        self._groups: dict[tuple[torch.device, torch.dtype, int], list[tuple[int, torch.Tensor]]] = {}
        self._staged = 0
        # Accelerator results waiting for the one copy to the host: (handles, rows [k, 6], values [k, n] or None).
        self._device_rows: list[tuple[list[int], torch.Tensor, torch.Tensor | None]] = []

    def __len__(self) -> int:
        return len(self._done)

    def add(self, tensor: torch.Tensor) -> int:
        """Start the statistics of ``tensor``; return a handle for :meth:`materialize`."""
        # Hot path: it runs for every value and gradient of the step. x is detached, so nothing
        # here records autograd history (no no_grad context needed).
        x = tensor.detach()
        handle = len(self._done)
        dtype = x.dtype
        keep_values, fresh = True, False
        if dtype not in _NATIVE:
            keep_values = not x.is_complex()
            if not keep_values:
                x = x.abs()  # complex numbers have no order: describe their magnitudes
            if not x.is_floating_point():
                x = x.double()
            elif x.dtype in _LOW_PRECISION:
                x = x.float()
            fresh = x.data_ptr() != tensor.data_ptr()  # the conversion made a private copy
        n = x.numel()
        device = x.device
        meta = _Meta(tuple(x.shape), _DTYPE_NAMES.get(dtype) or _dtype_name(dtype), _device_name(device), n, keep_values)
        if n == 0:
            self._done.append(_empty(meta))
            return handle
        cpu = device.type == "cpu" and not self._accelerator_path
        if cpu and n <= EXACT_VALUES_MAX:
            self._done.append(_python_stats(meta, [float(v) for v in x.reshape(-1).tolist()]))
            return handle
        self._done.append(None)
        self._meta[handle] = meta
        if n <= STAGE_MAX.get("cpu" if cpu else "accelerator", STAGE_MAX_DEFAULT):
            # A private flat copy: the original may be changed in place before the group is reduced.
            if fresh:
                flat = x.reshape(-1)
            elif x.is_contiguous():
                flat = x.view(-1).clone()
            else:
                flat = x.reshape(-1)  # a strided view: reshape copies it already
                if flat.data_ptr() == x.data_ptr():
                    flat = flat.clone()
            key = (device, flat.dtype, n)
            group = self._groups.setdefault(key, [])
            group.append((handle, flat))
            self._staged += n
            if len(group) >= GROUP_TENSORS:
                self._reduce_group(key)
            if self._staged >= STAGE_ELEMENTS:
                self._reduce_all()
        elif cpu:
            self._done[handle] = self._cpu_large(meta, x)
        else:
            self._device_large(handle, meta, x)
        return handle

    # -- reductions ------------------------------------------------------------------

    def _reduce_all(self) -> None:
        for key in list(self._groups):
            self._reduce_group(key)

    def _reduce_group(self, key: tuple[torch.device, torch.dtype, int]) -> None:
        group = self._groups.pop(key)
        device, _, n = key
        self._staged -= n * len(group)
        handles = [h for h, _ in group]
        m = torch.stack([t for _, t in group])
        del group
        lo, hi = torch.aminmax(m, dim=1)
        sums = m.sum(dim=1)
        if device.type == "cpu" and not self._accelerator_path:
            squares = torch.linalg.vector_norm(m, dim=1).square_()
            for i, (h, a, b, s, q) in enumerate(zip(handles, lo.tolist(), hi.tolist(), sums.tolist(), squares.tolist())):
                self._done[h] = self._finish_cpu_row(self._meta.pop(h), m[i], a, b, s, q)
            return
        mean = sums / n
        var = (m - mean[:, None]).square_().mean(dim=1)
        counts = torch.stack((torch.isnan(m).sum(dim=1), torch.isinf(m).sum(dim=1)), dim=1).to(m.dtype)
        rows = torch.cat((torch.stack((lo, hi, mean, var), dim=1), counts), dim=1).double()
        values = m.double() if n <= EXACT_VALUES_MAX else None
        self._device_rows.append((handles, rows, values))

    def _finish_cpu_row(self, meta: _Meta, x: torch.Tensor, mn: float, mx: float, total: float, squares: float) -> TensorStats:
        n = meta.numel
        nan = inf = 0
        centred = None
        if not (math.isfinite(total) and math.isfinite(squares)):
            nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        elif mn == mx:
            centred = 0.0  # every element equal (a zero bias, the gradient of a mean): no spread
        elif _needs_centring(total, squares, n):
            centred = (x - total / n).square_().sum().item()
        return _from_sums(meta, mn, mx, total, squares, centred, nan, inf, None)

    def _cpu_large(self, meta: _Meta, x: torch.Tensor) -> TensorStats:
        lo, hi = torch.aminmax(x)
        if x.is_contiguous():
            flat = x.view(-1)
            total, squares = flat.sum().item(), torch.dot(flat, flat).item()  # BLAS: the fastest Σx²
        else:
            # A strided view (a transpose, an expand): reduce it where it lies rather than copy it.
            total, squares = x.sum().item(), torch.linalg.vector_norm(x).item() ** 2
        return self._finish_cpu_row(meta, x, lo.item(), hi.item(), total, squares)

    def _device_large(self, handle: int, meta: _Meta, x: torch.Tensor) -> None:
        mn, mx = torch.aminmax(x)
        var, mean = torch.var_mean(x, correction=0)  # one Welford pass on accelerators
        counts = torch.stack((torch.isnan(x).sum(), torch.isinf(x).sum())).to(mean.dtype)
        row = torch.cat((torch.stack((mn, mx, mean, var)), counts)).double()
        self._device_rows.append(([handle], row[None], None))

    # -- the end -----------------------------------------------------------------------

    def materialize(self) -> list[TensorStats]:
        """Finish every statistic: one copy to the host per device. Returns one TensorStats per handle."""
        self._reduce_all()
        by_device: dict[torch.device, list[tuple[list[int], torch.Tensor, torch.Tensor | None]]] = {}
        for entry in self._device_rows:
            by_device.setdefault(entry[1].device, []).append(entry)
        for entries in by_device.values():
            rows = torch.cat([r for _, r, _ in entries]).cpu().tolist()
            with_values = [v for _, _, v in entries if v is not None]
            values = torch.cat([v.reshape(-1) for v in with_values]).cpu().tolist() if with_values else []
            i = j = 0
            for handles, _, v in entries:
                width = v.shape[1] if v is not None else 0
                for h in handles:
                    meta = self._meta.pop(h)
                    mn, mx, mean, var, nan, inf = rows[i]
                    vals = tuple(values[j : j + width]) if v is not None else None
                    j += width
                    i += 1
                    n = meta.numel
                    total, squares = mean * n, n * (var + mean * mean)
                    self._done[h] = _from_sums(meta, mn, mx, total, squares, var * n, int(nan), int(inf), vals)
        self._device_rows.clear()
        result = [s for s in self._done if s is not None]
        if len(result) != len(self._done):
            raise RuntimeError("gradtrace internal error: a statistic was never finished")
        return result


def stats_of(tensor: torch.Tensor) -> TensorStats:
    """The TensorStats of one tensor, computed the same way capture computes them.

    >>> stats_of(torch.tensor([3.0, 4.0])).norm
    5.0
    """
    buf = StatsBuffer()
    buf.add(tensor)
    return buf.materialize()[0]
