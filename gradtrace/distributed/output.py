"""Writing a multi-rank trace: one file holding every rank, or rank 0's diagram and one per rank (no torch here).

- ``json``: the multi-rank document (:mod:`gradtrace.distributed.multitrace`).
- ``html``: one replay page with a rank selector.
- the diagram and table formats (svg, png, pdf, dot, text): rank 0's, at the
  path asked for; with ``every_rank``, also ``NAME.rankK.SUFFIX`` for each
  other rank K, beside it.

Every drawing and page shows, at each parameter, the rank's local gradient and
beside it the gradient after the collective: each rank's trace as
:meth:`MultiTrace.trace` gives it, the collective records attached to their nodes.
"""

from __future__ import annotations

from pathlib import Path

import math

from ..render import fmt as _fmt
from ..render.inert import printable
from ..render.options import RenderOptions
from ..render.output import encode, write_bytes, write_counted
from .multitrace import MultiTrace

__all__ = ["collective_table", "multi_html", "rank_path", "reduced_norm", "write_multi"]


def multi_html(multi: MultiTrace, options: RenderOptions) -> str:
    """The replay page of every rank, with a rank selector."""
    from ..render.html import to_html_multi

    return str(to_html_multi([(f"rank {r.rank}", multi.trace(r.rank)) for r in multi.ranks], options))


def rank_path(path: Path, rank: int) -> Path:
    """``step.svg`` -> ``step.rank3.svg``: where rank ``rank``'s own diagram goes.

    >>> rank_path(Path("out/step.svg"), 3)
    PosixPath('out/step.rank3.svg')
    """
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def write_multi(multi: MultiTrace, path: Path, fmt: str, options: RenderOptions, every_rank: bool = False) -> list[tuple[Path, int]]:
    """Write ``multi`` to ``path`` (``-``: standard output) as ``fmt``; returns each file written and the
    number of nodes its drawing shows (every node of every rank for json and html)."""
    if fmt in ("json", "html"):
        data = (multi.to_json() if fmt == "json" else multi_html(multi, options)).encode("utf-8")
        if str(path) != "-" and not Path(path).parent.is_dir():
            from ..errors import RenderError

            raise RenderError(f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist")
        write_bytes(path, data)
        return [(path, sum(len(r.trace.nodes) for r in multi.ranks))]
    first = multi.ranks[0]
    written = [write_counted(multi.trace(first.rank), path, fmt, options)]
    if every_rank:
        if str(path) == "-":
            from ..errors import RenderError

            raise RenderError("one file per rank needs a file name to number (step.svg -> step.rank1.svg), not '-'")
        for r in multi.ranks[1:]:
            data, drawn = encode(multi.trace(r.rank), fmt, options)
            target = rank_path(path, r.rank)
            write_bytes(target, data)
            written.append((target, drawn))
    return written


def reduced_norm(multi: MultiTrace, label: str) -> float | None:
    """The norm of parameter ``label``'s whole reduced gradient: the all-reduced tensor's, or for a
    reduce-scatter the root of the sum of its shards' squared norms (no tensor was gathered)."""
    shards: list[float] = []
    for r in multi.ranks:
        for c in r.collective:
            if r.trace.node(c.node).label != label or c.reduced is None:
                continue
            if not c.sharded:
                return c.reduced.norm
            if c.reduced.numel:
                if c.reduced.norm is None or not c.reduced.finite:
                    return None if c.reduced.norm is None else math.nan
                shards.append(c.reduced.norm)
    return math.sqrt(sum(x * x for x in shards)) if shards else None


def collective_table(multi: MultiTrace) -> str:
    """Each parameter's gradient norm on every rank before the collective, and after it.

    >>> print(collective_table(m))                    # doctest: +SKIP
    parameter   shape   ‖g‖ rank 0  ‖g‖ rank 1  reduced (all_reduce)
    fc1.weight  [3, 4]  0.249       0.3497      0.2533
    """
    labels: list[str] = []
    local: dict[tuple[str, int], str] = {}
    shapes: dict[str, str] = {}
    ops: dict[str, str] = {}
    for r in multi.ranks:
        for n in r.trace.nodes:
            if n.kind != "param":
                continue
            if n.label not in shapes:
                labels.append(n.label)
                shapes[n.label] = _fmt.shape_of(n.values[0].shape) if n.values and n.values[0] is not None else "?"
            g = n.grads[0] if n.grads else None
            local[(n.label, r.rank)] = "-" if g is None else (_fmt.num(g.norm) if g.finite else "NaN/inf")
        for c in r.collective:
            ops.setdefault(r.trace.node(c.node).label, c.op)
    if not labels:
        return ""
    op_names = sorted(set(ops.values())) or ["none"]
    header = ["parameter", "shape"] + [f"‖g‖ rank {r.rank}" for r in multi.ranks] + [f"reduced ({'/'.join(op_names)})"]
    rows = []
    for label in labels:
        norm = reduced_norm(multi, label) if label in ops else None
        reduced = "-" if norm is None else ("NaN/inf" if math.isnan(norm) else _fmt.num(norm))
        rows.append([printable(label), shapes[label]] + [local.get((label, r.rank), "-") for r in multi.ranks] + [reduced])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines) + "\n"
