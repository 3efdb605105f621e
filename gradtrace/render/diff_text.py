"""A comparison of two traces as tables for the terminal."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

from . import fmt
from .flow import scope_title
from .inert import inert_text

if TYPE_CHECKING:
    from ..diff import NodeChange, TraceDiff
    from ..steptrace import Trace

__all__ = ["HEADER", "change_row", "describe_node", "factor", "structural_lines", "summary_line", "to_text"]


def factor(log2: float | None) -> str:
    """A log2 ratio as a person reads it: ``×2``, ``÷4``, ``×1`` (the same), ``new``/``gone`` at ±inf.

    >>> factor(1.0), factor(-2.0), factor(0.0), factor(None), factor(math.inf)
    ('×2', '÷4', '×1', '-', '0 → >0')
    """
    if log2 is None:
        return "-"
    if math.isinf(log2):
        return "0 → >0" if log2 > 0 else ">0 → 0"
    if abs(log2) < 1e-9:
        return "×1"
    return ("×" if log2 > 0 else "÷") + fmt.num(2.0 ** min(abs(log2), 1023.0), 4)


def _log(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:+.3f}"


def describe_node(label: str, scope: str) -> str:
    """``addmm in fc1``, the node's label and module, printable."""
    return inert_text(label) + (f" in {inert_text(scope_title(scope))}" if scope else "")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def summary_line(d: TraceDiff) -> str:
    """One line: how many nodes matched, and how many are in one trace only."""
    na, nb = d.names
    return (f"{len(d.changes)} nodes matched ({na}: {len(d.a.nodes)} nodes, {nb}: {len(d.b.nodes)}); "
            f"{len(d.only_a)} only in {na}, {len(d.only_b)} only in {nb}; {len(d.reshaped)} changed shape or dtype")


def _names(t: Trace, keys: Sequence[str], limit: int = 12) -> str:
    shown = [describe_node(t.node(k).label, t.node(k).scope or t.node(k).module) for k in keys[:limit]]
    more = f", … {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def structural_lines(d: TraceDiff) -> list[str]:
    """The structural differences, one per line (none: an empty list)."""
    na, nb = d.names
    out = []
    if d.modules_only_a:
        out.append(f"modules only in {na}: " + ", ".join(_module(d.a, m) for m in d.modules_only_a))
    if d.modules_only_b:
        out.append(f"modules only in {nb}: " + ", ".join(_module(d.b, m) for m in d.modules_only_b))
    if d.only_a:
        out.append(f"nodes only in {na} ({len(d.only_a)}): " + _names(d.a, d.only_a))
    if d.only_b:
        out.append(f"nodes only in {nb} ({len(d.only_b)}): " + _names(d.b, d.only_b))
    for side, name in (("A", na), ("B", nb)):
        reached = [c for c in d.grad_in_one_only if c.grad_only_in == side]
        if reached:
            shown = ", ".join(describe_node(c.label, c.scope) for c in reached[:12])
            more = f", … {len(reached) - 12} more" if len(reached) > 12 else ""
            out.append(f"gradient reached only in {name} ({len(reached)}): {shown}{more}")
    moved = [(x, y) for x, y in d.module_pairs if x != y]
    if moved:
        out.append("modules matched under another path: " + ", ".join(f"{inert_text(x)} → {inert_text(y)}" for x, y in moved[:12])
                   + (f", … {len(moved) - 12} more" if len(moved) > 12 else ""))
    for c in d.reshaped[:20]:
        out.append(f"{describe_node(c.label, c.scope)}: {_shape(c.shape_a, c.dtype_a)} → {_shape(c.shape_b, c.dtype_b)}")
    if len(d.reshaped) > 20:
        out.append(f"… {len(d.reshaped) - 20} more nodes changed shape or dtype")
    return out


def _module(t: Trace, path: str) -> str:
    cls = t.modules.get(path)
    return inert_text(path) + (f" ({inert_text(cls)})" if cls else "")


def _shape(shape: tuple[int, ...] | None, dtype: str | None) -> str:
    if shape is None:
        return "no value"
    return f"{fmt.shape_of(shape)} {inert_text(dtype or '')}".strip()


def change_row(c: NodeChange) -> list[str]:
    """One row of the table of changes."""
    flags = [*c.nonfinite] + ([f"gradient in {c.grad_only_in} only"] if c.grad_only_in else [])
    return [_clip(describe_node(c.label, c.scope), 48), c.kind, fmt.num(c.grad_a), fmt.num(c.grad_b), factor(c.grad_log2),
            _log(c.grad_log2), fmt.num(c.rms_a), fmt.num(c.rms_b), factor(c.rms_log2), "; ".join(flags)]


HEADER = ["node", "kind", "‖grad‖ A", "‖grad‖ B", "grad B/A", "log2", "value rms A", "value rms B", "value B/A", "in one only"]


def to_text(d: TraceDiff, top: int = 20) -> str:
    """The comparison for a terminal: a summary, the ``top`` largest changes, every parameter's
    gradient and update ratio change, and the structural differences.

    >>> print(to_text(a.diff(b)))                              # doctest: +SKIP
    """
    na, nb = d.names
    lines = [f"gradtrace diff: A = {na}, B = {nb}", summary_line(d), ""]
    changed = [c for c in d.largest(top) if c.size > 0]
    if changed:
        lines.append(f"largest changes (B/A), {len(changed)} of {len(d.changes)} matched nodes:")
        lines += _table([HEADER, *[change_row(c) for c in changed]])
    else:
        lines.append("no matched node changed: every gradient norm and value RMS is the same in both traces")
    params = d.params
    if params:
        ranked = sorted(params, key=lambda c: -c.size)[:top]
        shown = f"the {len(ranked)} that changed most of {len(params)}" if len(ranked) < len(params) else "all"
        lines += ["", f"parameters ({shown}):"]
        # The update columns only where an optimizer step() was captured in either trace.
        updates = any(c.update_a is not None or c.update_b is not None for c in params)
        rows = [["parameter", "‖grad‖ A", "‖grad‖ B", "grad B/A"] + (["update ratio A", "update ratio B", "update B/A"] if updates else [])]
        for c in ranked:
            rows.append([_clip(inert_text(c.label), 48), fmt.num(c.grad_a), fmt.num(c.grad_b), factor(c.grad_log2)]
                        + ([fmt.num(c.update_a), fmt.num(c.update_b), factor(c.update_log2)] if updates else []))
        lines += _table(rows)
    structural = structural_lines(d)
    lines += ["", "structural differences:" if structural else "structural differences: none"]
    lines += ["  " + x for x in structural]
    return "\n".join(lines) + "\n"
