"""Statistics of many tensors on an accelerator in a handful of kernel launches.

On a GPU the price of a statistic is not the arithmetic but the launches: a
few microseconds of host time each, and a traced step records a thousand
tensors or more. So held tensors are reduced together, whatever their shapes:

- **Packed rows.** The tensors of one device and dtype are copied, end to end,
  into one buffer (one ``cat``: CUDA copies many inputs per launch) and read as
  a matrix of rows of a fixed width. A tensor takes whole rows; its last row is
  padded. Widths come in a few classes (:data:`ROW_WIDTHS`) so that a bias of
  768 elements does not pad to 65,536.
- **One reduction per statistic per matrix**, along the rows: ``aminmax``, a
  one-pass ``var_mean`` (Welford: the spread is centred, never Σx²/n − mean²),
  and the NaN and infinity counts. Padding must not change a row's statistics:
  the pads are zeros while counting and summing, a value of their own row while
  taking the min and max, and the row's mean while taking the variance.
- **The host combines the rows** of each tensor (Chan's formula, in double
  precision) after the one device→host copy per device at the end of the
  trace: no synchronisation before then, and no per-tensor kernel.

Tensors larger than a buffer's bound are reduced alone (:meth:`PackedRows.reduce_one`),
in the same row format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..records import EXACT_VALUES_MAX, TensorStats
from .finish import Meta, from_sums, python_stats

__all__ = ["ROW_WIDTHS", "PackedRows", "padded_size", "row_width"]

#: Row widths: a tensor of n elements takes rows of the smallest width that holds it, or of the
#: largest width. The smallest is EXACT_VALUES_MAX, so the rows of small tensors are their exact values.
ROW_WIDTHS = (EXACT_VALUES_MAX, 256, 4096, 1 << 16)
_WIDE = (torch.float32, torch.float64)


def row_width(n: int) -> int:
    """The width of the rows a tensor of ``n`` elements is packed into."""
    for w in ROW_WIDTHS:
        if n <= w:
            return w
    return ROW_WIDTHS[-1]


def padded_size(n: int) -> int:
    """How many elements a tensor of ``n`` elements takes in a packed buffer (whole rows)."""
    w = row_width(n)
    return -(-n // w) * w


def _flat(x: torch.Tensor, copy: bool = True) -> torch.Tensor:
    """``x`` as one dimension, without a copy where its elements form a dense block read in another
    order (a transposed weight): min, max, sums and counts do not depend on the order. Other layouts
    (gaps, repeats) are copied, or with ``copy=False`` returned as they are."""
    if x.is_contiguous():
        return x.reshape(-1)
    n = x.numel()
    dims = sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz != 1)
    expect = 1
    for st, sz in dims:
        if st != expect:
            return x.reshape(-1) if copy else x  # (a copy is bounded by the buffer's size)
        expect *= sz
    return x.as_strided((n,), (1,), x.storage_offset())


@dataclass
class _Block:
    """Row statistics on the device, waiting for the copy to the host."""

    metas: list[tuple[int, Meta]]  # (handle, meta) per tensor, in row order
    rows_per: list[int]  # rows per tensor
    tails: list[int]  # valid elements in each tensor's last row (the others are full)
    width: int  # elements per row (pads included)
    rows: torch.Tensor  # [rows, 6] float64: min, max, mean, variance over the width, NaN count, inf count
    values: torch.Tensor | None = None  # [tensors, width] float64 exact values (small tensors)


@dataclass
class PackedRows:
    """Accelerator statistics: reduce many tensors per launch, finish them all after one copy per device.

    >>> p = PackedRows()
    >>> p.reduce([(0, Meta((3,), "float32", "cpu", 3, True), torch.tensor([1.0, 2.0, 3.0]))])
    >>> done = [None]
    >>> p.finish(done)
    >>> done[0].values
    (1.0, 2.0, 3.0)
    """

    _blocks: list[_Block] = field(default_factory=list)
    _zeros: dict[tuple[torch.device, torch.dtype], torch.Tensor] = field(default_factory=dict)
    _aranges: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._blocks)

    def reduce(self, entries: list[tuple[int, Meta, torch.Tensor]]) -> None:
        """Start the statistics of ``entries`` (handle, meta, tensor), all of one device and dtype."""
        by_width: dict[int, list[tuple[int, Meta, torch.Tensor]]] = {}
        for entry in entries:
            by_width.setdefault(row_width(entry[1].numel), []).append(entry)
        with torch.no_grad():
            for width in sorted(by_width):
                self._reduce_rows(width, by_width[width])

    def reduce_one(self, handle: int, meta: Meta, x: torch.Tensor) -> None:
        """A tensor too large to pack: reduced alone, read where it lies (one row as wide as the tensor)."""
        with torch.no_grad():
            x = _flat(x, copy=False)  # (an expand may be huge: reduced where it lies, through its strides)
            if x.dtype not in _WIDE:
                x = x.float()
            lo, hi = torch.aminmax(x)
            var, mean = torch.var_mean(x, correction=0)
            # Counts in double precision: a float32 sum stops counting exactly at 2**24.
            counts = torch.stack((torch.isnan(x).sum(), torch.isinf(x).sum())).double()
            row = torch.cat((torch.stack((lo, hi, mean, var)).double(), counts))[None]
        self._blocks.append(_Block([(handle, meta)], [1], [meta.numel], meta.numel, row))

    def _reduce_rows(self, width: int, group: list[tuple[int, Meta, torch.Tensor]]) -> None:
        first = group[0][2]
        device, dtype = first.device, first.dtype
        pieces: list[torch.Tensor] = []
        rows_per: list[int] = []
        tails: list[int] = []
        row_n: list[int] = []
        padded = False
        for _, meta, x in group:
            n = meta.numel
            r = -(-n // width)
            pieces.append(_flat(x))
            tail = n - (r - 1) * width
            if tail != width:
                pieces.append(self._zeros_for(device, dtype)[: width - tail])
                padded = True
            rows_per.append(r)
            tails.append(tail)
            row_n.extend([width] * (r - 1))
            row_n.append(tail)
        # One copy into a private buffer (CUDA's cat copies many inputs per launch); a lone tensor
        # that fills its rows is read where it lies.
        m = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        m = m.view(len(row_n), width)
        if m.dtype not in _WIDE:
            m = m.float()  # bfloat16 and float16 are reduced in float32
        values = m.double() if width <= EXACT_VALUES_MAX else None
        # Pads are zeros here: neutral for the counts and the sums.
        nan = torch.isnan(m).sum(dim=1, dtype=m.dtype)
        inf = torch.isinf(m).sum(dim=1, dtype=m.dtype)
        if not padded:
            lo, hi = torch.aminmax(m, dim=1)
            var, mean = torch.var_mean(m, dim=1, correction=0)
        else:
            valid = torch.tensor(row_n, dtype=m.dtype)
            if device.type == "cuda":
                valid = valid.pin_memory().to(device, non_blocking=True)  # no host synchronisation
            else:
                valid = valid.to(device)
            mask = self._arange_for(device, m.dtype, width) < valid[:, None]
            mean = m.sum(dim=1) / valid
            keep = m[:, :1].clone()
            torch.where(mask, m, keep, out=m)  # pads = their row's first value: neutral for min and max
            lo, hi = torch.aminmax(m, dim=1)
            torch.where(mask, m, mean[:, None], out=m)  # pads = their row's mean: add nothing to the spread
            var = torch.var(m, dim=1, correction=0)
        rows = torch.stack((lo, hi, mean, var, nan, inf), dim=1).double()
        self._blocks.append(_Block([(h, meta) for h, meta, _ in group], rows_per, tails, width, rows, values))

    def _zeros_for(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        z = self._zeros.get((device, dtype))
        if z is None:
            z = self._zeros[(device, dtype)] = torch.zeros(ROW_WIDTHS[-1], dtype=dtype, device=device)
        return z

    def _arange_for(self, device: torch.device, dtype: torch.dtype, width: int) -> torch.Tensor:
        a = self._aranges.get((device, dtype, width))
        if a is None:
            a = self._aranges[(device, dtype, width)] = torch.arange(width, dtype=dtype, device=device)
        return a

    # -- the end -----------------------------------------------------------------------

    def finish(self, done: list[TensorStats | None]) -> None:
        """Copy every device's rows to the host (one copy per device) and fill ``done[handle]``."""
        by_device: dict[torch.device, list[_Block]] = {}
        for b in self._blocks:
            by_device.setdefault(b.rows.device, []).append(b)
        self._blocks = []
        self._zeros.clear()
        self._aranges.clear()
        for blocks in by_device.values():
            parts = [b.rows.reshape(-1) for b in blocks] + [b.values.reshape(-1) for b in blocks if b.values is not None]
            host = torch.cat(parts).cpu() if len(parts) > 1 else parts[0].cpu()
            n_rows = sum(b.rows.shape[0] for b in blocks)
            rows, rest = host[: n_rows * 6].view(n_rows, 6), host[n_rows * 6 :]
            _combine(blocks, rows, rest, done)


