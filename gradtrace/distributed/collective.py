"""The collective made visible: each parameter's gradient after DDP's all-reduce or FSDP2's reduce-scatter.

The trace of a rank records, at each parameter, the gradient the autograd
graph sent it: the rank's own, local gradient, before any communication.
Once the backward has returned, the collective has run (DDP finalizes its
all-reduce in a callback at the end of the backward; FSDP2 reduce-scatters
in its post-backward), so reading each parameter's ``.grad`` then gives the
reduced gradient:

- DDP: ``param.grad`` holds the average over all ranks, the whole tensor.
- FSDP2 (``fully_shard``): the autograd graph's leaf is the unsharded
  parameter the forward used; its sharded parameter (a DTensor) holds in
  ``.grad`` this rank's shard of the reduced gradient. Only the local
  shard (``to_local()``) is read: no full tensor is ever gathered.

Statistics are computed on the tensors' own device, with the trace's own
statistics code, one host copy for all of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..recorder.backward import NodeKey
from ..recorder.session import Session
from ..recorder.stats import StatsBuffer, invisible
from ..steptrace import Trace
from .multitrace import CollectiveGrad

__all__ = ["CollectiveRecorder"]

DDP_NOTE = ("distributed (DDP, {world} ranks): each parameter shows two gradients: this rank's local gradient, before "
            "the all-reduce (its node's grad), and the reduced gradient after it (the average over the ranks, which the "
            "optimizer used), drawn beside it and kept in the multi-rank file's 'collective' records")
FSDP_NOTE = ("distributed (FSDP2, {world} ranks): each parameter shows this rank's local gradient of the whole (unsharded) "
             "parameter, before the reduce-scatter (its node's grad), and beside it the shard of the reduced gradient this "
             "rank holds after it, described by the parameter's full shape, the placements and the statistics of the "
             "shard only (no full tensor is gathered); the multi-rank file's 'collective' records keep the same")
PLAIN_NOTE = ("distributed ({world} ranks): no DistributedDataParallel or FSDP2 (fully_shard) model took part in this step: "
              "the gradients drawn are this rank's own; a reduction the script does itself after backward() is not recorded")
UNREAD_NOTE = "an FSDP2 parameter's reduced gradient could not be read from FSDP2's state: it is left out"
NO_SYNC_NOTE = ("DDP did not reduce this step's gradients (no_sync(), or require_backward_grad_sync off): the gradients "
                "are this rank's own")


def _ddp_modules(roots: list[tuple[str, nn.Module]]) -> list[nn.Module]:
    from torch.nn.parallel import DistributedDataParallel

    return [m for _, root in roots for m in root.modules() if isinstance(m, DistributedDataParallel)]


def _fsdp_params(roots: list[tuple[str, nn.Module]]) -> dict[int, Any]:
    """id(unsharded parameter) -> its FSDPParam, over every ``fully_shard`` module under the roots."""
    out: dict[int, Any] = {}
    for _, root in roots:
        for m in root.modules():
            get_state = getattr(m, "_get_fsdp_state", None)
            if get_state is None:
                continue
            try:
                params = get_state()._fsdp_param_group.fsdp_params
            except Exception:  # private FSDP2 internals: a module without a param group, or a changed API
                continue
            for p in params or ():
                unsharded = getattr(p, "_unsharded_param", None)
                if unsharded is not None:
                    out[id(unsharded)] = p
    return out


class CollectiveRecorder:
    """Attached to a :class:`Session`, records each parameter's gradient after the collective.

    >>> rec = CollectiveRecorder(world_size=2)                 # doctest: +SKIP
    >>> rec.attach(session); ...; rec.records(trace)         # doctest: +SKIP
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._stats = StatsBuffer()
        # graph key -> (op, full shape, stats handle or None, placements, (shard, shards) or None)
        self._found: dict[NodeKey, tuple[str, tuple[int, ...], int | None, str, tuple[int, int] | None]] = {}
        # graph key -> stats handle of the .grad a DDP parameter held before the backward (accumulated under no_sync())
        self._held: dict[NodeKey, int] = {}
        self.notes: list[str] = []
        self._session: Session | None = None

    def attach(self, session: Session) -> None:
        """Install on ``session`` (before the script runs)."""
        self._session = session
        session.settle_at_leaves = True
        session.before_backward.append(lambda leaves: self._before_backward(session, leaves))
        session.after_backward.append(lambda leaves: self._after_backward(session, leaves))

    def _before_backward(self, session: Session, leaves: dict[NodeKey, torch.Tensor]) -> None:
        """What each DDP parameter's .grad holds before the backward: gradients accumulated under no_sync() by the
        earlier micro-steps, which DDP adds to this backward's local gradient and all-reduces with it."""
        ddps = [d for d in _ddp_modules(session.modules.roots) if getattr(d, "require_backward_grad_sync", True)]
        ids = {id(p) for d in ddps for p in d.parameters()}
        with torch.no_grad(), invisible():
            for key, var in leaves.items():
                if id(var) in ids and var.grad is not None:
                    self._held[key] = self._stats.add_now(var.grad)  # (read now: the backward adds into it)

    def _after_backward(self, session: Session, leaves: dict[NodeKey, torch.Tensor]) -> None:
        roots = session.modules.roots
        fsdp = _fsdp_params(roots)
        ddps = _ddp_modules(roots)
        synced = [d for d in ddps if getattr(d, "require_backward_grad_sync", True)]
        ddp_ids = {id(p) for d in synced for p in d.parameters()}
        if ddps and not synced:
            self.notes.append(NO_SYNC_NOTE)
        with torch.no_grad(), invisible():
            for key, var in leaves.items():
                if id(var) in fsdp:
                    try:
                        sharded = fsdp[id(var)].sharded_param
                        grad = sharded.grad
                        shape = tuple(sharded.shape)
                        placements = str(getattr(grad if grad is not None else sharded, "placements", ""))
                    except Exception:  # FSDP2's private state changed shape: the trace stands without this record
                        self.notes.append(UNREAD_NOTE)
                        continue
                    handle = None if grad is None else self._stats.add(_local(grad))
                    self._found[key] = ("reduce_scatter", shape, handle, placements, _shard_of(grad if grad is not None else sharded))
                elif id(var) in ddp_ids:
                    grad = var.grad
                    handle = None if grad is None else self._stats.add(grad)
                    self._found[key] = ("all_reduce", tuple(var.shape), handle, "", None)
            # Read now: the optimizer's zero_grad(set_to_none=False) would write these tensors in place.
            self._stats.settle()
        if any(op == "reduce_scatter" for op, *_ in self._found.values()):
            self.notes.append(FSDP_NOTE.format(world=self.world_size))
        elif self._found:
            self.notes.append(DDP_NOTE.format(world=self.world_size))
        elif not ddps and not fsdp:
            self.notes.append(PLAIN_NOTE.format(world=self.world_size))
        self.notes = list(dict.fromkeys(self.notes))  # (one note per kind, however many parameters it concerns)

    def records(self, trace: Trace) -> tuple[Trace, tuple[CollectiveGrad, ...]]:
        """``trace`` (built by the attached session) with the collective's notes added, and the records
        keyed by the trace's node keys."""
        session = self._session
        if session is None:
            return trace, ()
        stats = self._stats.materialize()
        out = []
        for key, (op, shape, handle, placements, shard) in self._found.items():
            node = session.trace_keys.get(key)
            if node is not None:
                k, n = shard if shard is not None else (None, None)
                held = self._held.get(key) if op == "all_reduce" else None
                out.append(CollectiveGrad(node, op, shape, None if handle is None else stats[handle], placements, k, n,
                                          None if held is None else stats[held]))
        order = {n.key: i for i, n in enumerate(trace.nodes)}
        out.sort(key=lambda c: order[c.node])
        if self.notes:
            import dataclasses

            trace = dataclasses.replace(trace, notes=trace.notes + tuple(self.notes))
        return trace, tuple(out)


def _local(grad: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor gradient (never the gathered whole), or the tensor itself."""
    to_local = getattr(grad, "to_local", None)
    return to_local() if callable(to_local) else grad


def _shard_of(dtensor: Any) -> tuple[int, int] | None:
    """Which shard of a DTensor this rank holds, and of how many (numbered from 0): its coordinate on
    the mesh dimension of its one ``Shard`` placement. None where that is not one number: no mesh
    coordinate, no Shard placement, or several (a 2-D mesh sharding on two dimensions)."""
    try:
        from torch.distributed.tensor.placement_types import Shard

        dims = [i for i, p in enumerate(dtensor.placements) if isinstance(p, Shard)]
        coordinate = dtensor.device_mesh.get_coordinate()
        if len(dims) != 1 or coordinate is None:
            return None
        return int(coordinate[dims[0]]), int(dtensor.device_mesh.size(dims[0]))
    except Exception:  # not a DTensor, or DTensor's API moved: the record stands without the index
        return None
