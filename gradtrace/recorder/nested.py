"""A backward run from inside the recorded one: a reentrant ``torch.utils.checkpoint`` block.

With ``use_reentrant=True`` a checkpointed block is run under ``no_grad`` in the
forward, so the graph autograd holds before backward has one node for the whole
block (``CheckpointFunctionBackward``) and none of the block's parameters. When
the engine reaches that node it runs the block again and calls ``backward`` on
the recomputed graph. gradtrace sees that call (it is no step of the user's)
and adds the block's leaves to the trace, feeding the checkpoint's node, with
the gradients they receive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .backward import walk

if TYPE_CHECKING:
    from .session import Session

__all__ = ["record_nested"]


def record_nested(session: Session, tensors: Any) -> str | None:
    """A backward run from inside the recorded one: a reentrant ``torch.utils.checkpoint`` block
    recomputing its forward. Its leaves (the block's parameters) join the trace, feeding the node
    that is running it, with their gradients; its inner ops are not drawn, and a note says so."""
    graph, bwd = session._walk, session._backward
    if graph is None or bwd is None:
        return None
    roots = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    nodes = [t.grad_fn for t in roots if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    if not nodes:
        return None
    consumer = bwd.running()
    with session.outside_mode():
        nested = walk(nodes)
        # The block's own inputs come in as detached copies (leaves sharing storage with what the
        # checkpoint saved): they stand for the checkpoint's inputs, which the graph already has.
        saved: set[int] = set()
        ctx = graph.nodes.get(consumer) if consumer is not None else None
        try:
            saved = {t.untyped_storage().data_ptr() for t in getattr(ctx, "saved_tensors", ()) if isinstance(t, torch.Tensor)}
        except RuntimeError:
            pass
        names = session.modules.named_parameters()
        hidden = 0
        for key, node in nested.nodes.items():
            if key[1] != "AccumulateGrad":
                hidden += 1
                continue
            var = node.variable
            if id(var) not in names and var.untyped_storage().data_ptr() in saved:
                continue
            if key not in graph.nodes:
                graph.nodes[key] = node
                session._leaf_stats[key] = session.stats.add(var)
                bwd.add(key, node)
                if session.keep_grads:
                    session._nested_grads.append((var, var.grad))
                    var.grad = None
            if consumer is not None:
                graph.edges.append((key, consumer, 0))
    label = type(ctx).__name__ if ctx is not None else "a node"
    return (f"{label} ran a backward of its own (torch.utils.checkpoint with use_reentrant=True recomputes its "
            f"block during backward): the block's {hidden} op(s) are not drawn; its parameters are, feeding "
            f"that node, with their gradients")

