"""Statistics of many tensors on an accelerator in a handful of kernel launches.

On a GPU the price of a statistic is not the arithmetic but the launches: a
few microseconds of host time each, and a traced step records a thousand
tensors or more. So held tensors are reduced together, whatever their shapes:

- **Packed rows.** The tensors of one device and dtype are copied, end to end,
  into one buffer (one ``cat``: CUDA copies many inputs per launch) and read as
  a matrix of rows of a fixed width. A tensor takes whole rows; its last row is
  padded. Widths come in a few classes (:data:`ROW_WIDTHS`) so that a bias of
  768 elements does not pad to 65,536.
- **One reduction per statistic per matrix**, along the rows, over the
  finite elements (TensorStats' rule): the NaN count, the finite elements'
  count, min and max, mean and centred variance. Pads are NaN, so they are
  left out with the non-finite elements in the same passes (the host takes
  the pads back out of the NaN count); the passes mask them to neutral values
  (the row's first finite element for the min and max, 0 for the sum, the
  row's mean for the spread), a fixed number of launches whatever the data.
  Each row is first divided by a power of two near its largest magnitude
  (exact), so squares never leave the dtype's range (huge or tiny values);
  the host scales back.
- **The host combines the rows** of each tensor (Chan's formula, in double
  precision) after the one device→host copy per device at the end of the
  trace: no synchronisation before then, and no per-tensor kernel.

Tensors larger than a buffer's bound are reduced alone (:meth:`PackedRows.reduce_one`),
in the same row format, slab by slab (:data:`SLAB_ELEMENTS`): the masked passes
make temporaries as large as what they read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..records import EXACT_VALUES_MAX, TensorStats
from .finish import Meta, finished, from_sums, python_stats

__all__ = ["ROW_WIDTHS", "PackedRows", "padded_size", "row_width"]

#: Row widths: a tensor of n elements takes rows of the smallest width that holds it, or of the
#: largest width. The smallest is EXACT_VALUES_MAX, so the rows of small tensors are their exact values.
ROW_WIDTHS = (EXACT_VALUES_MAX, 256, 4096, 1 << 16)
_WIDE = (torch.float32, torch.float64)
_COLUMNS = 7  # per row, see _row_stats
#: A tensor reduced alone is read in slabs of at most this many elements (the masked passes' temporaries).
SLAB_ELEMENTS = 1 << 24


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


def _slabs(x: torch.Tensor, bound: int) -> Iterator[torch.Tensor]:
    """``x`` as views whose first dimension are rows, each view at most ``bound`` elements (or one row
    of ``x``'s last dimension, if that alone is larger), together every element once."""
    if x.dim() <= 1:
        x = x.view(-1) if x.dim() == 0 else x
        n, w = x.shape[0], ROW_WIDTHS[-1]
        full = n // w
        step = max(1, bound // w)
        for i in range(0, full, step):
            yield x[i * w : min(full, i + step) * w].view(-1, w)
        if n % w:
            yield x[full * w :].unsqueeze(0)
        return
    per = x[0].numel()
    if per > bound:
        for i in range(x.shape[0]):
            yield from _slabs(x[i], bound)
        return
    step = max(1, bound // max(per, 1))
    for i in range(0, x.shape[0], step):
        yield x[i : i + step]


def _row_stats(m: torch.Tensor) -> torch.Tensor:
    """Per row of ``m`` (its first dimension; the others are reduced), over the row's finite elements:
    min, max, mean and variance (over the row's width) of the row divided by its scale, NaN count
    (pads included), finite count, scale. See the module's docstring.

    The masked passes make copies as large as ``m``: a packed buffer is bounded, but a tensor reduced
    alone costs its size in temporaries.
    """
    rows = m.shape[0]

    def matrix(t: torch.Tensor) -> torch.Tensor:  # (t is a fresh contiguous tensor: a view)
        return t if t.dim() == 2 else t.view(rows, -1)

    nan = matrix(torch.isnan(m)).sum(dim=1, dtype=m.dtype)
    x = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    fin = matrix(x == m)  # finite: what nan_to_num left as it was
    x = matrix(x)  # (contiguous from here on, whatever m's strides)
    count = fin.sum(dim=1, dtype=m.dtype)
    # Neutral for min and max: the row's first finite element (0 in a row that has none: ignored).
    first = x.gather(1, fin.view(torch.uint8).argmax(dim=1, keepdim=True))
    lo, hi = torch.aminmax(torch.where(fin, x, first), dim=1)
    # A power of two (dividing by it is exact) at most the largest magnitude, max(-lo, hi); 1/2 for zeros.
    scale = torch.exp2(torch.frexp(torch.maximum(-lo, hi))[1].to(m.dtype) - 1)
    y = x.div_(scale[:, None])  # (non-finite elements and pads are 0 here)
    mean = y.sum(dim=1) / count
    var = torch.var(torch.where(fin, y, mean[:, None], out=y), dim=1, correction=0)
    return torch.stack((lo, hi, mean, var, nan, count, scale), dim=1).double()


@dataclass
class _Block:
    """Row statistics on the device, waiting for the copy to the host."""

    metas: list[tuple[int, Meta]]  # (handle, meta) per tensor, in row order
    rows_per: list[int]  # rows per tensor
    tails: list[int]  # valid elements in each tensor's last row (the others are full)
    width: int  # elements per row (pads included)
    rows: torch.Tensor  # [rows, 7] float64, see _row_stats: min, max, scaled mean and variance, NaN count, finite count, scale
    values: torch.Tensor | None = None  # [tensors, width] float64 exact values (small tensors)
    row_widths: list[int] | None = None  # a tensor reduced alone: the elements of each of its rows (no pads)


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
    _pads: dict[tuple[torch.device, torch.dtype], torch.Tensor] = field(default_factory=dict)

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
        """A tensor too large to pack: reduced alone, read where it lies, slab by slab (each slab's
        masked temporaries are at most :data:`SLAB_ELEMENTS`, however large the tensor)."""
        with torch.no_grad():
            x = _flat(x, copy=False)  # (an expand may be huge: reduced where it lies, through its strides)
            parts: list[torch.Tensor] = []
            widths: list[int] = []
            for slab in _slabs(x, SLAB_ELEMENTS):
                if slab.dtype not in _WIDE:
                    slab = slab.float()
                parts.append(_row_stats(slab))
                widths.extend([slab[0].numel()] * slab.shape[0])
            rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        self._blocks.append(_Block([(handle, meta)], [len(widths)], [0], 0, rows, None, widths))

    def _reduce_rows(self, width: int, group: list[tuple[int, Meta, torch.Tensor]]) -> None:
        first = group[0][2]
        device, dtype = first.device, first.dtype
        pieces: list[torch.Tensor] = []
        rows_per: list[int] = []
        tails: list[int] = []
        n_rows = 0
        for _, meta, x in group:
            n = meta.numel
            r = -(-n // width)
            pieces.append(_flat(x))
            tail = n - (r - 1) * width
            if tail != width:
                pieces.append(self._pads_for(device, dtype)[: width - tail])
            rows_per.append(r)
            tails.append(tail)
            n_rows += r
        # One copy into a private buffer (CUDA's cat copies many inputs per launch); a lone tensor
        # that fills its rows is read where it lies.
        m = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        m = m.view(n_rows, width)
        if m.dtype not in _WIDE:
            m = m.float()  # bfloat16 and float16 are reduced in float32
        values = m.double() if width <= EXACT_VALUES_MAX else None
        rows = _row_stats(m)
        self._blocks.append(_Block([(h, meta) for h, meta, _ in group], rows_per, tails, width, rows, values))

    def _pads_for(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        z = self._pads.get((device, dtype))
        if z is None:
            z = self._pads[(device, dtype)] = torch.full((ROW_WIDTHS[-1],), math.nan, dtype=dtype, device=device)
        return z

    # -- the end -----------------------------------------------------------------------

    def finish(self, done: list[TensorStats | None]) -> None:
        """Copy every device's rows to the host (one copy per device) and fill ``done[handle]``."""
        by_device: dict[torch.device, list[_Block]] = {}
        for b in self._blocks:
            by_device.setdefault(b.rows.device, []).append(b)
        self._blocks = []
        self._pads.clear()
        for blocks in by_device.values():
            parts = [b.rows.reshape(-1) for b in blocks] + [b.values.reshape(-1) for b in blocks if b.values is not None]
            host = torch.cat(parts).cpu() if len(parts) > 1 else parts[0].cpu()
            n_rows = sum(b.rows.shape[0] for b in blocks)
            rows, rest = host[: n_rows * _COLUMNS].view(n_rows, _COLUMNS), host[n_rows * _COLUMNS :]
            _combine(blocks, rows, rest, done)


def _combine(blocks: list[_Block], rows: torch.Tensor, values: torch.Tensor, done: list[TensorStats | None]) -> None:
    """Per tensor, from its rows: min and max of the rows, Chan's parallel formula for mean and spread,
    over the finite elements, in units of the tensor's largest row scale (then scaled back)."""
    # Per tensor (not per row: a step has tens of thousands of rows), then spread to the rows.
    rows_per: list[int] = []
    widths: list[torch.Tensor] = []
    for b in blocks:
        rows_per.extend(b.rows_per)
        if b.row_widths is not None:
            widths.append(torch.tensor(b.row_widths, dtype=torch.float64))
        else:
            widths.append(torch.full((b.rows.shape[0],), float(b.width), dtype=torch.float64))
    count = len(rows_per)
    per_tensor = torch.tensor(rows_per)
    seg = torch.repeat_interleave(torch.arange(count), per_tensor)
    width = torch.cat(widths)
    lo_r, hi_r, mean_r, var_r, nan_r, fin_r, scale_r = rows.unbind(1)
    some = fin_r > 0  # rows with no finite element add nothing (their mean and variance are NaN)
    z = torch.zeros(count, dtype=torch.float64)
    scale = z.clone().scatter_reduce_(0, seg, scale_r, "amax", include_self=False)
    ratio = scale_r / scale[seg]  # a row's scale in units of its tensor's (powers of two: exact)
    mean_r = torch.where(some, mean_r * ratio, 0.0)
    # A row's variance is over its width (pads and non-finite elements at the row's mean add nothing):
    # times the width, it is the row's Σ(y − mean_r)².
    m2_r = torch.where(some, var_r * width * ratio * ratio, 0.0)
    n = z.clone().index_add_(0, seg, fin_r)
    lo = torch.full((count,), math.inf, dtype=torch.float64).scatter_reduce_(0, seg, lo_r, "amin", include_self=False)
    hi = torch.full((count,), -math.inf, dtype=torch.float64).scatter_reduce_(0, seg, hi_r, "amax", include_self=False)
    mean = z.clone().index_add_(0, seg, fin_r * mean_r) / n
    m2 = z.clone().index_add_(0, seg, m2_r + fin_r * (mean_r - mean[seg]).square())
    nan = z.clone().index_add_(0, seg, nan_r)
    table = torch.stack((lo, hi, mean, m2, nan, n, scale), dim=1).tolist()
    i = 0
    value_rows = values.view(-1, EXACT_VALUES_MAX).tolist() if values.numel() else []
    v = 0
    for b in blocks:
        for (handle, meta), rows_of in zip(b.metas, b.rows_per):
            mn, mx, mu, sq, nan_i, fin_i, s = table[i]
            i += 1
            if b.values is not None:
                done[handle] = python_stats(meta, value_rows[v][: meta.numel])
                v += 1
                continue
            # The pads (NaN) are counted among the NaNs of the rows.
            pads = 0 if b.row_widths is not None else rows_of * b.width - meta.numel
            nan_c, fin_c = int(nan_i) - pads, int(fin_i)
            inf_c = meta.numel - nan_c - fin_c
            if not fin_c:
                done[handle] = from_sums(meta, 0.0, 0.0, 0.0, 0.0, None, nan_c, inf_c, None)
                continue
            mean = mu * s
            if mn == mx:
                sq, mean, mu = 0.0, mn, mn / s  # every finite element equal: no spread, the mean is that element
            squares = sq + fin_c * mu * mu  # Σy², y = x / s
            norm = math.inf if math.isinf(squares * s * s) else math.sqrt(squares) * s
            if fin_c == 1:
                norm = abs(mn)  # torch's norm of one element is its magnitude
            done[handle] = finished(meta, mn, mx, mean, math.sqrt(max(sq / fin_c, 0.0)) * s, norm, nan_c, inf_c)
