"""A trace as Google's Model Explorer reads it: a graph JSON file and node-data overlays.

Model Explorer (``pip install ai-edge-model-explorer``, then ``model-explorer``) opens a
graph JSON file through its built-in JSON loader, and colours the nodes of a graph by a
node-data file. gradtrace writes one graph and four overlays beside it::

    step.graph.json          the graph: one node per autograd node, parameter and input,
                             nested in groups by module path (each call of a module reused
                             is its own group: ``cell (call 2)``)
    step.grad_norm.json      ‖grad‖ of each node's output
    step.value_rms.json      root mean square of each node's forward value
    step.nonfinite.json      NaN + inf elements in each node's values and gradients
    step.update_ratio.json   ‖Δw‖ / ‖w‖ of each parameter the optimizer stepped

The graph file is one graph collection (``{"label": ..., "graphs": [...]}``), the shape the
JSON loader accepts; a node-data file maps the graph's id to its results (``ModelNodeData``).
Both are exactly what the package's own ``graph_builder`` and ``node_data_builder`` classes
serialise to (tests build them through those classes). No torch, no Model Explorer needed here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import RenderError
from ..records import TensorStats, TraceNode
from . import fmt
from .flow import edge_grad_text, scope_title
from .inert import dot_id, inert_text, inert_trace
from .labels import reduced_titles
from .style import ALARM, BANDS, ZERO_GRAD, text_color

if TYPE_CHECKING:
    from ..steptrace import Trace

__all__ = ["GRAPH_ID", "GRAPH_SUFFIX", "METRICS", "check_graph_path", "encode_graph", "namespace", "node_data", "overlay_paths",
           "to_graph_json", "write_files"]

#: The id of the one graph gradtrace writes; node-data files are keyed by it.
GRAPH_ID = "gradtrace"
#: The graph file's name ends so; each overlay replaces it with ``.METRIC.json``.
GRAPH_SUFFIX = ".graph.json"

#: The overlays, in the order they are written, with what each shows.
METRICS: dict[str, str] = {
    "grad_norm": "gradient norm ‖grad‖ of the node's output",
    "value_rms": "root mean square of the node's forward value",
    "nonfinite": "NaN and inf elements in the node's values and gradients",
    "update_ratio": "optimizer update ‖Δw‖ / ‖w‖ of a parameter",
}

_TOP = 1.7976931348623157e308  # the largest float: the last threshold holds every finite value above 1e2


def to_graph_json(trace: Trace) -> dict[str, Any]:
    """``trace`` as Model Explorer's graph JSON: one collection holding one graph.

    Every node keeps its id (the trace key, spelled safely), its label, its module path as a
    namespace (``encoder/layer/3``: Model Explorer nests and collapses groups by it), its edges
    (``incomingEdges``), and in ``attrs`` and ``outputsMetadata`` what gradtrace recorded: kind,
    autograd class, source line, backprop step, value and gradient, shapes as ``tensor_shape``.
    Each input's metadata holds the gradient sent back along that edge.

    >>> doc = to_graph_json(t)                                  # doctest: +SKIP
    >>> doc["graphs"][0]["nodes"][0]["namespace"]               # doctest: +SKIP
    'fc1'
    """
    trace = inert_trace(trace)  # model strings are shown in a side panel: printable, capped, as everywhere
    ids = {n.key: dot_id(n.key) for n in trace.nodes}
    incoming: dict[str, list[Any]] = {}
    for e in trace.edges:
        incoming.setdefault(e.dst, []).append(e)
    nodes = []
    for key in trace.forward_order():
        n = trace.node(key)
        edges = incoming.get(key, [])
        nodes.append({
            "id": ids[key],
            "label": n.label,
            "namespace": namespace(_group(n)),
            "subgraphIds": [],
            "attrs": [{"key": k, "value": v} for k, v in _attrs(trace, n)],
            "incomingEdges": [{"sourceNodeId": ids[e.src], "sourceNodeOutputId": str(e.output), "targetNodeInputId": str(i)}
                              for i, e in enumerate(edges)],
            "outputsMetadata": [{"id": str(i), "attrs": _output_attrs(n, i)} for i in range(max(len(n.values), len(n.grads)))],
            "inputsMetadata": [{"id": str(i), "attrs": [{"key": "grad sent back", "value": edge_grad_text(e.grad, e.uses) or "-"}]}
                               for i, e in enumerate(edges)],
        })
    graph = {"id": GRAPH_ID, "nodes": nodes, "groupNodeAttributes": _group_attrs(trace)}
    return {"label": "gradtrace", "graphs": [graph], "graphSorting": "node_count_desc"}


def node_data(trace: Trace, metric: str) -> dict[str, Any]:
    """One overlay: ``metric`` (a key of :data:`METRICS`) for every node that has it, as Model
    Explorer's node-data JSON (graph id -> results, colours, thresholds).

    Magnitudes are coloured by decade with the same viridis bands as gradtrace's diagrams; a
    gradient that is exactly zero is grey, one holding NaN or inf is red.

    >>> node_data(t, "grad_norm")["gradtrace"]["results"]["op3"]   # doctest: +SKIP
    {'value': 0.0713, 'bgColor': '#26828e', 'textColor': '#ffffff'}
    """
    if metric not in METRICS:
        raise RenderError(f"unknown Model Explorer overlay {metric!r} (must be one of {list(METRICS)})")
    pick: Callable[[TraceNode], tuple[float | None, str | None]] = _PICKERS[metric]
    results: dict[str, dict[str, Any]] = {}
    for key in trace.forward_order():
        value, color = pick(trace.node(key))
        if value is None or not math.isfinite(value):
            continue  # JSON holds no NaN or inf; a node without the statistic has no result ("-")
        color = color or (_nonfinite_color(value) if metric == "nonfinite" else _band_color(value))
        results[dot_id(key)] = {"value": value, "bgColor": color, "textColor": text_color(color)}
    if metric == "nonfinite":
        thresholds = [_threshold(0, "#ffffff"), _threshold(_TOP, ALARM)]
    else:
        thresholds = [_threshold(10.0 ** (i - 6), b.color) for i, b in enumerate(BANDS[:-1])] + [_threshold(_TOP, BANDS[-1].color)]
    return {GRAPH_ID: {
        "results": results, "name": f"gradtrace: {METRICS[metric]}", "thresholds": thresholds, "gradient": [],
        "hideInAggregatedStatsTable": False, "hideInChildrenStatsTable": False, "showExpandedSummaryOnGroupNode": False,
        "showLabelCountColumnsInChildrenStatsTable": False,
    }}


def overlay_paths(graph_path: Path) -> dict[str, Path]:
    """Where each overlay of the graph file ``graph_path`` (``NAME.graph.json``) goes: ``NAME.METRIC.json`` beside it."""
    graph_path = Path(graph_path)
    check_graph_path(graph_path)
    stem = graph_path.name[: -len(GRAPH_SUFFIX)]
    return {m: graph_path.with_name(f"{stem}.{m}.json") for m in METRICS}


def check_graph_path(path: Path, option: str = "the path") -> None:
    """Refuse a name that does not say where the several files go (one graph, four overlays)."""
    name = Path(path).name
    if str(path) == "-":
        raise RenderError("the model-explorer format writes a graph and 4 overlay files, which cannot all go to standard "
                          f"output ('-'): give {option} a file name NAME{GRAPH_SUFFIX}")
    if not name.lower().endswith(GRAPH_SUFFIX) or len(name) == len(GRAPH_SUFFIX):
        beside = ", ".join(f"NAME.{m}.json" for m in METRICS)
        raise RenderError(f"the model-explorer format writes a graph and 4 overlay files: name the graph NAME{GRAPH_SUFFIX} "
                          f"(the overlays go beside it: {beside}), not {name!r}")


def write_files(trace: Trace, graph_path: Path) -> list[Path]:
    """Write the graph to ``graph_path`` (``NAME.graph.json``) and the four overlays beside it.

    Every file is encoded before the first is written, and each appears whole or not at all.
    Returns the paths written, the graph first.

    >>> write_files(t, Path("step.graph.json"))                     # doctest: +SKIP
    [PosixPath('step.graph.json'), PosixPath('step.grad_norm.json'), ...]
    """
    from .output import write_bytes

    graph_path = Path(graph_path)
    overlays = overlay_paths(graph_path)
    folder = graph_path.parent
    if not folder.is_dir():
        raise RenderError(f"cannot write {str(graph_path)!r}: the folder {str(folder)!r} does not exist")
    files = {graph_path: encode_graph(trace)}
    files.update({p: _dumps(node_data(trace, m)) for m, p in overlays.items()})
    for path in files:
        if path.is_dir():
            raise RenderError(f"cannot write {str(path)!r}: it is a directory")
    for path, data in files.items():
        write_bytes(path, data)
    return list(files)


def encode_graph(trace: Trace) -> bytes:
    """The graph file's bytes (ASCII JSON: every model string escaped by ``json``)."""
    return _dumps(to_graph_json(trace))


