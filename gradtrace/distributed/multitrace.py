"""Every rank's trace of one step in one container, and its JSON (no torch here).

The multi-rank file (``"format": "gradtrace-multirank"``) holds, per rank,
that rank's whole single-rank trace (the ``gradtrace-trace`` document,
unchanged) and what the collective did to each parameter's gradient::

    {"format": "gradtrace-multirank", "version": 1, "world_size": 2, "step": 1,
     "ranks": [{"rank": 0, "local_rank": 0,
                "trace": {"format": "gradtrace-trace", ...},
                "collective": [{"node": "param0", "op": "all_reduce",
                                "shape": [3, 4], "placements": "",
                                "reduced": {<TensorStats>}}, ...]},
               {"rank": 1, ...}]}

In each rank's trace the gradient of a parameter node is that rank's local
gradient, before the collective; ``collective`` gives, per parameter node,
the gradient after it: DDP's all-reduced average (``op`` ``all_reduce``,
the whole tensor, the same on every rank), or FSDP2's reduce-scattered
shard (``op`` ``reduce_scatter``: ``reduced`` describes this rank's shard
only, ``shape`` is the parameter's full logical shape and ``placements``
the DTensor placements, as ``str(dtensor.placements)``, and ``shard``
``[k, n]`` which shard this rank holds, of how many, numbered from 0; written
only when known, and ignored by readers that predate it). An ``all_reduce``
record may also hold ``held`` (a TensorStats): the ``.grad`` the rank already
held before this backward (micro-steps accumulated under ``no_sync()``),
which DDP reduced together with the local gradient; written only when there
was one, ignored by older readers.

The ranks' traces stay as recorded; :meth:`MultiTrace.trace` attaches each
record to its parameter node (``TraceNode.reduced``), which is what every
drawing shows beside the local gradient.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import GradtraceError
from ..records import COLLECTIVE_OPS, MAX_RANKS, ReducedGrad, TensorStats, TraceFileError, _field, _int, _list, _obj, _str
from ..steptrace import Trace

if TYPE_CHECKING:
    from ..diagnose import Finding

__all__ = ["COLLECTIVE_OPS", "MULTI_FORMAT", "MULTI_VERSION", "CollectiveGrad", "MultiTrace", "RankTrace", "with_reduced"]

MULTI_FORMAT = "gradtrace-multirank"
MULTI_VERSION = 1


@dataclass(frozen=True)
class CollectiveGrad:
    """A parameter's gradient after the collective, on one rank.

    ``node`` is the parameter's key in that rank's trace; ``shape`` its full
    logical shape; ``reduced`` the statistics of the reduced gradient this
    rank holds (for ``reduce_scatter``, its shard only); ``placements`` the
    DTensor placements of a sharded gradient, ``""`` otherwise; ``shard`` and
    ``shards``: which shard this rank holds, of how many (numbered from 0; None
    for an all-reduce, or where the run did not say). ``held``: the ``.grad`` this
    rank already held before this backward (accumulated by earlier backward()
    calls under DDP's ``no_sync()``), which DDP adds to the local gradient and
    reduces with it; None when ``.grad`` was empty (or not recorded).

    >>> CollectiveGrad("param0", "all_reduce", (3,), None).sharded
    False
    """

    node: str
    op: str
    shape: tuple[int, ...]
    reduced: TensorStats | None
    placements: str = ""
    shard: int | None = None
    shards: int | None = None
    held: TensorStats | None = None

    @property
    def sharded(self) -> bool:
        """True when ``reduced`` describes this rank's shard, not the whole gradient."""
        return self.op == "reduce_scatter"

    def to_dict(self) -> dict[str, Any]:
        out = {"node": self.node, "op": self.op, "shape": list(self.shape), "placements": self.placements,
               "reduced": None if self.reduced is None else self.reduced.to_dict()}
        if self.shards is not None:  # (older readers ignore the field; they read the rest as before)
            out["shard"] = [self.shard, self.shards]
        if self.held is not None:  # (likewise: written only when a gradient was accumulated before this backward)
            out["held"] = self.held.to_dict()
        return out

    def on_node(self, rank: int, world_size: int) -> ReducedGrad:
        """This record as the parameter node's :class:`~gradtrace.records.ReducedGrad`, which every drawing shows."""
        return ReducedGrad(self.op, rank, world_size, self.shape, self.reduced, self.placements, self.shard, self.shards)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> CollectiveGrad:
        d = _obj(d, where)
        op = _str(_field(d, "op", where), f"{where} op")
        if op not in COLLECTIVE_OPS:
            raise TraceFileError(f"{where} op: expected one of {list(COLLECTIVE_OPS)}, found {op!r}")
        shape = _list(_field(d, "shape", where), f"{where} shape")
        reduced = _field(d, "reduced", where)
        shard = d.get("shard")
        if shard is not None and not (isinstance(shard, list) and len(shard) == 2):
            raise TraceFileError(f"{where} shard: expected null or [k, n] (shard k of n, numbered from 0), found {shard!r:.60}")
        k, n = (None, None) if shard is None else (_int(shard[0], f"{where} shard[0]"), _int(shard[1], f"{where} shard[1]", minimum=1))
        if n is not None and (k >= n or op != "reduce_scatter"):
            raise TraceFileError(f"{where} shard: [{k}, {n}] is not a shard of a reduce_scatter "
                                 "(expected k < n, and an all_reduce has none)")
        return cls(node=_str(_field(d, "node", where), f"{where} node"), op=op,
                   shape=tuple(_int(n, f"{where} shape[{i}]") for i, n in enumerate(shape)),
                   reduced=None if reduced is None else TensorStats.from_dict(reduced, f"{where} reduced"),
                   placements=_str(d.get("placements", ""), f"{where} placements"), shard=k, shards=n,
                   held=None if d.get("held") is None else TensorStats.from_dict(d["held"], f"{where} held"))


@dataclass(frozen=True, eq=False)
class RankTrace:
    """One rank's step: its trace as recorded (local gradients) and its parameters' gradients after the collective.

    :meth:`MultiTrace.trace` gives the trace with each collective record attached to its parameter
    node (:attr:`~gradtrace.records.TraceNode.reduced`), as every drawing shows it.
    """

    rank: int
    trace: Trace
    collective: tuple[CollectiveGrad, ...] = ()
    local_rank: int = 0

    def reduced(self, key: str) -> CollectiveGrad | None:
        """The collective record of parameter node ``key``, or None (not reduced, or not a parameter)."""
        return next((c for c in self.collective if c.node == key), None)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "local_rank": self.local_rank, "trace": self.trace.to_dict(),
                "collective": [c.to_dict() for c in self.collective]}


