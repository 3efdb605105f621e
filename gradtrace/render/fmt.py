"""Numbers and statistics as a person reads them, shared by every renderer."""

from __future__ import annotations

import math
import struct

from ..records import TensorStats

__all__ = ["exact", "num", "shape", "shape_of", "short", "stats_lines", "summary"]

#: Values shown in a one-line summary before it is cut with an ellipsis.
INLINE_VALUES = 6


def num(x: float | None, digits: int = 4) -> str:
    """A compact number: ``num(0.000123456)`` -> ``'0.0001235'``; NaN and infinities spelled out."""
    if x is None:
        return "-"
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def exact(x: float, dtype: str = "float64") -> str:
    """The shortest decimal that reads back as the same value of ``dtype``.

    A float32 0.1 is stored as 0.100000001490116...; it prints as ``0.1``,
    and integral values print without a decimal point (``170000``).

    >>> exact(170000.0, "float32"), exact(-800.0), exact(0.10000000149011612, "float32")
    ('170000', '-800', '0.1')
    """
    if math.isnan(x) or math.isinf(x):
        return num(x)
    if x == int(x) and abs(x) < 1e16:
        return str(int(x))
    if dtype in ("float32", "float16", "bfloat16", "complex64"):
        target = struct.unpack("f", struct.pack("f", x))[0]
        for p in range(1, 10):
            s = f"{x:.{p}g}"
            if struct.unpack("f", struct.pack("f", float(s)))[0] == target:
                return s
    return repr(x)


def short(x: float, dtype: str = "float64") -> str:
    """The exact value when it is short (``170000``, ``-0.25``), else 5 significant digits."""
    s = exact(x, dtype)
    return s if len(s) <= 8 else num(x, 5)


def shape_of(dims: tuple[int, ...]) -> str:
    """``(64, 10)``; a 0-d tensor reads ``()``."""
    if len(dims) == 1:
        return f"({dims[0]},)"
    return "(" + ", ".join(str(n) for n in dims) + ")"


def shape(s: TensorStats) -> str:
    """The shape of the tensor ``s`` describes."""
    return shape_of(s.shape)


def _bad(s: TensorStats) -> str:
    parts = []
    if s.nan:
        parts.append(f"NaN×{s.nan}")
    if s.inf:
        parts.append(f"inf×{s.inf}")
    return " ".join(parts)


def summary(s: TensorStats | None) -> str:
    """One line: exact values for small tensors, else mean ± std [min, max]; NaN/inf counts first.

    >>> from gradtrace.records import TensorStats
    >>> summary(TensorStats((), "float32", "cpu", 1, 9.0, 9.0, 9.0, 0.0, 9.0, 0, 0, (9.0,)))
    '9'
    """
    if s is None:
        return "-"
    bad = _bad(s)
    if s.numel == 0:
        return "empty"
    if bad and s.nan == s.numel:
        return f"all NaN ({s.numel})"
    if s.values:  # (never empty from capture; a hand-made record may hold [])
        shown = [short(v, s.dtype) for v in s.values[:INLINE_VALUES]]
        more = "" if len(s.values) <= INLINE_VALUES else ", …"
        body = shown[0] if s.numel == 1 and not s.shape else "[" + ", ".join(shown) + more + "]"
    else:
        body = f"{num(s.mean, 3)} ± {num(s.std, 3)} [{num(s.min, 3)}, {num(s.max, 3)}]"
        if bad:
            # With NaN/inf present the statistics describe the finite elements (the counts stand apart).
            return f"{bad} · no finite element" if s.mean is None else f"{bad} · finite: {body}"
    return f"{bad} {body}" if bad else body


def stats_lines(s: TensorStats | None) -> list[str]:
    """Every statistic, one per line, for tooltips and panels."""
    if s is None:
        return ["not recorded"]
    over = "" if s.finite else "finite: "  # with NaN/inf present the statistics describe the finite elements
    lines = [
        f"shape {shape(s)} {s.dtype} on {s.device}, {s.numel} elements",
        f"NaN {s.nan}  inf {s.inf}",
        f"{over}min {num(s.min, 6)}  max {num(s.max, 6)}",
        f"{over}mean {num(s.mean, 6)}  std {num(s.std, 6)}  norm {num(s.norm, 6)}",
    ]
    if s.values is not None and s.values:
        lines.append("values " + ", ".join(exact(v, s.dtype) for v in s.values))
    return lines
