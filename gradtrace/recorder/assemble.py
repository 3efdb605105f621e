"""Recorded state -> a Trace of plain records: node keys, labels, edges, statistics.

Runs once, after the step: it copies every statistic to the host (one
transfer per device), gives nodes their deterministic keys (ops by creation
order, parameters in the model's order, other leaves in walk order, inputs in
the order they were handed in), and wires inputs to the ops that read them.
"""

from __future__ import annotations

import functools
import math
import re
from typing import TYPE_CHECKING, Any

from ..errors import CaptureError
from ..records import TraceEdge, TraceNode
from ..steptrace import Trace

if TYPE_CHECKING:
    from .backward import NodeKey
    from .session import Session

__all__ = ["assemble", "op_label"]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=4096)
def op_label(grad_fn_name: str) -> str:
    """The name a person reads for an autograd node: ``AddmmBackward0`` -> ``addmm``.

    >>> op_label("NativeLayerNormBackward0"), op_label("CopySlices")
    ('native_layer_norm', 'copy_slices')
    """
    base = re.sub(r"Backward\d*$", "", grad_fn_name) or grad_fn_name
    return _CAMEL.sub("_", base).lower()


def assemble(session: Session) -> Trace:
    """The Trace of what ``session`` recorded."""
    if session._walk is None or session._backward is None:
        raise CaptureError("no backward() was recorded, so there is no step to trace")
    graph, bwd = session._walk, session._backward
    with session.outside_mode():
        stats = session.stats.materialize()
    if session.stats.changed_after_add:
        session.notes.append(
            f"{session.stats.changed_after_add} tensor(s) were written in place by code gradtrace does not see "
            "(a hook, another thread) after they were recorded: their statistics show the value after the write"
        )
    param_names = session.modules.named_parameters()
    fwd = session.recorder.nodes

    ops = sorted((k for k in graph.nodes if k[1] != "AccumulateGrad"), key=lambda k: k[0])
    leaves = [k for k in graph.nodes if k[1] == "AccumulateGrad"]
    keys: dict[NodeKey, str] = {k: f"op{i}" for i, k in enumerate(ops)}
    param_rank = {pid: i for i, pid in enumerate(param_names)}
    params = sorted((k for k in leaves if id(graph.nodes[k].variable) in param_rank), key=lambda k: param_rank[id(graph.nodes[k].variable)])
    keys.update({k: f"param{i}" for i, k in enumerate(params)})
    others = [k for k in leaves if k not in keys]
    keys.update({k: f"leaf{i}" for i, k in enumerate(others)})
    backward_step = {k: i + 1 for i, k in enumerate(bwd.order)}

    def stats_list(handles: dict[int, int] | list[int | None], n: int) -> tuple[Any, ...]:
        if isinstance(handles, dict):
            return tuple(stats[handles[i]] if i in handles else None for i in range(n))
        return tuple(None if h is None else stats[h] for h in handles)

    nodes: list[TraceNode] = []
    for i, k in enumerate(ops):
        node = graph.nodes[k]
        rec = fwd.get(k)
        grads = bwd.grads.get(k, [])
        n_out = max(len(grads), (max(rec.stats) + 1) if rec and rec.stats else 0, 1)
        grad_stats = stats_list(grads, len(grads)) + (None,) * (n_out - len(grads))
        nodes.append(TraceNode(
            key=keys[k], kind="op", label=op_label(type(node).__name__), module=rec.module if rec else "",
            grad_fn=type(node).__name__, values=stats_list(rec.stats if rec else {}, n_out), grads=grad_stats,
            forward_step=i + 1, backward_step=backward_step.get(k),
        ))
    unnamed = 0
    for k in params + others:
        var = graph.nodes[k].variable
        name = param_names.get(id(var))
        update = session._updates.get(id(var))
        update_stats = None if update is None else stats[update]
        value = stats[session._leaf_stats[k]]
        ratio = None
        if update_stats is not None and value.norm:
            ratio = update_stats.norm / value.norm if update_stats.norm is not None else None
        if name is not None:
            kind, label, module = "param", name, name.rpartition(".")[0]
        else:
            inp = session._input_ids.get(id(var))
            if inp is not None:
                label = session.inputs[inp].label
            elif id(var) in session._leaf_names:
                label = session._leaf_names[id(var)]
            else:
                label, unnamed = f"leaf {unnamed}", unnamed + 1
            kind, module = "leaf", ""
        nodes.append(TraceNode(
            key=keys[k], kind=kind, label=label, module=module, values=(value,),
            grads=stats_list(bwd.grads.get(k, []), 1) if k in bwd.grads else (None,),
            backward_step=backward_step.get(k), update=update_stats,
            update_ratio=None if ratio is None or math.isnan(ratio) else ratio,
        ))
    edges: list[TraceEdge] = []
    seen: set[tuple[str, str, int]] = set()
    for src, dst, out in graph.edges:
        e = (keys[src], keys[dst], out)
        if e not in seen:
            seen.add(e)
            edges.append(TraceEdge(*e))
    used_inputs: dict[int, str] = {}
    for k in ops:
        rec = fwd.get(k)
        if rec is None:
            continue
        for idx in sorted(rec.inputs):
            key = used_inputs.setdefault(idx, f"input{len(used_inputs)}")
            e = (key, keys[k], 0)
            if e not in seen:
                seen.add(e)
                edges.append(TraceEdge(*e))
    for idx, key in sorted(used_inputs.items(), key=lambda kv: kv[1]):
        inp = session.inputs[idx]
        nodes.append(TraceNode(key=key, kind="input", label=inp.label, values=(stats[inp.stats],)))

    modules = {path: cls for path, cls in session.modules.classes.items() if path}
    if len(graph.roots) > 1:
        session.notes.append(f"backward() started from {len(graph.roots)} tensors at once; the first is marked as the loss")
    return Trace(nodes=tuple(nodes), edges=tuple(edges), loss=keys[graph.roots[0]], modules=modules, optimizer=session.optimizer,
                 notes=tuple(session.modules.notes + session.notes + session.grad_notes.notes))
