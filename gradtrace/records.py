"""The plain data a trace is made of: frozen dataclasses of numbers and strings.

Nothing here knows about torch, networkx or Graphviz. Capture produces these
records, everything downstream (graph, render, JSON) only reads them, so a
saved trace can be loaded and drawn on a machine without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["COLLECTIVE_OPS", "NODE_KINDS", "OptimizerStep", "ReducedGrad", "TensorStats", "TraceEdge", "TraceNode"]

#: The kinds a node can have: an autograd node, a named parameter, another
#: tensor that requires grad, a tensor handed to the model that does not.
NODE_KINDS = ("op", "param", "leaf", "input")

#: What reduced a parameter's gradient across ranks: DDP's all-reduce (every rank ends with the whole
#: average) or FSDP2's reduce-scatter (every rank ends with its shard of it).
COLLECTIVE_OPS = ("all_reduce", "reduce_scatter")
#: More ranks than this is not a run gradtrace recorded (and a bound on what a hostile file describes).
MAX_RANKS = 65536

#: Tensors with at most this many elements keep their exact values.
EXACT_VALUES_MAX = 16


def _float_to_json(x: float | None) -> float | str | None:
    """JSON has no NaN or infinity: spell them as strings so the file stays valid JSON."""
    if x is None or math.isfinite(x):
        return x
    if math.isnan(x):
        return "nan"
    return "inf" if x > 0 else "-inf"


class TraceFileError(ValueError):
    """One field of a trace document is wrong; ``Trace.from_json`` turns it into a GradtraceError."""


def _found(x: Any) -> str:
    text = repr(x)
    return f"{text[:60]}…" if len(text) > 60 else text + f" (a {_kind(x)})"


def _kind(x: Any) -> str:
    return {dict: "JSON object", list: "JSON array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(x), type(x).__name__)


def _bad(where: str, expected: str, x: Any) -> TraceFileError:
    return TraceFileError(f"{where}: expected {expected}, found {_found(x)}")


def _obj(x: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(x, dict):
        raise _bad(where, "a JSON object", x)
    return x


def _list(x: Any, where: str) -> list[Any]:
    if not isinstance(x, list):
        raise _bad(where, "a JSON array", x)
    return x


def _field(d: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in d:
        raise TraceFileError(f"{where}: the field {name!r} is missing")
    return d[name]


def _str(x: Any, where: str, *, optional: bool = False) -> Any:
    if x is None and optional:
        return None
    if not isinstance(x, str):
        raise _bad(where, "a string or null" if optional else "a string", x)
    return x


#: Counts, sizes and steps beyond this are not from a real tensor (2**62 elements is far past any memory).
_INT_MAX = 2**62


def _int(x: Any, where: str, *, minimum: int = 0, optional: bool = False) -> Any:
    if x is None and optional:
        return None
    if not isinstance(x, int) or isinstance(x, bool) or not minimum <= x <= _INT_MAX:
        what = f"an integer from {minimum} to 2**62" + (" or null" if optional else "")
        raise _bad(where, what, x)
    return x


def _not_null(x: Any, where: str) -> Any:
    if x is None:
        raise _bad(where, "a number, 'nan', 'inf' or '-inf'", x)
    return x


def _float_from_json(x: Any, where: str = "number") -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        if x not in ("nan", "inf", "-inf"):
            raise _bad(where, "a number, 'nan', 'inf', '-inf' or null", x)
        return float(x)
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        raise _bad(where, "a number, 'nan', 'inf', '-inf' or null", x)
    try:
        return float(x)
    except OverflowError:
        raise _bad(where, "a number within the range of a float", x) from None


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics of one tensor (a forward value or a gradient).

    ``min``, ``max``, ``mean``, ``std`` and ``norm`` are over the finite
    elements: ``nan`` and ``inf`` count the others, so a tensor with one NaN
    among a million reads "NaN: 1" beside the statistics of the rest rather
    than "NaN ± NaN" (``mean`` divides by ``numel − nan − inf``). They are
    ``None`` for empty tensors and when no element is finite. Complex tensors
    are described by their magnitudes. ``values`` holds every
    element exactly (flattened, row-major) when the tensor has at most
    ``EXACT_VALUES_MAX`` elements, else ``None``.

    >>> s = TensorStats(shape=(2,), dtype="float32", device="cpu", numel=2,
    ...                 min=1.0, max=3.0, mean=2.0, std=1.4142135, norm=3.1622777,
    ...                 nan=0, inf=0, values=(1.0, 3.0))
    >>> s.finite
    True
    """

    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    norm: float | None
    nan: int
    inf: int
    values: tuple[float, ...] | None = None

    @property
    def finite(self) -> bool:
        """True when the tensor holds no NaN and no infinity."""
        return self.nan == 0 and self.inf == 0

    @property
    def rms(self) -> float | None:
        """Root mean square, ``norm / sqrt(numel)``: a magnitude comparable across sizes."""
        if self.norm is None or self.numel == 0:
            return None
        return self.norm / math.sqrt(self.numel)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "device": self.device,
            "numel": self.numel,
            "min": _float_to_json(self.min),
            "max": _float_to_json(self.max),
            "mean": _float_to_json(self.mean),
            "std": _float_to_json(self.std),
            "norm": _float_to_json(self.norm),
            "nan": self.nan,
            "inf": self.inf,
            "values": None if self.values is None else [_float_to_json(v) for v in self.values],
        }

    @classmethod
    def _of(cls, *fields: Any) -> TensorStats:
        """``TensorStats(*fields)`` at half the cost, for capture's loop over every tensor of a step
        (a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``)."""
        obj = object.__new__(cls)
        obj.__dict__.update(zip(_STATS_FIELDS, fields))
        return obj

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "tensor statistics") -> TensorStats:
        """Read what :meth:`to_dict` wrote; a wrong field raises ``TraceFileError`` naming it."""
        d = _obj(d, where)
        shape = _list(_field(d, "shape", where), f"{where} shape")
        values = d.get("values")
        numel = _int(_field(d, "numel", where), f"{where} numel")
        if values is not None and (not isinstance(values, list) or len(values) != numel):
            raise _bad(f"{where} values", f"null or a list of numel={numel} numbers", values)
        stats = cls(
            shape=tuple(_int(n, f"{where} shape[{i}]") for i, n in enumerate(shape)),
            dtype=_str(_field(d, "dtype", where), f"{where} dtype"),
            device=_str(_field(d, "device", where), f"{where} device"),
            numel=numel,
            min=_float_from_json(_field(d, "min", where), f"{where} min"),
            max=_float_from_json(_field(d, "max", where), f"{where} max"),
            mean=_float_from_json(_field(d, "mean", where), f"{where} mean"),
            std=_float_from_json(_field(d, "std", where), f"{where} std"),
            norm=_float_from_json(_field(d, "norm", where), f"{where} norm"),
            nan=_int(_field(d, "nan", where), f"{where} nan (a count)"),
            inf=_int(_field(d, "inf", where), f"{where} inf (a count)"),
            values=None if values is None else tuple(  # type: ignore[misc]
                _float_from_json(_not_null(v, f"{where} values[{i}]"), f"{where} values[{i}]")
                for i, v in enumerate(_list(values, f"{where} values"))),
        )
        stats._check_domain(where)
        return stats

    def _check_domain(self, where: str) -> None:
        """What no tensor can have: a negative norm or spread, a minimum above the maximum, more NaN and
        inf elements than elements. (A loaded file's numbers feed ratios and logarithms downstream.)"""
        for name in ("std", "norm"):
            x = getattr(self, name)
            if x is not None and x < 0:  # (NaN loads: traces written before statistics skipped NaN elements hold it)
                raise _bad(f"{where} {name}", "a number >= 0, 'inf', 'nan' or null (a norm or spread is never negative)", x)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise TraceFileError(f"{where}: min {self.min!r} is above max {self.max!r} (expected min <= max)")
        if self.nan + self.inf > self.numel:
            raise TraceFileError(f"{where}: nan + inf = {self.nan + self.inf} is more than numel={self.numel} "
                                 "(they count elements of the tensor)")


