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

from .modules import rename_path

if TYPE_CHECKING:
    from .backward import NodeKey
    from .session import Session

__all__ = ["assemble", "op_label"]

# Word boundaries of a CamelCase name: lower->Upper, and an acronym's end (``DWith`` -> ``D_With``).
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@functools.lru_cache(maxsize=1)
def _aten_names() -> dict[str, str]:
    """ATen op names keyed by their letters and digits alone, lower case (``maxpool2dwithindices``).

    torch names an op's autograd node by CamelCasing the op's name (``max_pool2d_with_indices`` ->
    ``MaxPool2DWithIndicesBackward0``), which loses where the words of ``2d``, ``log1p`` or
    ``smooth_l1_loss`` break; the op's own name is the one to show. Leading underscores (private
    ATen variants, ``_log_softmax``) are dropped; the public spelling wins a tie.
    """
    import torch

    names: dict[str, str] = {}
    for full in torch._C._dispatch_get_all_op_names():
        if not full.startswith("aten::"):
            continue
        name = full[6:].split(".")[0].lstrip("_")
        key = name.replace("_", "").lower()
        if key not in names or len(name) < len(names[key]):
            names[key] = name
    return names


@functools.lru_cache(maxsize=4096)
def op_label(grad_fn_name: str) -> str:
    """The name a person reads for an autograd node: the ATen op behind it, ``AddmmBackward0`` -> ``addmm``.

    >>> op_label("MaxPool2DWithIndicesBackward0"), op_label("NativeLayerNormBackward0"), op_label("CopySlices")
    ('max_pool2d_with_indices', 'native_layer_norm', 'copy_slices')
    """
    base = re.sub(r"Backward\d*$", "", grad_fn_name) or grad_fn_name
    aten = _aten_names().get(base.lower())
    if aten is not None:
        return aten
    # Not an ATen op (a custom autograd.Function, CopySlices): split the CamelCase, keeping ``2D`` whole.
    return _CAMEL.sub("_", base).lower()


