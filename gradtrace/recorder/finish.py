"""From a tensor's min, max, Σx and Σx² to its TensorStats: the arithmetic every reduction path shares.

Plain Python on numbers already read from the device; the reductions that
produce them are in :mod:`gradtrace.recorder.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..records import TensorStats

__all__ = ["Meta", "empty_stats", "finished", "from_sums", "needs_centring", "needs_scaling", "python_stats"]

#: Magnitudes past which Σx² of double-precision values over- or underflows: such values are scaled
#: by a power of two first (exact), so a mean or std of a few huge or subnormal values is still right.
_HUGE, _TINY = 1e150, 1e-150


def needs_scaling(largest: float, huge: float = _HUGE, tiny: float = _TINY) -> bool:
    """Whether squares of values of magnitude up to ``largest`` leave the range of the arithmetic
    (``huge`` and ``tiny`` bound it: the defaults are double precision's)."""
    return largest > huge or 0.0 < largest < tiny


def _power_of_two(largest: float) -> float:
    return math.ldexp(1.0, math.frexp(largest)[1] - 1)  # at most largest: never overflows


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
    k = len(finite)
    mn, mx = min(finite), max(finite)
    largest = max(-mn, mx)
    # Σx² as torch sums it in double precision: past ~1e154 it overflows, and torch's
    # norm is then infinite; a Python fsum would raise instead.
    squares = sum(v * v for v in finite)
    if needs_scaling(largest):
        # Mean and std of values whose squares (or sums) leave the double range: scaled by a
        # power of two, exactly, and scaled back (to inf only if the result itself is too large).
        s = _power_of_two(largest)
        scaled = [v / s for v in finite]
        mu = math.fsum(scaled) / k
        mean = mn if mn == mx else mu * s
        std = 0.0 if mn == mx else math.sqrt(math.fsum((v - mu) * (v - mu) for v in scaled) / k) * s
        if k == 1:
            norm = abs(finite[0])  # torch's norm of one element is its magnitude, never inf
        else:
            norm = math.inf if math.isinf(squares) else math.sqrt(math.fsum(v * v for v in scaled)) * s
    else:
        mean = math.fsum(finite) / k
        std = math.sqrt(math.fsum((v - mean) * (v - mean) for v in finite) / k)
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


def finished(m: Meta, mn: float, mx: float, mean: float, std: float, norm: float, nan: int = 0,
             inf: int = 0) -> TensorStats:
    """A TensorStats whose numbers are already computed (over the finite elements; on scaled values,
    say), without values."""
    return TensorStats._of(m.shape, m.dtype, m.device, m.numel, mn, mx, mean, std, norm, nan, inf, None)


def needs_centring(total: float, squares: float, n: int) -> bool:
    """Whether Σx²/n − mean² would lose the spread to cancellation (near-equal values): then the
    variance must come from centred values."""
    mean = total / n
    return squares / n - mean * mean <= 1e-3 * mean * mean