_STATS_FIELDS = tuple(TensorStats.__dataclass_fields__)


def _stats_tuple_to_json(items: tuple[TensorStats | None, ...]) -> list[dict[str, Any] | None]:
    return [None if s is None else s.to_dict() for s in items]


def _stats_tuple_from_json(items: Any, where: str) -> tuple[TensorStats | None, ...]:
    return tuple(None if s is None else TensorStats.from_dict(s, f"{where}[{i}]") for i, s in enumerate(_list(items, where)))


def _stats_from_json(x: Any, where: str) -> TensorStats | None:
    return None if x is None else TensorStats.from_dict(x, where)


@dataclass(frozen=True)
class ReducedGrad:
    """A parameter's gradient after the data-parallel collective, as rank ``rank`` of ``world_size`` holds it.

    The node's own ``grads`` are the rank's local gradient, before the collective; this is the
    gradient the optimizer used. ``op`` ``all_reduce`` (DDP): ``stats`` describe the whole average
    over the ranks. ``reduce_scatter`` (FSDP2): ``stats`` describe this rank's shard only, shard
    ``shard`` of ``shards`` (numbered from 0) of a gradient whose full logical shape is ``shape``,
    split as the DTensor ``placements`` say (``(Shard(dim=0),)``).

    >>> ReducedGrad("all_reduce", 1, 2, (3,), None).sharded
    False
    """

    op: str
    rank: int
    world_size: int
    shape: tuple[int, ...]
    stats: TensorStats | None
    placements: str = ""
    shard: int | None = None
    shards: int | None = None

    @property
    def sharded(self) -> bool:
        """True when ``stats`` describe this rank's shard, not the whole gradient."""
        return self.op == "reduce_scatter"

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "rank": self.rank, "world_size": self.world_size, "shape": list(self.shape),
                "placements": self.placements, "shard": self.shard, "shards": self.shards,
                "stats": None if self.stats is None else self.stats.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "reduced") -> ReducedGrad:
        """Read what :meth:`to_dict` wrote; a wrong field raises ``TraceFileError`` naming it."""
        d = _obj(d, where)
        op = _str(_field(d, "op", where), f"{where} op")
        if op not in COLLECTIVE_OPS:
            raise _bad(f"{where} op", f"one of {list(COLLECTIVE_OPS)}", op)
        world = _int(_field(d, "world_size", where), f"{where} world_size", minimum=1)
        if world > MAX_RANKS:
            raise _bad(f"{where} world_size", f"at most {MAX_RANKS} ranks", world)
        rank = _int(_field(d, "rank", where), f"{where} rank")
        if rank >= world:
            raise TraceFileError(f"{where} rank: {rank} is not below world_size {world}")
        shape = tuple(_int(n, f"{where} shape[{i}]") for i, n in enumerate(_list(_field(d, "shape", where), f"{where} shape")))
        shard = _int(d.get("shard"), f"{where} shard", optional=True)
        shards = _int(d.get("shards"), f"{where} shards", minimum=1, optional=True)
        if (shard is None) != (shards is None):
            raise TraceFileError(f"{where}: shard and shards go together (both null, or shard k of shards n), "
                                 f"found shard={shard!r}, shards={shards!r}")
        if shards is not None and (shards > world or shard >= shards):
            raise TraceFileError(f"{where}: shard {shard} of {shards} is not a shard of {world} ranks "
                                 "(expected 0 <= shard < shards <= world_size)")
        if shard is not None and op != "reduce_scatter":
            raise TraceFileError(f"{where}: an {op} leaves every rank the whole gradient, not a shard (shard must be null)")
        stats = _stats_from_json(_field(d, "stats", where), f"{where} stats")
        if stats is not None and op == "all_reduce" and stats.shape != shape:
            raise TraceFileError(f"{where} stats shape: {list(stats.shape)} is not the shape {list(shape)} "
                                 "(an all_reduce leaves every rank the whole gradient)")
        return cls(op=op, rank=rank, world_size=world, shape=shape, stats=stats,
                   placements=_str(d.get("placements", ""), f"{where} placements"), shard=shard, shards=shards)