def namespace(scope: str) -> str:
    """A scope as a Model Explorer namespace: ``encoder.layer.3`` -> ``encoder/layer/3``,
    ``cell#2`` -> ``cell (call 2)``. A ``/`` inside a name is escaped as ``\\/`` (Model Explorer's
    own escape), and a backslash is shown as ``⧵`` so that no name can escape the next ``/``."""
    if not scope:
        return ""
    return "/".join(scope_title(p).replace("\\", "\u29f5").replace("/", "\\/") for p in scope.split("."))


# -- what each node says -----------------------------------------------------------------------

def _group(n: TraceNode) -> str:
    """An op sits in its call of a module; a parameter, leaf or input in its module path."""
    return (n.scope or n.module) if n.kind == "op" else n.module


def _attrs(trace: Trace, n: TraceNode) -> list[tuple[str, str]]:
    rows = [("kind", n.kind), ("key", inert_text(n.key))]  # (keys stay exact in the trace: inert_trace keeps them)
    if n.grad_fn:
        rows.append(("grad_fn", n.grad_fn))
    if n.module:
        rows.append(("module", n.module + (f" ({trace.modules[n.module]})" if n.module in trace.modules else "")))
    if n.scope and n.scope != n.module:
        rows.append(("call", scope_title(n.scope)))
    if n.source:
        rows.append(("source", n.source))
    if n.args:
        rows.append(("args", n.args))
    if n.forward_step is not None:
        rows.append(("forward step", str(n.forward_step)))
    if n.backward_step is not None:
        rows.append(("backprop step", f"#{n.backward_step}" + (" (the loss: backprop starts here)" if n.key == trace.loss else "")))
    titles = reduced_titles(n.reduced) if n.reduced is not None else None
    for name, s in (("value", n.value), (titles["local"] if titles else "grad", n.grad)):
        if s is not None:
            rows.append((name, fmt.summary(s)))
    if n.grad is not None and n.grad.norm is not None:
        rows.append(("grad norm", fmt.num(n.grad.norm, 6)))
    if titles and n.reduced is not None:  # a data-parallel run: the gradient after the collective, beside the local one
        rows.append((titles["reduced"] + (f", {titles['shard']}" if titles["shard"] else ""), fmt.summary(n.reduced.stats)))
        if n.reduced.stats is not None and n.reduced.stats.norm is not None:
            rows.append(("reduced grad norm" + (" (this shard)" if n.reduced.sharded else ""), fmt.num(n.reduced.stats.norm, 6)))
    bad = _nonfinite(n)
    if bad:
        rows.append(("NaN/inf elements", str(bad)))
    if n.update is not None:
        rows.append(("update Δw", fmt.summary(n.update)))
    if n.update_ratio is not None:
        rows.append(("update ratio ‖Δw‖/‖w‖", fmt.num(n.update_ratio, 4)))
    if n.sgd_update is not None:
        rows.append(("−lr·grad", fmt.summary(n.sgd_update)))
    return rows


