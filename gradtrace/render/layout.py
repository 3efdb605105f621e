"""A layered layout computed in Python, for the HTML page (which must not need Graphviz).

Layers follow the data flow (longest path from the sources); sources such as
parameters sit one layer above their first consumer; order within a layer is
improved by a few barycentre sweeps. Deterministic: ties break by forward
order. Linear in nodes and edges per sweep, so it stays quick at thousands of
nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["NODE_H", "NODE_W", "Layout", "layered_layout"]

NODE_W, NODE_H = 230, 58
H_GAP, V_GAP = 24, 46
SWEEPS = 4


@dataclass(frozen=True)
class Layout:
    positions: dict[str, tuple[float, float]]  # top-left corner of each node
    width: float
    height: float


def layered_layout(trace: Trace) -> Layout:
    g = trace.graph
    order = trace.forward_order()
    rank = {k: i for i, k in enumerate(order)}
    layer: dict[str, int] = {}
    for k in order:
        preds = [layer[p] for p in g.predecessors(k)]
        layer[k] = max(preds) + 1 if preds else 0
    for k in reversed(order):  # sources hang just above their first consumer
        if not any(True for _ in g.predecessors(k)):
            succ = [layer[s] for s in g.successors(k)]
            layer[k] = max(min(succ) - 1, 0) if succ else 0
    rows: dict[int, list[str]] = {}
    for k in order:
        rows.setdefault(layer[k], []).append(k)
    depth = max(rows) + 1 if rows else 0
    pos = {k: float(i) for row in rows.values() for i, k in enumerate(row)}

    def sweep(levels: range, neighbours) -> None:
        for lv in levels:
            row = rows.get(lv, [])
            bary = {}
            for k in row:
                ns = [pos[n] for n in neighbours(k)]
                bary[k] = sum(ns) / len(ns) if ns else pos[k]
            row.sort(key=lambda k: (bary[k], rank[k]))
            for i, k in enumerate(row):
                pos[k] = float(i)

    for _ in range(SWEEPS):
        sweep(range(1, depth), g.predecessors)
        sweep(range(depth - 2, -1, -1), g.successors)
    widest = max((len(r) for r in rows.values()), default=1)
    width = widest * (NODE_W + H_GAP) + H_GAP
    positions = {}
    for lv, row in rows.items():
        offset = (width - len(row) * (NODE_W + H_GAP) + H_GAP) / 2
        for i, k in enumerate(row):
            positions[k] = (offset + i * (NODE_W + H_GAP), H_GAP + lv * (NODE_H + V_GAP))
    return Layout(positions, width, depth * (NODE_H + V_GAP) + H_GAP)