@dataclass(frozen=True)
class TraceNode:
    """One node of the traced graph.

    ``values`` and ``grads`` hold one entry per output of the node (most ops
    have one; ``split`` or an LSTM have several), ``None`` where an output was
    not recorded or received no gradient. ``value`` and ``grad`` are the first
    output's, which is what a single-output op has.

    For a parameter node, ``update`` describes the optimizer's change to it
    (``w_after - w_before``) when a ``step()`` was captured, and
    ``update_ratio`` is ``‖Δw‖ / ‖w‖``.

    ``source`` is where the user's code made the op (``model.py:57 in forward``:
    the first frame outside torch and gradtrace), ``None`` where unknown.
    ``args`` says compactly what else the op read besides the edges drawn into
    it: constants and plain-tensor operands, indices (``× 2.0``, ``dim=1, index=0``).
    ``scope`` is ``module`` with each repeated call of a module numbered
    (``pool#2`` for the second call of ``pool``): the clusters a drawing shows.
    ``sgd_update`` is −lr·grad for a parameter of a plain SGD step, beside the
    applied ``update``, so "Δw = −lr × grad" can be checked by hand.
    ``reduced`` is, for a parameter of a data-parallel run (DDP, FSDP2), its gradient after the
    all-reduce or reduce-scatter (``grads`` are this rank's own, before it); ``None`` elsewhere.
    """

    key: str
    kind: str
    label: str
    module: str = ""
    grad_fn: str | None = None
    values: tuple[TensorStats | None, ...] = ()
    grads: tuple[TensorStats | None, ...] = ()
    forward_step: int | None = None
    backward_step: int | None = None
    update: TensorStats | None = None
    update_ratio: float | None = None
    source: str | None = None
    args: str = ""
    scope: str = ""
    sgd_update: TensorStats | None = None
    reduced: ReducedGrad | None = None

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise ValueError(f"unknown node kind {self.kind!r} (must be one of {list(NODE_KINDS)})")

    @property
    def value(self) -> TensorStats | None:
        return self.values[0] if self.values else None

    @property
    def grad(self) -> TensorStats | None:
        return self.grads[0] if self.grads else None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "kind": self.kind,
            "label": self.label,
            "module": self.module,
            "grad_fn": self.grad_fn,
            "values": _stats_tuple_to_json(self.values),
            "grads": _stats_tuple_to_json(self.grads),
            "forward_step": self.forward_step,
            "backward_step": self.backward_step,
            "update": None if self.update is None else self.update.to_dict(),
            "update_ratio": _float_to_json(self.update_ratio),
            "source": self.source,
            "args": self.args,
            "scope": self.scope,
            "sgd_update": None if self.sgd_update is None else self.sgd_update.to_dict(),
        }
        # Only where there is one: a single-process trace's file stays as it was, and older gradtrace,
        # which ignores fields it does not know, still reads a rank's trace (without the reduced gradient).
        if self.reduced is not None:
            out["reduced"] = self.reduced.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "node") -> TraceNode:
        """Read what :meth:`to_dict` wrote; a wrong field raises ``TraceFileError`` naming it."""
        d = _obj(d, where)
        key = _str(_field(d, "key", where), f"{where} key")
        where = f"{where} ({key!r})"
        kind = _str(_field(d, "kind", where), f"{where} kind")
        if kind not in NODE_KINDS:
            raise _bad(f"{where} kind", f"one of {list(NODE_KINDS)}", kind)
        module = _str(d.get("module", ""), f"{where} module")
        node = cls(
            key=key,
            kind=kind,
            label=_str(_field(d, "label", where), f"{where} label"),
            module=module,
            grad_fn=_str(d.get("grad_fn"), f"{where} grad_fn", optional=True),
            values=_stats_tuple_from_json(d.get("values", []), f"{where} values"),
            grads=_stats_tuple_from_json(d.get("grads", []), f"{where} grads"),
            forward_step=_int(d.get("forward_step"), f"{where} forward_step", optional=True),
            backward_step=_int(d.get("backward_step"), f"{where} backward_step", optional=True),
            update=_stats_from_json(d.get("update"), f"{where} update"),
            update_ratio=_float_from_json(d.get("update_ratio"), f"{where} update_ratio"),
            source=_str(d.get("source"), f"{where} source", optional=True),
            args=_str(d.get("args", ""), f"{where} args"),
            scope=_str(d.get("scope", module), f"{where} scope"),
            sgd_update=_stats_from_json(d.get("sgd_update"), f"{where} sgd_update"),
            reduced=_reduced_from_json(d.get("reduced"), kind, f"{where} reduced"),
        )
        r = node.reduced
        if r is not None and node.value is not None and r.shape != node.value.shape:
            raise TraceFileError(f"{where} reduced shape: {list(r.shape)} is not the shape of the parameter, "
                                 f"{list(node.value.shape)} (the record describes that parameter's gradient)")
        if r is not None and r.stats is not None and r.stats.numel > math.prod(r.shape):
            raise TraceFileError(f"{where} reduced stats: {r.stats.numel} elements is more than the whole gradient "
                                 f"of shape {list(r.shape)} holds (a shard is a part of it)")
        return node


