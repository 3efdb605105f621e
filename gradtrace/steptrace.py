"""The Trace: one recorded training step, as plain data, with ways to read and draw it.

Nothing here imports torch: ``Trace.from_json(text).render("step.svg")`` works
on a machine that only has gradtrace's pure-Python dependencies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GradtraceError
from .graph import backward_order, build_graph, forward_order
from .records import OptimizerStep, TraceEdge, TraceNode

if TYPE_CHECKING:
    import graphviz
    import networkx as nx

    from .diagnose import Finding
    from .diff import TraceDiff
    from .render.options import RenderOptions

__all__ = ["Trace"]

JSON_FORMAT = "gradtrace-trace"
JSON_VERSION = 1


@dataclass(frozen=True, eq=False)
class Trace:
    """One training step: every autograd node, its value, its gradient, and backprop's order.

    Made by :func:`gradtrace.trace` or :func:`gradtrace.capture`, or loaded
    with :meth:`from_json`.

    >>> t = Trace.from_json(trace_json)              # doctest: +SKIP
    >>> t.backward_order()[0] == t.loss               # doctest: +SKIP
    True
    """

    nodes: tuple[TraceNode, ...]
    edges: tuple[TraceEdge, ...]
    loss: str
    modules: dict[str, str] = field(default_factory=dict)  # module path -> class name
    optimizer: OptimizerStep | None = None
    notes: tuple[str, ...] = ()  # what a reader must know that the graph cannot show

    def __post_init__(self) -> None:
        keys = [n.key for n in self.nodes]
        if len(set(keys)) != len(keys):
            raise GradtraceError("a trace's node keys must be unique")
        known = set(keys)
        if self.loss not in known:
            raise GradtraceError(f"the loss node {self.loss!r} is not among the trace's nodes")
        for e in self.edges:
            if e.src not in known or e.dst not in known:
                raise GradtraceError(f"edge {e.src!r} -> {e.dst!r} names a node the trace does not have")

    # -- reading ---------------------------------------------------------------------

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The step as a ``networkx.DiGraph``, edges in the direction data flows."""
        return build_graph(self.nodes, self.edges)

    @cached_property
    def _by_key(self) -> dict[str, TraceNode]:
        return {n.key: n for n in self.nodes}

    def node(self, key: str) -> TraceNode:
        """The record of node ``key``."""
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"no node {key!r} in this trace") from None

    def find(self, label: str, *, module: str | None = None) -> list[str]:
        """Keys of the nodes with this label (and module path, if given), in forward order.

        >>> t.find("fc1.weight")                      # doctest: +SKIP
        ['param0']
        """
        hits = {n.key for n in self.nodes if n.label == label and (module is None or n.module == module)}
        return [k for k in self.forward_order() if k in hits]

    @cached_property
    def _orders(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(forward_order(self.graph)), tuple(backward_order(self.graph))

    def forward_order(self) -> list[str]:
        """Node keys in a topological order of the data flow, stable from run to run."""
        return list(self._orders[0])

    def backward_order(self) -> list[str]:
        """Node keys in the order the autograd engine visited them (the loss first)."""
        return list(self._orders[1])

    def diagnose(self) -> list[Finding]:
        """Where gradients vanish, explode or turn NaN: findings, most severe first.

        See :mod:`gradtrace.diagnose` for each kind and its threshold.

        >>> for f in t.diagnose():                    # doctest: +SKIP
        ...     print(f.kind, f.node, f.message)
        """
        from .diagnose import diagnose

        return diagnose(self)

    def diff(self, other: Trace, names: tuple[str, str] = ("A", "B")) -> TraceDiff:
        """Compare ``other`` (B) with this trace (A): nodes matched by module, op and position,
        each with its change of gradient norm and value RMS (log2 of B/A), NaN/inf in one only,
        and the nodes and modules found in one trace only. See :mod:`gradtrace.diff`.

        Raises :class:`~gradtrace.diff.NothingMatched` (a GradtraceError) when the traces share
        no parameter, leaf or module.

        >>> d = step1.diff(step50)                       # doctest: +SKIP
        >>> d.render("diff.html")                        # doctest: +SKIP
        """
        from .diff import diff_traces

        return diff_traces(self, other, names)

    # -- drawing ---------------------------------------------------------------------

    def to_dot(self, options: RenderOptions | None = None, **overrides: Any) -> graphviz.Digraph:
        """The diagram as a ``graphviz.Digraph``; builds the source, runs nothing.

        ``overrides`` are :class:`~gradtrace.RenderOptions` fields:
        ``t.to_dot(rankdir="LR", show_values=False)``.
        """
        from .render.dot import to_dot
        from .render.options import resolve_options

        return to_dot(self, resolve_options(options, overrides))

    def render(self, path: str | Path, format: str | None = None, options: RenderOptions | None = None, **overrides: Any) -> Path:
        """Write the diagram to ``path``; the format comes from ``format`` or the suffix.

        Formats: svg, png, pdf (these run Graphviz's ``dot``), dot, json, text, html
        (the interactive backprop replay, one self-contained file).
        The file appears whole or not at all. Returns the path written.

        >>> t.render("step.svg")                      # doctest: +SKIP
        PosixPath('step.svg')
        """
        from .render.options import resolve_options
        from .render.output import write

        return write(self, Path(path), format, resolve_options(options, overrides))

    def _repr_html_(self) -> str:
        """Jupyter: the interactive replay page, isolated in an iframe (needs no Graphviz)."""
        from .render.html import to_iframe

        return to_iframe(self)

    def _repr_svg_(self) -> str | None:
        """Jupyter's static SVG (Graphviz); None where ``dot`` is missing, so the HTML view stands alone."""
        from .errors import DotNotFoundError
        from .render.options import RenderOptions
        from .render.output import to_bytes

        try:
            return to_bytes(self, "svg", RenderOptions()).decode("utf-8")
        except DotNotFoundError:
            return None

    # -- saving ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "loss": self.loss,
            "modules": dict(sorted(self.modules.items())),
            "optimizer": None if self.optimizer is None else self.optimizer.to_dict(),
            "notes": list(self.notes),
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
        }

    def to_json(self, indent: int | None = None) -> str:
        """The whole trace as JSON (valid JSON: NaN and infinities are written as strings)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Trace:
        """Load a trace written by :meth:`to_json`.

        The text is untrusted input: anything that is not a well-formed trace (a wrong type, a
        missing field, an edge to no node, a cycle, ...) raises :class:`GradtraceError` naming the
        node or field, what was found and what was expected.
        """
        from .tracefile import read_trace

        return read_trace(cls, text)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.kind] = counts.get(n.kind, 0) + 1
        parts = ", ".join(f"{counts[k]} {k}" for k in ("op", "param", "leaf", "input") if k in counts)
        return f"<Trace {parts}; loss={self.loss!r}>"
