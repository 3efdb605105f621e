"""Reading a trace file: untrusted input, checked field by field before anything uses it.

Every way a document can be wrong (not JSON, nested too deep, a wrong type, a
missing field, a duplicate key, a number out of range, an edge to no node, an
output index the node does not have, a cycle) becomes one
:class:`~gradtrace.errors.GradtraceError` that says where, what was found and
what was expected. What loads renders: the graph is a DAG over known nodes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .errors import GradtraceError
from .records import OptimizerStep, TraceEdge, TraceFileError, TraceNode, _list, _obj, _str

if TYPE_CHECKING:
    from .steptrace import Trace

__all__ = ["read_trace"]


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
    for i, e in enumerate(edges):
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
    from .steptrace import JSON_FORMAT, JSON_VERSION

    d = _parse(text)
    if not isinstance(d, dict) or d.get("format") != JSON_FORMAT:
        raise GradtraceError(f"not a gradtrace trace: expected a JSON object with \"format\": \"{JSON_FORMAT}\"")
    if d.get("version") != JSON_VERSION or isinstance(d.get("version"), bool):
        raise GradtraceError(f"trace JSON version {d.get('version')!r} is not supported (this gradtrace reads version {JSON_VERSION})")
    try:
        for name in ("nodes", "edges", "loss"):
            if name not in d:
                raise TraceFileError(f"the field {name!r} is missing")
        nodes = tuple(TraceNode.from_dict(n, f"nodes[{i}]") for i, n in enumerate(_list(d["nodes"], "nodes")))
        edges = tuple(TraceEdge.from_dict(e, f"edges[{i}]") for i, e in enumerate(_list(d["edges"], "edges")))
        loss = _str(d["loss"], "loss")
        modules = {}
        for k, v in _obj(d.get("modules", {}), "modules").items():
            modules[k] = _str(v, f"modules[{k!r}] (the class of module {k!r})")
        opt = d.get("optimizer")
        optimizer = None if opt is None else OptimizerStep.from_dict(opt, "optimizer")
        notes = tuple(_str(x, f"notes[{i}]") for i, x in enumerate(_list(d.get("notes", []), "notes")))
        _check_graph(nodes, edges, loss)
    except TraceFileError as e:
        raise GradtraceError(f"malformed gradtrace trace JSON: {e}") from None
    return cls(nodes=nodes, edges=edges, loss=loss, modules=modules, optimizer=optimizer, notes=notes)