def _combine(blocks: list[_Block], rows: torch.Tensor, values: torch.Tensor, done: list[TensorStats | None]) -> None:
    """Per tensor, from its rows: min and max of the rows, Chan's parallel formula for mean and spread."""
    # Per tensor (not per row: a step has tens of thousands of rows), then spread to the rows.
    rows_per: list[int] = []
    tails: list[int] = []
    widths: list[int] = []
    for b in blocks:
        rows_per.extend(b.rows_per)
        tails.extend(b.tails)
        widths.extend([b.width] * len(b.rows_per))
    count = len(rows_per)
    per_tensor = torch.tensor(rows_per)
    seg = torch.repeat_interleave(torch.arange(count), per_tensor)
    width = torch.tensor(widths, dtype=torch.float64)[seg]
    rn = width.clone()
    rn[per_tensor.cumsum(0) - 1] = torch.tensor(tails, dtype=torch.float64)
    lo_r, hi_r, mean_r, var_r, nan_r, inf_r = rows.unbind(1)
    z = torch.zeros(count, dtype=torch.float64)
    n = z.clone().index_add_(0, seg, rn)
    lo = torch.full((count,), math.inf, dtype=torch.float64).scatter_reduce_(0, seg, lo_r, "amin", include_self=False)
    hi = torch.full((count,), -math.inf, dtype=torch.float64).scatter_reduce_(0, seg, hi_r, "amax", include_self=False)
    mean = z.clone().index_add_(0, seg, rn * mean_r) / n
    # A padded row's variance is over its width (pads at the row's mean add nothing): times the width,
    # it is the row's Σ(x − mean_r)².
    m2 = z.clone().index_add_(0, seg, var_r * width + rn * (mean_r - mean[seg]).square())
    nan = z.clone().index_add_(0, seg, nan_r)
    inf = z.clone().index_add_(0, seg, inf_r)
    table = torch.stack((lo, hi, mean, m2, nan, inf), dim=1).tolist()
    i = 0
    value_rows = values.view(-1, EXACT_VALUES_MAX).tolist() if values.numel() else []
    v = 0
    for b in blocks:
        for handle, meta in b.metas:
            mn, mx, mu, sq, nan_i, inf_i = table[i]
            i += 1
            if b.values is not None:
                done[handle] = python_stats(meta, value_rows[v][: meta.numel])
                v += 1
                continue
            nan_c, inf_c = int(nan_i), int(inf_i)
            if inf_c and not nan_c:
                # Welford's mean of a row holding an infinity is NaN; torch's mean is the infinity's sign.
                mu = math.nan if (mn == -math.inf and mx == math.inf) else (mx if mx == math.inf else mn)
            k = meta.numel
            done[handle] = from_sums(meta, mn, mx, mu * k, sq + k * mu * mu, sq, nan_c, inf_c, None)
