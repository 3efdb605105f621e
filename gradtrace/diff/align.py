"""Sequence alignment: which items of two sequences correspond, robust to insertions and removals.

Two traces of related programs differ by a few ops or modules inserted, removed or renamed;
everything else appears in the same order. An alignment keeps that order and pairs only items
with equal tokens (the same op, the same kind of module), so one inserted op shifts nothing
after it, as a comparison by global index would.
"""

from __future__ import annotations

import difflib
from typing import Callable, Hashable, Sequence

__all__ = ["align"]

#: Above this many cells (len(a) × len(b), after the common ends are paired) the weighted
#: alignment, O(n·m) in Python, gives way to difflib's matcher (fast, unweighted).
DP_CELLS = 250_000


def align(a: Sequence[Hashable], b: Sequence[Hashable], bonus: Callable[[int, int], int] | None = None,
          full: int = 0) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, increasing in both, with ``a[i] == b[j]``, as many as can be.

    Among alignments of equal length, the one with the largest total ``bonus(i, j)`` wins (the
    same path, the same shape): with ``[L, L]`` against ``[L, L, L]`` it decides which ``L`` is
    the new one. Common leading and trailing items whose bonus is ``full`` (the same in every
    respect) are paired first, so identical sequences cost O(n).

    >>> align(["t", "addmm"], ["to_copy", "to_copy", "t", "addmm"])
    [(0, 2), (1, 3)]
    """
    bonus = bonus or (lambda i, j: 0)
    pairs: list[tuple[int, int]] = []
    lo = 0
    n, m = len(a), len(b)
    # Pair the common prefix and suffix while tokens and bonus say "the same item".
    while lo < n and lo < m and a[lo] == b[lo] and bonus(lo, lo) == full:
        pairs.append((lo, lo))
        lo += 1
    tail: list[tuple[int, int]] = []
    hi_a, hi_b = n, m
    while hi_a > lo and hi_b > lo and a[hi_a - 1] == b[hi_b - 1] and bonus(hi_a - 1, hi_b - 1) == full:
        hi_a, hi_b = hi_a - 1, hi_b - 1
        tail.append((hi_a, hi_b))
    mid_a, mid_b = hi_a - lo, hi_b - lo
    if mid_a and mid_b:
        if mid_a * mid_b <= DP_CELLS:
            middle = _weighted(a, b, lo, hi_a, lo, hi_b, bonus)
        else:
            sm = difflib.SequenceMatcher(None, list(a[lo:hi_a]), list(b[lo:hi_b]), autojunk=False)
            middle = [(lo + blk.a + k, lo + blk.b + k) for blk in sm.get_matching_blocks() for k in range(blk.size)]
        pairs += middle
    return pairs + tail[::-1]


def _weighted(a: Sequence[Hashable], b: Sequence[Hashable], a0: int, a1: int, b0: int, b1: int,
              bonus: Callable[[int, int], int]) -> list[tuple[int, int]]:
    """The heaviest common subsequence of a[a0:a1] and b[b0:b1]: each pair weighs 1000 + bonus, so
    the count of pairs comes first and the bonus breaks ties."""
    n, m = a1 - a0, b1 - b0
    # score[i][j]: best weight for a[a0+i:], b[b0+j:] (filled from the end, so the walk reads forward).
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = score[i], score[i + 1]
        ai = a[a0 + i]
        for j in range(m - 1, -1, -1):
            best = below[j] if below[j] >= row[j + 1] else row[j + 1]
            if ai == b[b0 + j]:
                w = below[j + 1] + 1000 + bonus(a0 + i, b0 + j)
                if w > best:
                    best = w
            row[j] = best
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if a[a0 + i] == b[b0 + j] and score[i][j] == score[i + 1][j + 1] + 1000 + bonus(a0 + i, b0 + j):
            out.append((a0 + i, b0 + j))
            i, j = i + 1, j + 1
        elif score[i + 1][j] >= score[i][j + 1]:
            i += 1
        else:
            j += 1
    return out