def _output_attrs(n: TraceNode, i: int) -> list[dict[str, str]]:
    value = n.values[i] if i < len(n.values) else None
    grad = n.grads[i] if i < len(n.grads) else None
    s = value or grad
    rows = []
    if s is not None:
        # Model Explorer's own spelling (its PyTorch adapter's): shown as the edge's shape.
        rows.append({"key": "tensor_shape", "value": s.dtype + "[" + ", ".join(map(str, s.shape)) + "]"})
    rows.append({"key": "value", "value": fmt.summary(value)})
    rows.append({"key": "grad", "value": fmt.summary(grad)})
    return rows


def _group_attrs(trace: Trace) -> dict[str, dict[str, str]]:
    """The side panel of each module group (path, class, calls) and of the whole graph (key "")."""
    out: dict[str, dict[str, str]] = {}
    for n in trace.nodes:
        scope = _group(n)
        parts = scope.split(".") if scope else []
        for i in range(1, len(parts) + 1):
            path = ".".join(parts[:i])
            ns = namespace(path)
            if ns in out:
                continue
            module = ".".join(p.partition("#")[0] for p in parts[:i])
            attrs = {"module": module}
            if module in trace.modules:
                attrs["class"] = trace.modules[module]
            if path != module:
                attrs["call"] = scope_title(path)
            out[ns] = attrs
    top = {"loss": trace.node(trace.loss).label, "nodes": str(len(trace.nodes)),
           "made by": "gradtrace: one training step, values and gradients"}
    if trace.optimizer is not None:
        top["optimizer"] = trace.optimizer.name + (f" (lr {fmt.num(trace.optimizer.lr, 4)})" if trace.optimizer.lr is not None else "")
    for i, note in enumerate(trace.notes):
        top[f"note {i + 1}"] = note
    out[""] = top
    return dict(sorted(out.items()))