def _forward_owners(graph: Any, fwd: dict[NodeKey, Any], stats: list[Any]) -> dict[NodeKey, Any]:
    """Walk key -> its forward record. Nodes made on several threads can share an identity; the
    record (made on the recording thread) goes to the one whose outputs have its shapes, and to
    none where that leaves a doubt: no value rather than another node's."""
    owner = {k: rec for k, rec in fwd.items() if k in graph.nodes}
    for base, keys in graph.collided.items():
        owner.pop(base, None)
        rec = fwd.get(base)
        if rec is None:
            continue
        shapes = {nr: stats[h].shape for nr, h in rec.stats.items()}

        def fits(node: Any) -> bool:
            try:
                meta = node._input_metadata
                return all(nr < len(meta) and tuple(meta[nr].shape) == shape for nr, shape in shapes.items())
            except (AttributeError, RuntimeError):
                return False

        matches = [k for k in keys if fits(graph.nodes[k])]
        if len(matches) == 1:
            owner[matches[0]] = rec
    return owner


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
    if session.stats.sparse:
        session.notes.append(
            f"{session.stats.sparse} sparse tensor(s): their statistics describe the stored values only "
            "(min, max, mean, std, norm and counts over the stored entries; implicit zeros are not counted)"
        )
    if session.stats.unreadable:
        session.notes.append(
            f"{session.stats.unreadable} tensor(s) (nested, or wrapped by a torch.func transform such as vmap or grad) "
            "have no statistics: their elements are not plain memory gradtrace can read"
        )
    if session.stats.freed:
        session.notes.append(
            f"{session.stats.freed} tensor(s) have no statistics: their memory was released before gradtrace could read "
            "them (FSDP2 frees each unsharded parameter between its uses)"
        )
    param_names = session.modules.named_parameters()
    fwd = session.recorder.nodes
    # Roots named in the order they were first called are renamed now that the step says which is the model.
    prefixes = session.modules.final_prefixes({id(n.variable) for k, n in graph.nodes.items() if k[1] == "AccumulateGrad"})
    if prefixes:
        param_names = {pid: rename_path(name, prefixes) for pid, name in param_names.items()}

    ops = sorted((k for k in graph.nodes if k[1] != "AccumulateGrad"), key=lambda k: k[0])
    leaves = [k for k in graph.nodes if k[1] == "AccumulateGrad"]
    keys: dict[NodeKey, str] = {k: f"op{i}" for i, k in enumerate(ops)}
    param_rank = {pid: i for i, pid in enumerate(param_names)}
    params = sorted((k for k in leaves if id(graph.nodes[k].variable) in param_rank), key=lambda k: param_rank[id(graph.nodes[k].variable)])
    keys.update({k: f"param{i}" for i, k in enumerate(params)})
    others = [k for k in leaves if k not in keys]
    keys.update({k: f"leaf{i}" for i, k in enumerate(others)})
    session.trace_keys = dict(keys)
    backward_step = {k: i + 1 for i, k in enumerate(bwd.order)}

    def stats_list(handles: dict[int, int] | list[int | None], n: int) -> tuple[Any, ...]:
        if isinstance(handles, dict):
            return tuple(stats[handles[i]] if i in handles else None for i in range(n))
        return tuple(None if h is None else stats[h] for h in handles)

    owner = _forward_owners(graph, fwd, stats)
    nodes: list[TraceNode] = []
    for i, k in enumerate(ops):
        node = graph.nodes[k]
        rec = owner.get(k)
        grads = bwd.grads.get(k, [])
        n_out = max(len(grads), (max(rec.stats) + 1) if rec and rec.stats else 0, 1)
        grad_stats = stats_list(grads, len(grads)) + (None,) * (n_out - len(grads))
        nodes.append(TraceNode(
            key=keys[k], kind="op", label=op_label(type(node).__name__), module=rename_path(rec.module, prefixes) if rec else "",
            grad_fn=type(node).__name__, values=stats_list(rec.stats if rec else {}, n_out), grads=grad_stats,
            forward_step=i + 1, backward_step=backward_step.get(k),
            source=rec.source if rec else None, args=rec.args if rec else "",
            scope=rename_path(rec.scope, prefixes) if rec else "",
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
            if inp is not None and session.inputs[inp].label:
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
            sgd_update=None if id(var) not in session._sgd_updates else stats[session._sgd_updates[id(var)]],
        ))
    edges: list[TraceEdge] = []
    seen: set[tuple[str, str, int]] = set()
    uses: dict[tuple[NodeKey, NodeKey, int], int] = {}
    for src, dst, out in graph.edges:
        uses[(src, dst, out)] = uses.get((src, dst, out), 0) + 1
    for src, dst, out in graph.edges:
        e = (keys[src], keys[dst], out)
        if e not in seen:
            seen.add(e)
            sent = bwd.edge_grads.get(dst, {}).get((src, out))
            edges.append(TraceEdge(*e, grad=None if sent is None else stats[sent], uses=uses[(src, dst, out)]))
    used_inputs: dict[int, str] = {}
    for k in ops:
        rec = owner.get(k)
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
        # Unnamed inputs are numbered among those drawn, not among every tensor a module call was handed.
        label = inp.label or f"input {key[len('input'):]}"
        nodes.append(TraceNode(key=key, kind="input", label=label, values=(stats[inp.stats],)))

    unrecorded = sum(1 for k in ops if k not in owner)
    if unrecorded:
        earlier = ("before the recorded step began: gradtrace records the ops since the previous backward(), "
                   "and a tensor made earlier and used again (a GAN generator's output reused after the "
                   "discriminator's backward) shows only its gradient" if session.step > 1 else
                   "before the capture began")
        session.notes.append(
            f"{unrecorded} op(s) have no forward value, only their gradient: gradtrace's recorder did not see them "
            f"made. They were made {earlier}; or on another thread than the one running the model (torch's dispatch "
            "modes are per thread); or inside a tensor subclass such as a nested tensor"
        )
    modules = {rename_path(path, prefixes): cls for path, cls in session.modules.classes.items()}
    modules = {path: cls for path, cls in modules.items() if path}
    if len(graph.roots) > 1:
        session.notes.append(f"backward() started from {len(graph.roots)} tensors at once; the first is marked as the loss")
    return Trace(nodes=tuple(nodes), edges=tuple(edges), loss=keys[graph.roots[0]], modules=modules, optimizer=session.optimizer,
                 notes=tuple(session.modules.notes + session.notes + session.grad_notes.notes))
