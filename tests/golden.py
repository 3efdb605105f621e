"""Comparing renders with committed files across machines.

Torch's float results differ in their last bits from one CPU to another (other
BLAS kernels, other summation orders), and so do the digits printed from them.
A committed diagram is "current" when everything but those digits is the same:
structure, labels, words, colours, attributes. The numbers themselves are
checked against torch by the capture tests, not by comparing files.
"""

from __future__ import annotations

import re

# A sign is part of the number (a mean near zero flips it), spelt "-" or, in SVG, "&#45;".
_NUMBER = re.compile(r"(?:&#45;|[-+])?(?:\d+\.?\d*|\.\d+)(?:[eE](?:&#45;|[-+])?\d+)?")


def masked(text: str) -> str:
    """``text`` with every number, its sign included, replaced by ``#``.

    >>> masked('grad 1.34e-10 ± &#45;0.00926 x="786.5"')
    'grad # ± # x="#"'
    """
    return _NUMBER.sub("#", text)
