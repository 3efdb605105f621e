"""Tensor statistics, computed where the tensor lives and copied to the host once.

Capture calls :meth:`StatsBuffer.add` for every forward value and gradient it
records; that launches a few reductions on the tensor's own device and keeps
only their small result. :meth:`StatsBuffer.materialize` stacks all results
and copies them to the host in one transfer per device. No host
synchronisation happens per tensor on an accelerator, and no tensor is kept:
the buffer's memory is O(number of tensors), not O(their size).

Two passes read each tensor: ``aminmax`` and ``var_mean``. The norm follows
from them (‖x‖² = n·(var + mean²)). NaN and Inf counts take two more passes,
so on the CPU, where reading a scalar back is free, they run only when the
mean came out non-finite (a single NaN or Inf anywhere makes it so); on an
accelerator they always run, to avoid a synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..records import EXACT_VALUES_MAX, TensorStats

__all__ = ["StatsBuffer", "stats_of"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _python_stats(values: list[float]) -> tuple[float | None, ...]:
    """min, max, mean, std, norm, nan, inf of a short list, in double precision."""
    nan = sum(1 for v in values if math.isnan(v))
    inf = sum(1 for v in values if math.isinf(v))
    if not values:
        return None, None, None, None, None, 0, 0
    n = len(values)
    if nan:
        mn = mx = mean = std = norm = math.nan
    else:
        mn, mx = min(values), max(values)
        if inf:
            # var and std of a tensor holding an infinity are undefined, as torch.var_mean says.
            mean = sum(values) / n
            std, norm = math.nan, math.inf
        else:
            mean = math.fsum(values) / n
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
            norm = math.sqrt(math.fsum(v * v for v in values))
    return mn, mx, mean, std, norm, nan, inf


@dataclass
class _Pending:
    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    row: int | None = None  # index into the device's list of reduction rows
    values_row: int | None = None  # index into the device's list of exact-value tensors
    done: TensorStats | None = None  # already complete (small CPU tensors, empty tensors)


class StatsBuffer:
    """Collects tensor statistics during capture; turns them into TensorStats at the end.

    >>> buf = StatsBuffer()
    >>> h = buf.add(torch.tensor([1.0, 2.0, 3.0]))
    >>> buf.materialize()[h].values
    (1.0, 2.0, 3.0)
    """

    def __init__(self) -> None:
        self._pending: list[_Pending] = []
        self._rows: dict[torch.device, list[torch.Tensor]] = {}
        self._values: dict[torch.device, list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, tensor: torch.Tensor) -> int:
        """Start the statistics of ``tensor``; return a handle for :meth:`materialize`."""
        x = tensor.detach()
        p = _Pending(tuple(x.shape), _dtype_name(x.dtype), str(x.device), x.numel())
        self._pending.append(p)
        if x.is_complex():
            # Complex numbers have no order: describe their magnitudes.
            x = x.abs()
            keep_values = False
        else:
            keep_values = True
        if x.dtype in _LOW_PRECISION or not x.is_floating_point():
            x = x.double() if not x.is_floating_point() else x.float()
        if p.numel == 0:
            p.done = TensorStats(p.shape, p.dtype, p.device, 0, None, None, None, None, None, 0, 0, () if keep_values else None)
        elif x.device.type == "cpu" and p.numel <= EXACT_VALUES_MAX:
            vals = [float(v) for v in x.reshape(-1).tolist()]
            mn, mx, mean, std, norm, nan, inf = _python_stats(vals)
            p.done = TensorStats(
                p.shape, p.dtype, p.device, p.numel, mn, mx, mean, std, norm, int(nan or 0), int(inf or 0),  # type: ignore[arg-type]
                tuple(vals) if keep_values else None,
            )
        else:
            self._add_reductions(p, x, keep_values)
        return len(self._pending) - 1

    def _add_reductions(self, p: _Pending, x: torch.Tensor, keep_values: bool) -> None:
        with torch.no_grad():
            mn, mx = torch.aminmax(x)
            var, mean = torch.var_mean(x, correction=0)
            if x.device.type == "cpu":
                if math.isfinite(mean.item()):
                    counts = None
                else:
                    counts = (int(torch.isnan(x).sum()), int(torch.isinf(x).sum()))
                row = torch.stack((mn, mx, mean, var)).double()
                if counts is not None:
                    row = torch.cat((row, torch.tensor(counts, dtype=torch.float64)))
                else:
                    row = torch.cat((row, row.new_zeros(2)))
            else:
                counts_t = torch.stack((torch.isnan(x).sum(), torch.isinf(x).sum())).double()
                row = torch.cat((torch.stack((mn, mx, mean, var)).double(), counts_t))
            rows = self._rows.setdefault(x.device, [])
            p.row = len(rows)
            rows.append(row)
            if keep_values and p.numel <= EXACT_VALUES_MAX:
                vals = self._values.setdefault(x.device, [])
                p.values_row = len(vals)
                vals.append(x.reshape(-1).double())

    def materialize(self) -> list[TensorStats]:
        """Copy every device's results to the host at once; return one TensorStats per handle."""
        host_rows: dict[str, list[list[float]]] = {}
        host_values: dict[str, list[list[float]]] = {}
        with torch.no_grad():
            for device, rows in self._rows.items():
                host_rows[str(device)] = torch.stack(rows).cpu().tolist()
            for device, vals in self._values.items():
                flat = torch.cat(vals).cpu().tolist()
                out, i = [], 0
                for v in vals:
                    out.append(flat[i : i + v.numel()])
                    i += v.numel()
                host_values[str(device)] = out
        result = []
        for p in self._pending:
            if p.done is not None:
                result.append(p.done)
                continue
            assert p.row is not None  # every pending entry is either done or has a row
            mn, mx, mean, var, nan, inf = host_rows[p.device][p.row]
            std = math.sqrt(var) if var >= 0 else math.nan
            if math.isfinite(mean) and math.isfinite(var):
                norm = math.sqrt(p.numel * (var + mean * mean))
            elif nan:
                norm = math.nan
            else:
                norm = math.inf
            values = None if p.values_row is None else tuple(host_values[p.device][p.values_row])
            result.append(TensorStats(p.shape, p.dtype, p.device, p.numel, mn, mx, mean, std, norm, int(nan), int(inf), values))
        return result


def stats_of(tensor: torch.Tensor) -> TensorStats:
    """The TensorStats of one tensor, computed the same way capture computes them.

    >>> stats_of(torch.tensor([3.0, 4.0])).norm
    5.0
    """
    buf = StatsBuffer()
    buf.add(tensor)
    return buf.materialize()[0]