def _reduced_from_json(x: Any, kind: str, where: str) -> ReducedGrad | None:
    if x is None:
        return None
    if kind not in ("param", "leaf"):  # a collective reduces what the optimizer updates: a leaf's gradient
        raise TraceFileError(f"{where}: a {kind} node has no gradient after a collective (only a parameter or "
                             "another leaf tensor does); expected null")
    return ReducedGrad.from_dict(x, where)


@dataclass(frozen=True)
class TraceEdge:
    """Data flowing from ``src`` to ``dst``: output ``output`` of ``src`` is an input of ``dst``.

    ``grad`` is the gradient ``dst``'s backward sent back along this edge (``None``
    where none was recorded). ``uses`` counts the inputs of ``dst`` this one
    output fed (2 for ``x * x``); ``grad`` is then the sum over those inputs.
    """

    src: str
    dst: str
    output: int = 0
    grad: TensorStats | None = None
    uses: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "output": self.output,
                "grad": None if self.grad is None else self.grad.to_dict(), "uses": self.uses}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "edge") -> TraceEdge:
        """Read what :meth:`to_dict` wrote; a wrong field raises ``TraceFileError`` naming it."""
        d = _obj(d, where)
        return cls(src=_str(_field(d, "src", where), f"{where} src"), dst=_str(_field(d, "dst", where), f"{where} dst"),
                   output=_int(d.get("output", 0), f"{where} output"), grad=_stats_from_json(d.get("grad"), f"{where} grad"),
                   uses=_int(d.get("uses", 1), f"{where} uses", minimum=1))


@dataclass(frozen=True)
class OptimizerStep:
    """The optimizer ``step()`` captured after the traced backward."""

    name: str
    lr: float | None
    hyperparameters: tuple[tuple[str, str], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lr": _float_to_json(self.lr), "hyperparameters": [list(p) for p in self.hyperparameters]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "optimizer") -> OptimizerStep:
        """Read what :meth:`to_dict` wrote; a wrong field raises ``TraceFileError`` naming it."""
        d = _obj(d, where)
        pairs = []
        for i, p in enumerate(_list(d.get("hyperparameters", []), f"{where} hyperparameters")):
            here = f"{where} hyperparameters[{i}]"
            if not (isinstance(p, list) and len(p) == 2):
                raise _bad(here, "a [name, value] pair of strings", p)
            pairs.append((_str(p[0], f"{here} name"), _str(p[1], f"{here} value")))
        return cls(
            name=_str(_field(d, "name", where), f"{where} name"),
            lr=_float_from_json(d.get("lr"), f"{where} lr"),
            hyperparameters=tuple(pairs),
        )
