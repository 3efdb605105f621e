"""Colours and shapes: what a diagram's marks mean, defined once for every renderer.

Nodes are coloured by the magnitude of the gradient that reached them
(root mean square, so a 10-element and a 10-million-element tensor compare),
on a log scale of fixed decades: the same colour means the same magnitude in
every diagram. The palette is viridis (perceptually uniform, colour-blind
safe); the alarm colour for NaN and infinities is a red that viridis never
produces, so no magnitude can be mistaken for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..records import TensorStats

__all__ = ["ALARM", "BANDS", "FINDING", "NO_GRAD", "ZERO_GRAD", "Band", "THEME_COLORS", "band_for", "text_color"]


@dataclass(frozen=True)
class Band:
    color: str
    low: float  # inclusive lower bound of the RMS magnitude; -inf for the first band
    label: str


_VIRIDIS = ("#440154", "#482878", "#3e4a89", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6dcd59", "#b4de2c", "#fde725")


def _band(i: int, color: str) -> Band:
    e = i - 7  # band i starts at 10**(i-7): the bands cover 1e-6 .. 1e2, open at both ends
    if i == 0:
        return Band(color, -math.inf, "< 1e-6")
    if i == len(_VIRIDIS) - 1:
        return Band(color, 10.0**e, f"≥ 1e{e}")
    return Band(color, 10.0**e, f"1e{e} – 1e{e + 1}")


#: Magnitude bands, one per decade.
BANDS: tuple[Band, ...] = tuple(_band(i, c) for i, c in enumerate(_VIRIDIS))
ALARM = "#e0112b"  # NaN or inf in a value or gradient
FINDING = "#f28e2b"  # a diagnose() warning: vanishing, exploding, dead, zero gradient, update size
NOTE = "#d9d9d9"  # a diagnose() note: a fact that is no fault (a structural zero gradient)
MASKED_INF = "#cbb8e0"  # an infinity made on purpose and absorbed at once (a -inf attention mask): quiet, not alarm-red
SEVERITY_COLORS = {"alarm": ALARM, "warning": FINDING, "note": NOTE}
ZERO_GRAD = "#b8b8b8"  # a gradient that is exactly zero everywhere
NO_GRAD = "#ffffff"  # no gradient reached the node (inputs, or nodes backprop skipped)

THEME_COLORS = {
    "light": {"bg": "#ffffff", "text": "#1a1a1a", "cluster": "#8a8a8a", "cluster_bg": "#f7f7f7", "edge": "#555555"},
    "dark": {"bg": "#1e1e1e", "text": "#e6e6e6", "cluster": "#9a9a9a", "cluster_bg": "#2a2a2a", "edge": "#b0b0b0"},
}


def band_for(grad: TensorStats | None) -> tuple[str, str]:
    """The header colour of a node with this gradient, and what it means."""
    if grad is None:
        return NO_GRAD, "no gradient"
    if not grad.finite:
        return ALARM, "NaN or inf"
    rms = grad.rms
    if rms is None:
        return NO_GRAD, "empty gradient"
    if rms == 0:
        return ZERO_GRAD, "zero gradient"
    band = BANDS[0]
    for b in BANDS:
        if rms >= b.low:
            band = b
    return band.color, band.label


def text_color(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (#rrggbb)."""
    r, g, b = (int(background[i : i + 2], 16) / 255 for i in (1, 3, 5))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000000" if luminance > 0.45 else "#ffffff"
