"""The colours of a comparison: a diverging scale of log2(B/A), and the marks of structural change.

Purple is smaller in B, orange larger (PuOr, colour-blind safe, and never the alarm red that
means NaN or inf), in bands of doubling: the same colour means the same factor in every diagram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .style import ALARM

__all__ = ["DIFF_BANDS", "GONE", "NEW", "NO_CHANGE_DATA", "NONFINITE", "DiffBand", "band_of"]


@dataclass(frozen=True)
class DiffBand:
    color: str
    low: float  # inclusive lower bound of log2(B/A)
    label: str


# Band edges in log2: ×1.07 (within rounding of bfloat16), ×1.41, ×2, ×4, ×16.
_EDGES = (0.1, 0.5, 1.0, 2.0, 4.0)
_SMALLER = ("#2d004b", "#542788", "#8073ac", "#b2abd2", "#d8daeb")  # ÷16 or less ... ÷1.07–÷1.41
_LARGER = ("#fee0b6", "#fdb863", "#e08214", "#b35806", "#7f3b08")  # ×1.07–×1.41 ... ×16 or more
_SAME = "#f7f7f7"


def _x(e: float) -> str:
    return f"{2.0 ** e:.3g}"


def _bands() -> tuple[DiffBand, ...]:
    out = [DiffBand(_SMALLER[0], -math.inf, f"÷{_x(_EDGES[-1])} or more")]
    for i in range(len(_EDGES) - 1, 0, -1):
        out.append(DiffBand(_SMALLER[len(_EDGES) - i], -_EDGES[i], f"÷{_x(_EDGES[i - 1])} – ÷{_x(_EDGES[i])}"))
    out.append(DiffBand(_SAME, -_EDGES[0], f"about the same (within ×{_x(_EDGES[0])})"))
    for i in range(len(_EDGES) - 1):
        out.append(DiffBand(_LARGER[i], _EDGES[i], f"×{_x(_EDGES[i])} – ×{_x(_EDGES[i + 1])}"))
    out.append(DiffBand(_LARGER[-1], _EDGES[-1], f"×{_x(_EDGES[-1])} or more"))
    return tuple(out)


#: From most shrunk to most grown; a node takes the last band whose ``low`` its log2 ratio reaches.
DIFF_BANDS: tuple[DiffBand, ...] = _bands()
NONFINITE = ALARM  # NaN or inf in one trace only: the outline
NEW = "#1b7837"  # a node only in B: the outline
GONE = "#9a9a9a"  # a node only in A, drawn as a ghost
NO_CHANGE_DATA = "#ffffff"  # no number to compare (no gradient in one trace, an input)


def band_of(log2: float | None) -> DiffBand | None:
    """The band of a log2 ratio, ``None`` when there is none to colour by.

    >>> band_of(0.0).label, band_of(1.5).label, band_of(-5.0).label
    ('about the same (within ×1.07)', '×2 – ×4', '÷16 or more')
    """
    if log2 is None or math.isnan(log2):
        return None
    band = DIFF_BANDS[0]
    for b in DIFF_BANDS:
        if log2 >= b.low:
            band = b
    return band
