"""From a tensor's min, max, Σx and Σx² to its TensorStats: the arithmetic every reduction path shares.

Plain Python on numbers already read from the device; the reductions that
produce them are in :mod:`gradtrace.recorder.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..records import TensorStats

__all__ = ["Meta", "empty_stats", "finished", "from_sums", "needs_centring", "python_stats"]


@dataclass(frozen=True)
class Meta:
    """What a statistic says besides its numbers: the tensor's shape, dtype, device and size, and
    whether its exact values are kept (not for complex tensors, described by their magnitudes)."""

    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    keep_values: bool


def empty_stats(m: Meta) -> TensorStats:
    """The statistics of a tensor with no elements: nothing to summarise."""
    return TensorStats(m.shape, m.dtype, m.device, 0, None, None, None, None, None, 0, 0, () if m.keep_values else None)


def python_stats(m: Meta, values: list[float]) -> TensorStats:
    """Statistics of a short list, in double precision."""
    n = len(values)
    nan = sum(1 for v in values if math.isnan(v))
    inf = sum(1 for v in values if math.isinf(v))
    finite = [v for v in values if math.isfinite(v)] if nan or inf else values
    kept = tuple(values) if m.keep_values else None
    if not finite:
        return TensorStats(m.shape, m.dtype, m.device, n, None, None, None, None, None, nan, inf, kept)
    # (Over the finite elements alone when there are NaNs or infinities: see TensorStats.)
    mn, mx = min(finite), max(finite)
    mean = math.fsum(finite) / len(finite)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite))
    norm = math.sqrt(math.fsum(v * v for v in finite))
    return TensorStats(m.shape, m.dtype, m.device, n, mn, mx, mean, std, norm, nan, inf, kept)


def from_sums(m: Meta, mn: float, mx: float, total: float, squares: float, centred: float | None, nan: int, inf: int,
              values: tuple[float, ...] | None) -> TensorStats:
    """A TensorStats from min, max, Σx, Σx² (and Σ(x−mean)² when known) of ``m.numel`` elements.

    When ``nan`` or ``inf`` is not zero, the numbers are those of the ``numel − nan − inf``
    finite elements (as TensorStats documents), and are all None when there are none.
    """
    n = m.numel
    count = n - nan - inf
    if count <= 0:
        return TensorStats._of(m.shape, m.dtype, m.device, n, None, None, None, None, None, nan, inf,
                               values if m.keep_values else None)
    mean = total / count
    var = centred / count if centred is not None else squares / count - mean * mean
    std, norm = math.sqrt(max(var, 0.0)), math.sqrt(squares)
    return TensorStats._of(m.shape, m.dtype, m.device, n, mn, mx, mean, std, norm, nan, inf, values if m.keep_values else None)


def finished(m: Meta, mn: float, mx: float, mean: float, std: float, norm: float, nan: int, inf: int) -> TensorStats:
    """A TensorStats whose numbers are already computed (over the finite elements), without values."""
    return TensorStats._of(m.shape, m.dtype, m.device, m.numel, mn, mx, mean, std, norm, nan, inf, None)


def needs_centring(total: float, squares: float, n: int) -> bool:
    """Whether Σx²/n − mean² would lose the spread to cancellation (near-equal values): then the
    variance must come from centred values."""
    mean = total / n
    return squares / n - mean * mean <= 1e-3 * mean * mean
