"""The comparison of two traces: every matched node's change, and what exists on one side only."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GradtraceError
from .match import Matching, match
from .metrics import NodeChange, compare_nodes

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["DIFF_FORMAT", "NothingMatched", "TraceDiff", "diff_traces"]

DIFF_FORMAT = "gradtrace-diff"
DIFF_VERSION = 1


class NothingMatched(GradtraceError):
    """The two traces share no parameter, leaf or module: they are not two runs of one model."""


@dataclass(frozen=True, eq=False)
class TraceDiff:
    """Trace ``b`` compared with trace ``a``: made by :meth:`gradtrace.Trace.diff`.

    ``changes`` holds one :class:`~gradtrace.diff.NodeChange` per matched node, in B's forward
    order; :meth:`largest` sorts them by how much they changed. ``only_a`` and ``only_b`` are the
    keys of nodes found in one trace only; ``modules_only_a`` and ``modules_only_b`` the module
    paths. ``names`` is what the trace files are called in the output (``("A", "B")`` by default).

    >>> d = a.diff(b)                                         # doctest: +SKIP
    >>> [(c.label, c.grad_log2) for c in d.largest(3)]        # doctest: +SKIP
    [('addmm', 1.58), ...]
    """

    a: Trace
    b: Trace
    changes: tuple[NodeChange, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    module_pairs: tuple[tuple[str, str], ...]
    modules_only_a: tuple[str, ...]
    modules_only_b: tuple[str, ...]
    names: tuple[str, str] = field(default=("A", "B"))

    def largest(self, n: int | None = None) -> list[NodeChange]:
        """The matched nodes, largest change first: NaN or inf in one trace only, then by the
        largest ``|log2|`` ratio (gradient norm, value RMS, update ratio); ``n`` of them, or all."""
        order = {c.b: i for i, c in enumerate(self.changes)}
        ranked = sorted(self.changes, key=lambda c: (-c.size, order[c.b]))
        return ranked if n is None else ranked[:n]

    @property
    def params(self) -> list[NodeChange]:
        """The matched parameters, in B's forward order (gradient norm and update ratio change)."""
        return [c for c in self.changes if c.kind == "param"]

    @property
    def reshaped(self) -> list[NodeChange]:
        """Matched nodes whose output changed shape or dtype (a cast to bfloat16, a wider layer)."""
        return [c for c in self.changes if c.reshaped]

    @property
    def grad_in_one_only(self) -> list[NodeChange]:
        """Matched nodes that backprop reached in one trace only (see ``NodeChange.grad_only_in``)."""
        return [c for c in self.changes if c.grad_only_in]

    @property
    def same_structure(self) -> bool:
        """Every node and module is matched, and no output changed shape or dtype."""
        return not (self.only_a or self.only_b or self.modules_only_a or self.modules_only_b or self.reshaped)

    def beyond(self, factor: float) -> list[NodeChange]:
        """Matched nodes whose gradient norm changed by more than ``factor`` either way
        (``B/A > factor`` or ``A/B > factor``), got NaN or inf in one trace only, or a gradient in
        one trace only; largest first."""
        if not factor >= 1:
            raise GradtraceError(f"a change factor must be a number of at least 1 (2 means twice as large or half), got {factor!r}")
        limit = math.log2(factor)
        return [c for c in self.largest()
                if c.nonfinite or c.grad_only_in or (c.grad_log2 is not None and abs(c.grad_log2) > limit)]

    # -- output ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def side(t: Trace, keys: tuple[str, ...]) -> list[dict[str, Any]]:
            return [{"key": k, "kind": t.node(k).kind, "label": t.node(k).label, "scope": t.node(k).scope or t.node(k).module}
                    for k in keys]

        return {
            "format": DIFF_FORMAT, "version": DIFF_VERSION,
            "names": list(self.names), "nodes": [len(self.a.nodes), len(self.b.nodes)],
            "matched": [c.to_dict() for c in self.changes],
            "largest": [c.b for c in self.largest() if c.size > 0],
            "only_a": side(self.a, self.only_a), "only_b": side(self.b, self.only_b),
            "module_pairs": [list(p) for p in self.module_pairs],
            "modules_only_a": list(self.modules_only_a), "modules_only_b": list(self.modules_only_b),
        }

    def to_json(self, indent: int | None = None) -> str:
        """The comparison as JSON (NaN and infinities written as strings, as in a trace file)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_text(self, top: int = 20) -> str:
        """A table for the terminal: the ``top`` largest changes, the parameters, the structural differences."""
        from ..render.diff_text import to_text

        return to_text(self, top)

    def render(self, path: str | Path, format: str | None = None, *, by: str = "grad", timeout: float | None = 120.0) -> Path:
        """Write the comparison to ``path``: html (B's graph coloured by the change, a sortable
        table), svg, png, pdf (Graphviz), dot, json or text; the format from ``format`` or the
        suffix. ``by``: colour by the change of the ``"grad"`` norm or the ``"value"`` RMS.

        >>> a.diff(b).render("diff.html")                     # doctest: +SKIP
        PosixPath('diff.html')
        """
        from ..render.diff_output import write_diff

        return write_diff(self, Path(path), format, by=by, timeout=timeout)

    def __repr__(self) -> str:
        return (f"<TraceDiff {len(self.changes)} matched, {len(self.only_a)} only in {self.names[0]}, "
                f"{len(self.only_b)} only in {self.names[1]}>")


def _related(a: Trace, b: Trace, m: Matching) -> bool:
    """Something more specific than a top-level op or an input matched: a parameter, another
    leaf, or an op inside a module."""
    for ka, kb in m.pairs:
        n = b.node(kb)
        if n.kind in ("param", "leaf") or (n.kind == "op" and (n.scope or n.module)):
            return True
    return False


def diff_traces(a: Trace, b: Trace, names: tuple[str, str] = ("A", "B")) -> TraceDiff:
    """Compare trace ``b`` with trace ``a`` (see :meth:`gradtrace.Trace.diff`)."""
    from ..render.inert import inert_text
    from ..steptrace import Trace

    for name, t in zip(("the first", "the second"), (a, b)):
        if not isinstance(t, Trace):
            raise GradtraceError(f"{name} trace to compare must be a gradtrace.Trace (from gradtrace.trace(), capture() "
                                 f"or Trace.from_json()), got {type(t).__name__}")
    names = (inert_text(str(names[0])), inert_text(str(names[1])))  # file names reach terminals and pages
    m = match(a, b)
    if not _related(a, b, m):
        def some(t: Trace, kinds: tuple[str, ...]) -> str:
            labels = [inert_text(n.label) for n in t.nodes if n.kind in kinds][:4]
            return ", ".join(labels) if labels else "none"

        raise NothingMatched(
            f"nothing matched: {names[0]} and {names[1]} share no parameter, leaf or module "
            f"({names[0]} has {some(a, ('param', 'leaf'))}; {names[1]} has {some(b, ('param', 'leaf'))}). "
            "Compare two traces of the same model: two steps, two dtypes, two ranks, or a model before and after a code change")
    changes = tuple(compare_nodes(a.node(ka), b.node(kb)) for ka, kb in m.pairs)
    return TraceDiff(a=a, b=b, changes=changes, only_a=m.only_a, only_b=m.only_b, module_pairs=m.module_pairs,
                     modules_only_a=m.modules_only_a, modules_only_b=m.modules_only_b, names=names)