# -- overlays ----------------------------------------------------------------------------------

def _nonfinite(n: TraceNode) -> int:
    return sum(s.nan + s.inf for s in (*n.values, *n.grads) if s is not None)


def _grad_norm(n: TraceNode) -> tuple[float | None, str | None]:
    g = n.grad
    if g is None or g.norm is None:
        return None, None
    if not g.finite:
        return g.norm, ALARM  # the norm of the finite elements, marked: the gradient holds NaN or inf
    return g.norm, (ZERO_GRAD if g.norm == 0 else None)


def _value_rms(n: TraceNode) -> tuple[float | None, str | None]:
    v: TensorStats | None = n.value
    if v is None or v.rms is None:
        return None, None
    return v.rms, (ALARM if not v.finite else None)


def _nonfinite_count(n: TraceNode) -> tuple[float | None, str | None]:
    return _nonfinite(n), None


def _update_ratio(n: TraceNode) -> tuple[float | None, str | None]:
    return n.update_ratio, None


_PICKERS: dict[str, Callable[[TraceNode], tuple[float | None, str | None]]] = {
    "grad_norm": _grad_norm, "value_rms": _value_rms, "nonfinite": _nonfinite_count, "update_ratio": _update_ratio}


def _band_color(x: float) -> str:
    """The diagrams' colour for a magnitude: one viridis band per decade from 1e-6 to 1e2."""
    color = BANDS[0].color
    for b in BANDS:
        if x >= b.low:
            color = b.color
    return color


def _nonfinite_color(count: float) -> str:
    return ALARM if count > 0 else "#ffffff"


def _threshold(value: float, color: str) -> dict[str, Any]:
    return {"value": value, "bgColor": color, "textColor": text_color(color)}


def _dumps(doc: dict[str, Any]) -> bytes:
    # ASCII only (json escapes every other character), no NaN (Model Explorer's JSON.parse refuses it), no spaces.
    return (json.dumps(doc, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n").encode("ascii")
