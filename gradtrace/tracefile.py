"""Reading a trace file: untrusted input, checked field by field before anything uses it.

Every way a document can be wrong (not JSON, nested too deep, a wrong type, a
missing field, a duplicate key, a number out of range, an edge to no node, an
output index the node does not have, an edge given twice, a cycle, a
negative norm) becomes one
:class:`~gradtrace.errors.GradtraceError` that says where, what was found and
what was expected. What loads renders: the graph is a DAG over known nodes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .errors import GradtraceError
from .records import OptimizerStep, TraceEdge, TraceFileError, TraceNode, _list, _obj, _str

if TYPE_CHECKING:
    from .distributed.multitrace import MultiTrace
    from .steptrace import Trace

__all__ = ["read_multi_trace", "read_trace", "trace_from_dict"]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise TraceFileError(f"the key {k!r} appears twice in one JSON object (each field may be given once)")
        d[k] = v
    return d


def _parse(text: str | bytes) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except TraceFileError as e:
        raise GradtraceError(f"malformed gradtrace trace JSON: {e}") from None
    except RecursionError:
        raise GradtraceError("not a gradtrace trace: the JSON is nested too deeply to be one") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError, too many digits; TypeError: not text
        raise GradtraceError(f"not a gradtrace trace: the text is not JSON ({e})") from None


def _check_graph(nodes: tuple[TraceNode, ...], edges: tuple[TraceEdge, ...], loss: str) -> None:
    """Keys unique, edges between known nodes and existing outputs, no cycle (a step is a DAG)."""
    by_key: dict[str, TraceNode] = {}
    for i, n in enumerate(nodes):
        if n.key in by_key:
            raise TraceFileError(f"nodes[{i}]: the key {n.key!r} is used by two nodes (keys must be unique)")
        by_key[n.key] = n
    if loss not in by_key:
        raise TraceFileError(f"loss: {loss!r} is not the key of any node")
    succ: dict[str, list[str]] = {k: [] for k in by_key}
    indegree = dict.fromkeys(by_key, 0)
    seen_edges: set[tuple[str, str, int]] = set()
    for i, e in enumerate(edges):
        if (e.src, e.dst, e.output) in seen_edges:  # (an output used twice by one node is one edge with uses=2)
            raise TraceFileError(f"edges[{i}] ({e.src!r} -> {e.dst!r}, output {e.output}) is given twice "
                                 "(one edge per output and consumer; its 'uses' counts repeated use)")
        seen_edges.add((e.src, e.dst, e.output))
        for end in (e.src, e.dst):
            if end not in by_key:
                raise TraceFileError(f"edges[{i}] ({e.src!r} -> {e.dst!r}): no node has the key {end!r}")
        outputs = len(by_key[e.src].values)
        if outputs and e.output >= outputs:
            raise TraceFileError(f"edges[{i}] ({e.src!r} -> {e.dst!r}): output {e.output} is out of range "
                                 f"(node {e.src!r} has {outputs} output{'s' if outputs > 1 else ''}, 0 to {outputs - 1})")
        if e.dst not in succ[e.src]:
            succ[e.src].append(e.dst)
            indegree[e.dst] += 1
    # Kahn's algorithm: whatever is left with inputs after the walk lies on a cycle.
    ready = [k for k, d in indegree.items() if d == 0]
    seen = 0
    while ready:
        k = ready.pop()
        seen += 1
        for s in succ[k]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    if seen < len(by_key):
        stuck = sorted(k for k, d in indegree.items() if d > 0)
        raise TraceFileError(f"edges: the graph has a cycle through {stuck[:5]}{' …' if len(stuck) > 5 else ''} "
                             "(a training step's graph is acyclic: data flows from inputs to the loss)")


def read_trace(cls: type[Trace], text: str | bytes) -> Trace:
    """The trace in ``text`` (JSON from ``Trace.to_json``), checked; else a GradtraceError saying why."""
    from .distributed.multitrace import MULTI_FORMAT
    from .steptrace import JSON_FORMAT

    d = _parse(text)
    if isinstance(d, dict) and d.get("format") == MULTI_FORMAT:
        raise GradtraceError("this file holds the traces of every rank of a distributed run (\"format\": "
                             f"\"{MULTI_FORMAT}\"): load it with gradtrace.distributed.MultiTrace.from_json")
    if not isinstance(d, dict) or d.get("format") != JSON_FORMAT:
        raise GradtraceError(f"not a gradtrace trace: expected a JSON object with \"format\": \"{JSON_FORMAT}\"")
    _check_version(d, "trace JSON", "version")
    try:
        return trace_from_dict(cls, d, "")
    except TraceFileError as e:
        raise GradtraceError(f"malformed gradtrace trace JSON: {e}") from None


def _check_version(d: dict[str, Any], what: str, where: str) -> None:
    from .steptrace import JSON_VERSION

    if d.get("version") != JSON_VERSION or isinstance(d.get("version"), bool):
        raise GradtraceError(f"{what} {where} {d.get('version')!r} is not supported (this gradtrace reads version {JSON_VERSION})")


def trace_from_dict(cls: type[Trace], d: Any, where: str) -> Trace:
    """The trace in the parsed document ``d``; a TraceFileError names the field (prefixed by ``where``)."""
    from .steptrace import JSON_FORMAT, JSON_VERSION

    at = f"{where} " if where else ""
    d = _obj(d, where or "the document")
    if where:  # (a top-level document's format and version were checked by read_trace, with their own messages)
        if d.get("format") != JSON_FORMAT:
            raise TraceFileError(f"{where} format: expected {JSON_FORMAT!r}, found {d.get('format')!r}")
        if d.get("version") != JSON_VERSION or isinstance(d.get("version"), bool):
            raise TraceFileError(f"{where} version: expected {JSON_VERSION}, found {d.get('version')!r}")
    for name in ("nodes", "edges", "loss"):
        if name not in d:
            raise TraceFileError(f"{at}the field {name!r} is missing")
    nodes = tuple(TraceNode.from_dict(n, f"{at}nodes[{i}]") for i, n in enumerate(_list(d["nodes"], f"{at}nodes")))
    edges = tuple(TraceEdge.from_dict(e, f"{at}edges[{i}]") for i, e in enumerate(_list(d["edges"], f"{at}edges")))
    loss = _str(d["loss"], f"{at}loss")
    modules = {}
    for k, v in _obj(d.get("modules", {}), f"{at}modules").items():
        modules[k] = _str(v, f"{at}modules[{k!r}] (the class of module {k!r})")
    opt = d.get("optimizer")
    optimizer = None if opt is None else OptimizerStep.from_dict(opt, f"{at}optimizer")
    notes = tuple(_str(x, f"{at}notes[{i}]") for i, x in enumerate(_list(d.get("notes", []), f"{at}notes")))
    try:
        _check_graph(nodes, edges, loss)
    except TraceFileError as e:
        raise TraceFileError(f"{at}{e}") from None
    return cls(nodes=nodes, edges=edges, loss=loss, modules=modules, optimizer=optimizer, notes=notes)


def read_multi_trace(cls: type[MultiTrace], text: str | bytes) -> MultiTrace:
    """The multi-rank trace in ``text`` (JSON from ``MultiTrace.to_json``), checked as strictly as a single trace."""
    from .distributed.multitrace import MULTI_FORMAT, MULTI_VERSION

    d = _parse(text)
    if not isinstance(d, dict) or d.get("format") != MULTI_FORMAT:
        raise GradtraceError(f"not a gradtrace multi-rank trace: expected a JSON object with \"format\": \"{MULTI_FORMAT}\""
                             " (a single rank's trace loads with gradtrace.Trace.from_json)")
    if d.get("version") != MULTI_VERSION or isinstance(d.get("version"), bool):
        raise GradtraceError(f"multi-rank trace JSON version {d.get('version')!r} is not supported "
                             f"(this gradtrace reads version {MULTI_VERSION})")
    try:
        return cls.from_dict(d)
    except TraceFileError as e:
        raise GradtraceError(f"malformed gradtrace multi-rank trace JSON: {e}") from None