@dataclass(frozen=True, eq=False)
class MultiTrace:
    """One training step on every rank of a distributed run (torchrun), rank 0 first.

    >>> m = MultiTrace.from_json(open("step.json").read())      # doctest: +SKIP
    >>> m.world_size, m.trace(1).loss                            # doctest: +SKIP
    (2, 'op0')
    >>> [f.message for f in m.findings()]                        # doctest: +SKIP
    """

    ranks: tuple[RankTrace, ...]
    step: int = 1
    world_size: int = field(default=0)
    #: Ranks whose script ended before this step (uneven step counts: a sweep under torchrun, DDP with Join):
    #: rank -> why (one line). They have no trace here; every other rank of ``world_size`` has one.
    ended: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ranks:
            raise GradtraceError("a multi-rank trace needs at least one rank")
        numbers = [r.rank for r in self.ranks]
        if numbers != sorted(set(numbers)):
            raise GradtraceError(f"the ranks of a multi-rank trace must be distinct and in order, got {numbers}")
        if not self.world_size:
            object.__setattr__(self, "world_size", len(self.ranks))
        if numbers[-1] >= self.world_size:
            raise GradtraceError(f"rank {numbers[-1]} is not below the world size {self.world_size}")
        for r in self.ranks:
            keys = {n.key for n in r.trace.nodes}
            for c in r.collective:
                if c.node not in keys:
                    raise GradtraceError(f"rank {r.rank}: the collective record names node {c.node!r}, "
                                         "which that rank's trace does not have")

    def trace(self, rank: int) -> Trace:
        """The trace of ``rank``, each parameter's gradient after the collective attached to its node
        (:attr:`~gradtrace.records.TraceNode.reduced`, beside the local gradient the node records):
        what its diagram, page and JSON show."""
        for r in self.ranks:
            if r.rank == rank:
                if rank not in self._drawn:
                    self._drawn[rank] = with_reduced(r.trace, r.collective, rank, self.world_size)
                return self._drawn[rank]
        raise KeyError(f"no rank {rank} in this trace (ranks {[r.rank for r in self.ranks]})")

    @cached_property
    def _drawn(self) -> dict[int, Trace]:
        return {}

    def findings(self) -> list[tuple[int, Finding]]:
        """Each rank's own findings, then the cross-rank ones: ``(rank, finding)``, the rank whose node the
        finding is about. See :mod:`gradtrace.distributed.findings`."""
        from .findings import cross_rank_findings

        out: list[tuple[int, Finding]] = [(r.rank, f) for r in self.ranks for f in r.trace.diagnose()]
        return out + cross_rank_findings(self)

    def to_dict(self) -> dict[str, Any]:
        out = {"format": MULTI_FORMAT, "version": MULTI_VERSION, "world_size": self.world_size, "step": self.step,
               "ranks": [r.to_dict() for r in self.ranks]}
        if self.ended:  # (written only when some rank ended before the step: older files and readers are unchanged)
            out["ended"] = {str(r): why for r, why in sorted(self.ended.items())}
        return out

    def to_json(self, indent: int | None = None) -> str:
        """Every rank as one JSON document (valid JSON: NaN and infinities are written as strings)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> MultiTrace:
        """Load a multi-rank file; untrusted input, checked as strictly as a single trace
        (each rank's trace by :meth:`Trace.from_json`'s rules), a GradtraceError saying where and why."""
        from ..tracefile import read_multi_trace

        return read_multi_trace(cls, text)

    @classmethod
    def from_dict(cls, d: Any) -> MultiTrace:
        """Build from a parsed document (see :meth:`from_json`); raises TraceFileError naming the field."""
        from ..tracefile import trace_from_dict

        d = _obj(d, "the document")
        world = _int(_field(d, "world_size", "the document"), "world_size", minimum=1)
        if world > MAX_RANKS:
            raise TraceFileError(f"world_size: {world} ranks is more than gradtrace writes (at most {MAX_RANKS})")
        step = _int(d.get("step", 1), "step", minimum=1)
        ranks_in = _list(_field(d, "ranks", "the document"), "ranks")
        if not ranks_in:
            raise TraceFileError("ranks: expected at least one rank, found an empty list")
        ended_in = _obj(d.get("ended", {}), "ended")
        ended: dict[int, str] = {}
        for k, why in ended_in.items():
            if not (isinstance(k, str) and k.isdigit() and int(k) < world):
                raise TraceFileError(f"ended: {k!r} is not a rank number below world_size {world}")
            ended[int(k)] = _str(why, f"ended[{k!r}]")
        if len(ranks_in) + len(ended) != world:  # (rank 0 writes a file only when every rank sent its trace or ended)
            raise TraceFileError(f"ranks: {len(ranks_in)} rank{'s' if len(ranks_in) != 1 else ''}"
                                 + (f" and {len(ended)} that ended before the step" if ended else "")
                                 + f" for a world_size of {world} (a multi-rank file holds every rank's trace)")
        ranks = []
        for i, r in enumerate(ranks_in):
            where = f"ranks[{i}]"
            r = _obj(r, where)
            rank = _int(_field(r, "rank", where), f"{where} rank")
            if rank >= world:
                raise TraceFileError(f"{where} rank: {rank} is not below world_size {world}")
            if ranks and rank <= ranks[-1].rank:
                raise TraceFileError(f"{where} rank: {rank} comes after rank {ranks[-1].rank} (ranks are listed once each, in order)")
            trace = trace_from_dict(Trace, _field(r, "trace", where), f"{where} trace")
            coll = tuple(CollectiveGrad.from_dict(c, f"{where} collective[{j}]")
                         for j, c in enumerate(_list(r.get("collective", []), f"{where} collective")))
            nodes = {n.key: n for n in trace.nodes}
            named: set[str] = set()
            for j, c in enumerate(coll):
                if c.node not in nodes:
                    raise TraceFileError(f"{where} collective[{j}] node: {c.node!r} is not the key of any node of rank {rank}'s trace")
                if c.node in named:
                    raise TraceFileError(f"{where} collective[{j}] node: {c.node!r} has two collective records "
                                         "(one per parameter)")
                named.add(c.node)
                if nodes[c.node].kind not in ("param", "leaf"):
                    raise TraceFileError(f"{where} collective[{j}] node: {c.node!r} is a {nodes[c.node].kind} node "
                                         "(a collective reduces a parameter's gradient)")
                if c.shards is not None and c.shards > world:
                    raise TraceFileError(f"{where} collective[{j}] shard: {c.shards} shards is more than the {world} ranks")
                shapes = [v.shape for v in nodes[c.node].values if v is not None]
                if shapes and c.shape != shapes[0]:
                    raise TraceFileError(f"{where} collective[{j}] shape: {list(c.shape)} is not the shape of parameter "
                                         f"{c.node!r}, {list(shapes[0])} (the record describes that parameter's gradient)")
            if rank in ended:
                raise TraceFileError(f"{where} rank: rank {rank} has a trace but is also listed as ended before the step")
            ranks.append(RankTrace(rank, trace, coll, _int(r.get("local_rank", 0), f"{where} local_rank")))
        return cls(tuple(ranks), step, world, ended)


def with_reduced(trace: Trace, collective: tuple[CollectiveGrad, ...], rank: int, world_size: int) -> Trace:
    """``trace`` with each record of ``collective`` attached to its parameter node as ``reduced``
    (``trace`` itself when there are none, as in a run without DDP or FSDP2)."""
    by_node = {c.node: c for c in collective}
    if not by_node:
        return trace
    nodes = tuple(dataclasses.replace(n, reduced=by_node[n.key].on_node(rank, world_size)) if n.key in by_node else n
                  for n in trace.nodes)
    return dataclasses.replace(trace, nodes=nodes)
